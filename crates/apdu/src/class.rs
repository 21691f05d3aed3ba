use crate::Sw;

/// The decoded class byte (ISO/IEC 7816-4 §5.4.1).
///
/// * `0x00-0x1F`: first interindustry form: b5 chaining, b4-b3 secure messaging, b2-b1
///   logical channel 0-3.
/// * `0x40-0x7F`: further interindustry form: b6 secure messaging, b5 chaining, b4-b1
///   logical channel 4-19.
/// * `0x20-0x3F`: reserved for future use: 6E00.
/// * `0x80-0xFE`: proprietary (GlobalPlatform and our applets). The same bit layout as the
///   interindustry forms with b8 set, as GlobalPlatform does: `0x80-0xBF` first form,
///   `0xC0-0xFE` further form.
/// * `0xFF`: invalid (PPS): 6E00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassByte {
    pub raw: u8,
    pub proprietary: bool,
    /// Command chaining bit (b5): more commands of this chain follow.
    pub chained: bool,
    /// Secure messaging indicated.
    pub secure_messaging: bool,
    /// Logical channel number, 0-19.
    pub channel: u8,
}

impl ClassByte {
    pub fn decode(cla: u8) -> Result<ClassByte, Sw> {
        if cla == 0xFF {
            return Err(Sw::CLA_NOT_SUPPORTED);
        }
        let proprietary = cla & 0x80 != 0;
        let low = cla & 0x7F;
        if !proprietary && (0x20..0x40).contains(&low) {
            return Err(Sw::CLA_NOT_SUPPORTED);
        }
        let chained = low & 0x10 != 0;
        if low & 0x40 == 0 {
            Ok(ClassByte {
                raw: cla,
                proprietary,
                chained,
                secure_messaging: low & 0x0C != 0,
                channel: low & 0x03,
            })
        } else {
            Ok(ClassByte {
                raw: cla,
                proprietary,
                chained,
                secure_messaging: low & 0x20 != 0,
                channel: 4 + (low & 0x0F),
            })
        }
    }

    /// Encode a class byte for the given channel (no SM), keeping the proprietary bit.
    pub fn encode(proprietary: bool, chained: bool, channel: u8) -> Option<u8> {
        let base = if proprietary { 0x80 } else { 0x00 };
        let chain = if chained { 0x10 } else { 0x00 };
        match channel {
            0..=3 => Some(base | chain | channel),
            4..=19 => Some(base | 0x40 | chain | (channel - 4)),
            _ => None,
        }
    }

    /// This class byte with its chaining bit cleared: the CLA the applet sees once the OS
    /// has assembled a chain.
    pub fn without_chaining(self) -> u8 {
        self.raw & !0x10
    }

    /// The CLA with the channel bits set to channel 0, used to compare CLA values in
    /// applets independently of the channel the command arrived on.
    pub fn on_basic_channel(self) -> u8 {
        if self.raw & 0x40 == 0 {
            self.raw & !0x03 & !0x10
        } else {
            (self.raw & 0x80) | ((self.raw & 0x20) >> 3)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_further_forms() {
        let c = ClassByte::decode(0x03).unwrap();
        assert_eq!((c.channel, c.chained, c.proprietary), (3, false, false));
        let c = ClassByte::decode(0x10).unwrap();
        assert!(c.chained);
        let c = ClassByte::decode(0x40).unwrap();
        assert_eq!(c.channel, 4);
        let c = ClassByte::decode(0x4F).unwrap();
        assert_eq!(c.channel, 19);
        let c = ClassByte::decode(0x5F).unwrap();
        assert_eq!((c.channel, c.chained), (19, true));
        let c = ClassByte::decode(0x84).unwrap();
        assert_eq!(
            (c.channel, c.secure_messaging, c.proprietary),
            (0, true, true)
        );
        let c = ClassByte::decode(0xC1).unwrap();
        assert_eq!((c.channel, c.proprietary), (5, true));
        assert_eq!(ClassByte::decode(0x20), Err(Sw::CLA_NOT_SUPPORTED));
        assert_eq!(ClassByte::decode(0xFF), Err(Sw::CLA_NOT_SUPPORTED));
    }

    #[test]
    fn encode_round_trip() {
        for ch in 0..20u8 {
            for prop in [false, true] {
                for chain in [false, true] {
                    let cla = ClassByte::encode(prop, chain, ch).unwrap();
                    let d = ClassByte::decode(cla).unwrap();
                    assert_eq!((d.channel, d.proprietary, d.chained), (ch, prop, chain));
                }
            }
        }
        assert_eq!(ClassByte::encode(false, false, 20), None);
    }
}
