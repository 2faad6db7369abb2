//! The route tables the tests and benchmarks use, kept in this repository under
//! `fib/testdata/routes/` (RIPE NCC RIS, peer AS3333, 2026-05-11; the README.md there names
//! their source and licence). Their paths are those of the source tree this crate was built
//! from: for tests and benchmarks, not for an installed binary.

use std::path::{Path, PathBuf};

/// One of the RIS route files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RisFile {
    /// The IPv4 table (1,042,325 prefixes).
    V4Table,
    /// The IPv6 table (246,175 prefixes).
    V6Table,
    /// The day's IPv4 announcements and withdrawals.
    V4Updates,
    /// The day's IPv6 announcements and withdrawals.
    V6Updates,
}

impl RisFile {
    pub fn file_name(self) -> &'static str {
        match self {
            RisFile::V4Table => "ris-as3333-2026-05-11-v4.txt.gz",
            RisFile::V6Table => "ris-as3333-2026-05-11-v6.txt.gz",
            RisFile::V4Updates => "ris-as3333-2026-05-11-updates-v4.txt.gz",
            RisFile::V6Updates => "ris-as3333-2026-05-11-updates-v6.txt.gz",
        }
    }

    /// The file's path in the source tree.
    ///
    /// # Panics
    /// If the file is not there, with a message saying how to get it back: a test or benchmark
    /// cannot run without it.
    pub fn path(self) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/routes");
        let path = dir.join(self.file_name());
        assert!(
            path.is_file(),
            "{} is missing: the RIS route tables are part of the repository; restore them with \
             `git checkout HEAD -- fib/testdata/routes` (from the repository's root). {}/README.md \
             names their source.",
            path.display(),
            dir.display()
        );
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_in_the_repository() {
        for file in [RisFile::V4Table, RisFile::V6Table, RisFile::V4Updates, RisFile::V6Updates] {
            assert!(std::fs::metadata(file.path()).unwrap().len() > 100_000, "{file:?}");
        }
    }
}
