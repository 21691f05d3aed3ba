//! Answer-to-reset construction.
//!
//! Both interfaces use the same structure:
//! `3B 8K 80 01 <K historical bytes> TCK`: TS direct convention; T0 announces TD1 and K
//! historical bytes; TD1 = 80 (T=0, TD2 follows); TD2 = 01 (T=1); TCK is the XOR of T0 to
//! the last historical byte. For a contactless card this is exactly the PC/SC Part 3 ATR
//! that a reader builds for an ISO 14443-4 card from the ATS historical bytes.

/// Default historical bytes: category indicator 80, then two compact-TLV objects (ISO
/// 7816-4, 8.1.1):
/// - "card issuer's data" (tag 5, 7 bytes): "TESRA" and version 1.0;
/// - "card capabilities" (tag 7, 3 bytes), what the OS supports:
///   - C0: selection by full and by partial DF name;
///   - 01: data coding byte (data unit of one byte);
///   - DF: command chaining (80), extended Lc and Le (40), logical channels assigned by
///     the card (10) and by the interface device (08), 8 or more channels (07; the OS has
///     20).
pub const DEFAULT_HISTORICAL: [u8; 13] = [
    0x80, 0x57, b'T', b'E', b'S', b'R', b'A', 0x01, 0x00, 0x73, 0xC0, 0x01, 0xDF,
];

/// [`DEFAULT_HISTORICAL`] for a card with `channels` logical channels: the low three
/// bits of the last byte say how many (ISO 7816-4: value + 1, 7 meaning 8 or more).
pub fn default_historical(channels: u8) -> [u8; 13] {
    let mut h = DEFAULT_HISTORICAL;
    if let Some(last) = h.last_mut() {
        *last = (*last & !0x07) | channels.saturating_sub(1).min(7);
    }
    h
}

/// Build an ATR from historical bytes (at most 15 are used).
pub fn build(historical: &[u8]) -> Vec<u8> {
    let hist = historical.get(..historical.len().min(15)).unwrap_or(&[]);
    let mut atr = vec![0x3B, 0x80 | hist.len() as u8, 0x80, 0x01];
    atr.extend_from_slice(hist);
    let tck = atr.iter().skip(1).fold(0u8, |a, b| a ^ b);
    atr.push(tck);
    atr
}

/// Check the TCK of an ATR that announces T=1 (XOR of T0..TCK is zero).
pub fn tck_ok(atr: &[u8]) -> bool {
    atr.len() >= 3 && atr.iter().skip(1).fold(0u8, |a, b| a ^ b) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcsc_part3_shape() {
        // ATS historical bytes of a typical ISO 14443-4 card give 3B 8n 80 01 ... TCK.
        let atr = build(&[
            0x80, 0x73, 0xC0, 0x21, 0xC0, 0x57, 0x59, 0x75, 0x62, 0x69, 0x4B, 0x65, 0x79,
        ]);
        assert_eq!(&atr[..4], &[0x3B, 0x8D, 0x80, 0x01]);
        assert!(tck_ok(&atr));
        // Published example (PC/SC Part 3, empty historical bytes): 3B 80 80 01 01.
        assert_eq!(build(&[]), vec![0x3B, 0x80, 0x80, 0x01, 0x01]);
        assert!(build(&DEFAULT_HISTORICAL).len() <= 33);
        // The card capabilities object announces chaining, extended lengths and 8+
        // logical channels (third software function table).
        let caps = DEFAULT_HISTORICAL
            .windows(4)
            .find(|w| w[0] == 0x73)
            .unwrap();
        assert_eq!(caps[3] & 0xC0, 0xC0);
        assert_eq!(caps[3] & 0x07, 0x07);
        // A card with fewer channels says how many (value + 1).
        assert_eq!(default_historical(4)[12], 0xDB);
        assert_eq!(default_historical(1)[12], 0xD8);
        assert_eq!(default_historical(20), DEFAULT_HISTORICAL);
    }
}
