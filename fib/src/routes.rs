//! Route files: tables (`PREFIX [fields...]`) and update traces (`A PREFIX` / `W PREFIX`).
//!
//! Blank lines and `#` comments are skipped; a name ending in `.gz` is decompressed. A bad line is
//! an error naming the file and line number.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::prefix::{AnyPrefix, PrefixError};

#[derive(Debug, thiserror::Error)]
pub enum RouteFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: {source}")]
    BadPrefix { path: PathBuf, line: usize, source: PrefixError },
    #[error("{path}:{line}: expected 'A PREFIX' or 'W PREFIX', found '{text}'")]
    BadUpdate { path: PathBuf, line: usize, text: String },
}

/// One line of an update trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    Announce(AnyPrefix),
    Withdraw(AnyPrefix),
}

fn open(path: &Path) -> Result<Box<dyn BufRead>, RouteFileError> {
    let file = File::open(path).map_err(|source| RouteFileError::Io { path: path.into(), source })?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, reader)))
}

/// Calls `each(line_number, first_fields)` for every meaningful line.
fn for_each_line(
    path: &Path,
    mut each: impl FnMut(usize, &str) -> Result<(), RouteFileError>,
) -> Result<(), RouteFileError> {
    for (index, line) in open(path)?.lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|source| RouteFileError::Io { path: path.into(), source })?;
        let text = line.split('#').next().unwrap_or("").trim();
        if !text.is_empty() {
            each(number, text)?;
        }
    }
    Ok(())
}

/// Reads a table file: the first field of each line is a prefix.
pub fn read_table(path: &Path) -> Result<Vec<AnyPrefix>, RouteFileError> {
    let mut out = Vec::new();
    for_each_line(path, |line, text| {
        let field = text.split_whitespace().next().unwrap_or(text);
        let prefix = field.parse().map_err(|source| RouteFileError::BadPrefix { path: path.into(), line, source })?;
        out.push(prefix);
        Ok(())
    })?;
    Ok(out)
}

/// Reads an update trace.
pub fn read_updates(path: &Path) -> Result<Vec<Update>, RouteFileError> {
    let mut out = Vec::new();
    for_each_line(path, |line, text| {
        let mut fields = text.split_whitespace();
        let bad = || RouteFileError::BadUpdate { path: path.into(), line, text: text.to_string() };
        let (kind, prefix) = (fields.next().ok_or_else(bad)?, fields.next().ok_or_else(bad)?);
        let prefix = prefix.parse().map_err(|source| RouteFileError::BadPrefix { path: path.into(), line, source })?;
        out.push(match kind {
            "A" => Update::Announce(prefix),
            "W" => Update::Withdraw(prefix),
            _ => return Err(bad()),
        });
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp(name: &str, body: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("fib-routes-{}-{name}", std::process::id()));
        File::create(&path).unwrap().write_all(body.as_bytes()).unwrap();
        path
    }

    #[test]
    fn reads_tables_with_comments_and_extra_fields() {
        let path = temp("t.txt", "# table\n10.0.0.0/8 via x\n\n2001:db8::/32\t64500 64501\n");
        let table = read_table(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table[1].to_string(), "2001:db8::/32");
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let path = temp("bad.txt", "10.0.0.0/8\n10.0.0.1/8\n");
        let err = read_table(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.ends_with(":2: 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)"), "{err}");

        let path = temp("upd.txt", "A 10.0.0.0/8\nX 10.0.0.0/8\n");
        let err = read_updates(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains(":2: expected 'A PREFIX' or 'W PREFIX'"), "{err}");
    }

    #[test]
    fn reads_gzip() {
        let path = std::env::temp_dir().join(format!("fib-routes-{}-u.gz", std::process::id()));
        let mut gz = flate2::write::GzEncoder::new(File::create(&path).unwrap(), flate2::Compression::fast());
        gz.write_all(b"A 10.0.0.0/8\nW 10.0.0.0/8\n").unwrap();
        gz.finish().unwrap();
        let updates = read_updates(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(updates.len(), 2);
        assert!(matches!(updates[1], Update::Withdraw(_)));
    }
}
