//! CNI versions: parsed once, compared as versions (never as strings).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A CNI specification version, `MAJOR.MINOR.PATCH`. Ordered, so "GC needs 1.1.0 or later" is a
/// comparison; whether vpc-cni speaks it is [`CniVersion::is_supported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CniVersion {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl CniVersion {
    pub const V0_3_0: CniVersion = CniVersion::new(0, 3, 0);
    pub const V0_3_1: CniVersion = CniVersion::new(0, 3, 1);
    pub const V0_4_0: CniVersion = CniVersion::new(0, 4, 0);
    pub const V1_0_0: CniVersion = CniVersion::new(1, 0, 0);
    pub const V1_1_0: CniVersion = CniVersion::new(1, 1, 0);

    /// The versions vpc-cni speaks: every published one from 0.3.0 to 1.1.0 (VERSION lists
    /// them). 0.3.x and 0.4.0 results have `"version"` per IP and no interface MTU.
    pub const SUPPORTED: [CniVersion; 5] =
        [CniVersion::V0_3_0, CniVersion::V0_3_1, CniVersion::V0_4_0, CniVersion::V1_0_0, CniVersion::V1_1_0];

    /// The newest supported: errors are reported in it when the configuration's cannot be read.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// CHECK exists from this version on.
    pub const CHECK: CniVersion = CniVersion::V0_4_0;

    /// GC and STATUS exist from this version on; older configurations get code 1 for them.
    pub const GC_STATUS: CniVersion = CniVersion::V1_1_0;

    pub const fn new(major: u16, minor: u16, patch: u16) -> CniVersion {
        CniVersion { major, minor, patch }
    }

    pub fn is_supported(self) -> bool {
        CniVersion::SUPPORTED.contains(&self)
    }

    /// Is this a version whose result has `"version"` per IP and no interface MTU (0.3.x, 0.4.0)?
    pub fn is_pre_1_0(self) -> bool {
        self < CniVersion::V1_0_0
    }
}

/// The supported versions as VERSION and `--version` print them.
pub fn supported_versions() -> Vec<String> {
    CniVersion::SUPPORTED.iter().map(ToString::to_string).collect()
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a CNI version (MAJOR.MINOR.PATCH)")]
pub struct VersionParseError(String);

impl FromStr for CniVersion {
    type Err = VersionParseError;

    /// Exactly three dot-separated decimal numbers (no sign, no suffix).
    fn from_str(text: &str) -> Result<CniVersion, VersionParseError> {
        let bad = || VersionParseError(text.chars().take(40).collect());
        let mut numbers = text.split('.').map(|part| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse::<u16>().map_err(|_| bad())
        });
        let mut next = || numbers.next().ok_or_else(bad)?;
        let version = CniVersion::new(next()?, next()?, next()?);
        if numbers.next().is_some() {
            return Err(bad());
        }
        Ok(version)
    }
}

impl Serialize for CniVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CniVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_print_and_order_as_numbers() {
        let v: CniVersion = "0.10.2".parse().unwrap();
        assert_eq!(v, CniVersion::new(0, 10, 2));
        assert_eq!(v.to_string(), "0.10.2");
        // As strings "0.10.2" < "0.4.0"; as versions it is newer.
        assert!(v > CniVersion::V0_4_0 && v < CniVersion::V1_0_0);
        for bad in ["", "1", "1.0", "1.0.0.0", "1.0.x", "v1.0.0", "1.0.-1", "+1.0.0", "1..0", "1.0.0 ", "99999.0.0"] {
            assert!(bad.parse::<CniVersion>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_supported_ones_are_0_3_0_to_1_1_0_and_only_the_old_ones_are_pre_1_0() {
        assert_eq!(supported_versions(), ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
        for text in ["0.2.0", "0.3.2", "1.0.1", "1.2.0", "2.0.0"] {
            assert!(!text.parse::<CniVersion>().unwrap().is_supported(), "{text}");
        }
        let pre: Vec<String> =
            CniVersion::SUPPORTED.iter().filter(|v| v.is_pre_1_0()).map(ToString::to_string).collect();
        assert_eq!(pre, ["0.3.0", "0.3.1", "0.4.0"]);
        assert!(CniVersion::SUPPORTED.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(CniVersion::SUPPORTED.last(), Some(&CniVersion::LATEST));
    }
}
