//! BER-TLV (ISO/IEC 7816-4 §5.2, ISO/IEC 8825-1) encoding and decoding.
//!
//! Tags are kept as their encoded bytes packed big-endian into a `u32` (`0x6F`, `0x84`,
//! `0x9F7F`, `0xBF0C`), which is how ISO 7816 and EMV documents write them. Lengths use the
//! short form (< 128) and the long forms `81 xx`, `82 xxxx`, `83 xxxxxx`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    #[error("TLV truncated at offset {0}")]
    Truncated(usize),
    #[error("tag at offset {0} is longer than 4 bytes")]
    TagTooLong(usize),
    #[error("length at offset {0} uses an unsupported form")]
    BadLength(usize),
    #[error("value length {len} at offset {at} runs past the end of the data")]
    Overrun { at: usize, len: usize },
}

/// One TLV object: tag and value (for a constructed tag, the value holds the encoded
/// children; use [`Tlv::children`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Tlv {
    pub tag: u32,
    pub value: Vec<u8>,
}

impl fmt::Debug for Tlv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}={}", self.tag, hex::encode_upper(&self.value))
    }
}

/// Whether the tag's first byte marks a constructed object (b6 set).
pub fn is_constructed(tag: u32) -> bool {
    first_tag_byte(tag) & 0x20 != 0
}

fn first_tag_byte(tag: u32) -> u8 {
    let bytes = tag.to_be_bytes();
    bytes.iter().copied().find(|b| *b != 0).unwrap_or(0)
}

impl Tlv {
    pub fn new(tag: u32, value: impl Into<Vec<u8>>) -> Tlv {
        Tlv {
            tag,
            value: value.into(),
        }
    }

    /// A constructed object from its children.
    pub fn constructed(tag: u32, children: &[Tlv]) -> Tlv {
        let mut value = Vec::new();
        for c in children {
            c.encode_into(&mut value);
        }
        Tlv { tag, value }
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        encode_tag(self.tag, out);
        encode_length(self.value.len(), out);
        out.extend_from_slice(&self.value);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.value.len() + 6);
        self.encode_into(&mut v);
        v
    }

    /// Parse the value of a constructed object as a list of TLVs.
    pub fn children(&self) -> Result<Vec<Tlv>, TlvError> {
        parse_all(&self.value)
    }
}

pub fn encode_tag(tag: u32, out: &mut Vec<u8>) {
    let bytes = tag.to_be_bytes();
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(3);
    out.extend_from_slice(bytes.get(start..).unwrap_or(&[0]));
}

pub fn encode_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xFF {
        out.extend_from_slice(&[0x81, len as u8]);
    } else if len <= 0xFFFF {
        out.push(0x82);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        let b = (len as u32).to_be_bytes();
        out.push(0x83);
        out.extend_from_slice(b.get(1..).unwrap_or(&[]));
    }
}

/// Parse one TLV at the start of `data`; returns it and the bytes consumed.
pub fn parse_one(data: &[u8]) -> Result<(Tlv, usize), TlvError> {
    parse_at(data, 0)
}

fn parse_at(data: &[u8], base: usize) -> Result<(Tlv, usize), TlvError> {
    let mut i = 0usize;
    let first = *data.get(i).ok_or(TlvError::Truncated(base + i))?;
    let mut tag = first as u32;
    i += 1;
    if first & 0x1F == 0x1F {
        loop {
            let b = *data.get(i).ok_or(TlvError::Truncated(base + i))?;
            if i >= 4 {
                return Err(TlvError::TagTooLong(base));
            }
            tag = (tag << 8) | b as u32;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let lb = *data.get(i).ok_or(TlvError::Truncated(base + i))?;
    let len_at = base + i;
    i += 1;
    let len = if lb < 0x80 {
        lb as usize
    } else {
        let n = (lb & 0x7F) as usize;
        if n == 0 || n > 3 {
            return Err(TlvError::BadLength(len_at));
        }
        let mut l = 0usize;
        for _ in 0..n {
            let b = *data.get(i).ok_or(TlvError::Truncated(base + i))?;
            l = (l << 8) | b as usize;
            i += 1;
        }
        l
    };
    let value = data
        .get(i..i.saturating_add(len))
        .ok_or(TlvError::Overrun { at: base + i, len })?;
    Ok((Tlv::new(tag, value.to_vec()), i + len))
}

/// Parse a sequence of TLVs filling `data` exactly. `00` and `FF` padding bytes between
/// objects are skipped, as ISO 7816-4 allows.
pub fn parse_all(data: &[u8]) -> Result<Vec<Tlv>, TlvError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(rest) = data.get(at..) {
        if rest.is_empty() {
            break;
        }
        if rest.first().is_some_and(|b| *b == 0x00 || *b == 0xFF) {
            at += 1;
            continue;
        }
        let (tlv, used) = parse_at(rest, at)?;
        out.push(tlv);
        at += used;
    }
    Ok(out)
}

/// Find the first object with `tag`, searching constructed objects depth-first.
pub fn find(data: &[u8], tag: u32) -> Option<Tlv> {
    let list = parse_all(data).ok()?;
    for t in list {
        if t.tag == tag {
            return Some(t);
        }
        if is_constructed(t.tag)
            && let Some(found) = find(&t.value, tag)
        {
            return Some(found);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fci_round_trip() {
        let fci = Tlv::constructed(
            0x6F,
            &[
                Tlv::new(0x84, vec![0xA0, 0, 0, 0, 1]),
                Tlv::constructed(0xA5, &[Tlv::new(0x9F6E, vec![1, 2])]),
            ],
        );
        let bytes = fci.to_bytes();
        assert_eq!(
            hex::encode_upper(&bytes),
            "6F0E8405A000000001A5059F6E020102"
        );
        let back = parse_all(&bytes).unwrap();
        assert_eq!(back, vec![fci]);
        assert_eq!(find(&bytes, 0x9F6E).unwrap().value, vec![1, 2]);
    }

    #[test]
    fn long_lengths() {
        let t = Tlv::new(0x53, vec![7u8; 300]);
        let b = t.to_bytes();
        assert_eq!(&b[..4], &[0x53, 0x82, 0x01, 0x2C]);
        assert_eq!(parse_one(&b).unwrap(), (t, 304));
        let t = Tlv::new(0xBF0C, vec![1u8; 200]);
        assert_eq!(&t.to_bytes()[..4], &[0xBF, 0x0C, 0x81, 200]);
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_all(&[0x84, 0x05, 1]),
            Err(TlvError::Overrun { at: 2, len: 5 })
        );
        assert_eq!(parse_all(&[0x9F]), Err(TlvError::Truncated(1)));
        assert_eq!(
            parse_all(&[0x84, 0x84, 0, 0, 0, 0]),
            Err(TlvError::BadLength(1))
        );
        assert!(matches!(
            parse_all(&[0x9F, 0x81, 0x81, 0x81, 0x01, 0]),
            Err(TlvError::TagTooLong(0))
        ));
    }
}
