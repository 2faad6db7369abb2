//! `struct virtio_net_hdr` (virtio 1.1 §5.1.6): the offload metadata a TAP opened with
//! IFF_VNET_HDR puts before every frame. It lets a 64 KB TCP segment cross the switch as one
//! frame: `gso_type`/`gso_size` say how the kernel should cut it, `csum_start`/`csum_offset` say
//! where the checksum it has not computed yet goes. The switch forwards it unchanged.

use super::WireError;

pub const LEN: usize = 10;
pub const FLAG_NEEDS_CSUM: u8 = 1;
pub const FLAG_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

/// The header in host byte order (the TAP uses native endianness unless told otherwise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHeader {
    /// Parses and sanity-checks a header against the frame that follows it (`frame_len` bytes).
    pub fn parse(b: &[u8], frame_len: usize) -> Result<VnetHeader, WireError> {
        super::need(b, LEN)?;
        let word = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        let h = VnetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: word(2),
            gso_size: word(4),
            csum_start: word(6),
            csum_offset: word(8),
        };
        if h.flags & !(FLAG_NEEDS_CSUM | FLAG_DATA_VALID) != 0 {
            return Err(WireError::Malformed("unknown virtio_net_hdr flags"));
        }
        match h.gso_type & !GSO_ECN {
            GSO_NONE => {}
            GSO_TCPV4 | GSO_TCPV6 | GSO_UDP | GSO_UDP_L4 if h.gso_size > 0 => {}
            _ => return Err(WireError::Malformed("bad virtio_net_hdr GSO type or size")),
        }
        if h.flags & FLAG_NEEDS_CSUM != 0 && (h.csum_start as usize + h.csum_offset as usize + 2 > frame_len) {
            return Err(WireError::Malformed("virtio_net_hdr checksum position beyond the frame"));
        }
        Ok(h)
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }

    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }
}

/// In words, for `vswitchctl trace`: "no offload", or the GSO kind and segment size.
impl std::fmt::Display for VnetHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.gso_type & !GSO_ECN {
            GSO_NONE => None,
            GSO_TCPV4 => Some("TCPv4"),
            GSO_TCPV6 => Some("TCPv6"),
            GSO_UDP => Some("UDP (UFO)"),
            GSO_UDP_L4 => Some("UDP"),
            _ => Some("unknown"),
        };
        match kind {
            None => write!(f, "no offload")?,
            Some(kind) => write!(f, "GSO {kind} in segments of {} bytes", self.gso_size)?,
        }
        if self.flags & FLAG_NEEDS_CSUM != 0 {
            write!(f, ", checksum left to complete")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_tso_header_and_round_trips() {
        // A TCPv4 TSO header as the kernel writes it for a 64 KB segment, MSS 1448.
        let h =
            VnetHeader { flags: 1, gso_type: GSO_TCPV4, hdr_len: 66, gso_size: 1448, csum_start: 34, csum_offset: 16 };
        let mut b = [0u8; LEN];
        h.write(&mut b);
        assert_eq!(VnetHeader::parse(&b, 65000).unwrap(), h);
        assert!(h.is_gso());
    }

    #[test]
    fn rejects_inconsistent_headers() {
        let mut b = [0u8; LEN];
        VnetHeader { gso_type: GSO_TCPV4, ..Default::default() }.write(&mut b);
        assert!(VnetHeader::parse(&b, 100).is_err(), "GSO without a segment size");
        VnetHeader { flags: 1, csum_start: 90, csum_offset: 16, ..Default::default() }.write(&mut b);
        assert!(VnetHeader::parse(&b, 100).is_err(), "checksum beyond the frame");
        VnetHeader { flags: 0x10, ..Default::default() }.write(&mut b);
        assert!(VnetHeader::parse(&b, 100).is_err(), "unknown flag");
        VnetHeader { gso_type: 9, gso_size: 1, ..Default::default() }.write(&mut b);
        assert!(VnetHeader::parse(&b, 100).is_err(), "unknown GSO type");
        assert!(VnetHeader::parse(&b[..9], 100).is_err());
    }
}
