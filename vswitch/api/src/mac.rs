//! Ethernet MAC addresses as a value type (the datapath's zero-copy views use it too).

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// A locally administered unicast MAC made from four bytes (e.g. an IPv4 address).
    pub fn local_from(bytes: [u8; 4]) -> MacAddr {
        MacAddr([0x02, 0x00, bytes[0], bytes[1], bytes[2], bytes[3]])
    }

    /// The IPv6 link-local address the kernel gives an interface with this MAC (modified EUI-64,
    /// RFC 4291 appendix A; `addr_gen_mode` 0). The pods' IPv6 gateway is the gateway MAC's, and
    /// a pod may send from its own MAC's.
    pub fn link_local(&self) -> std::net::Ipv6Addr {
        let m = self.0;
        std::net::Ipv6Addr::from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a MAC address (six two-digit hex bytes separated by ':')")]
pub struct MacParseError(String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MacParseError(s.chars().take(40).collect());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_refuses() {
        let m: MacAddr = "02:00:0a:0A:01:ff".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:0a:01:ff");
        for bad in
            ["", "02:00:0a:0a:01", "02:00:0a:0a:01:ff:00", "2:00:0a:0a:01:ff", "+2:00:0a:0a:01:ff", "é2:00:0a:0a:01:f"]
        {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(MacAddr::BROADCAST.is_multicast() && !m.is_multicast());
    }

    #[test]
    fn link_local_is_the_kernels_eui64() {
        // `ip -6 addr` on an interface with MAC 02:42:ac:11:00:02 shows fe80::42:acff:fe11:2.
        let m: MacAddr = "02:42:ac:11:00:02".parse().unwrap();
        assert_eq!(m.link_local(), "fe80::42:acff:fe11:2".parse::<std::net::Ipv6Addr>().unwrap());
    }
}
