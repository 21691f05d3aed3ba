use crate::{ApduError, ClassByte, Sw};
use iso7816::command::{CommandView, FromSliceError};
use std::fmt;

/// Largest data field of a short APDU.
pub const MAX_SHORT_DATA: usize = 255;
/// Largest data field of an extended APDU.
pub const MAX_EXTENDED_DATA: usize = 65_535;

/// A command APDU (ISO/IEC 7816-4 §5.1), owned.
///
/// `le` is the expected response length: `None` when the Le field is absent (cases 1 and
/// 3), `Some(n)` with `1 <= n <= 65536` otherwise (a short Le byte `00` means 256, an
/// extended `0000` means 65536).
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    pub data: Vec<u8>,
    pub le: Option<usize>,
    /// The command was (or is to be) encoded in extended form.
    pub extended: bool,
}

impl Command {
    /// A case-1 command.
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Command {
        Command {
            cla,
            ins,
            p1,
            p2,
            data: Vec::new(),
            le: None,
            extended: false,
        }
    }

    /// Set the data field (case 3, or case 4 with [`Command::with_le`]).
    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Command {
        self.data = data.into();
        if self.data.len() > MAX_SHORT_DATA {
            self.extended = true;
        }
        self
    }

    /// Set Le (1..=65536). Values above 256 force the extended form.
    pub fn with_le(mut self, le: usize) -> Command {
        self.le = Some(le);
        if le > 256 {
            self.extended = true;
        }
        self
    }

    /// Force extended length encoding.
    pub fn extended(mut self) -> Command {
        self.extended = true;
        self
    }

    /// Parse a command APDU. Errors carry the status word a card answers.
    pub fn parse(bytes: &[u8]) -> Result<Command, ApduError> {
        let view = CommandView::try_from(bytes).map_err(|e| {
            let (reason, sw) = match e {
                FromSliceError::TooShort => ("shorter than the 4-byte header", Sw::WRONG_LENGTH),
                FromSliceError::TooLong => ("longer than supported", Sw::WRONG_LENGTH),
                FromSliceError::InvalidClass => ("invalid class byte", Sw::CLA_NOT_SUPPORTED),
                FromSliceError::InvalidFirstBodyByteForExtended => {
                    ("Lc does not match the data length", Sw::WRONG_LENGTH)
                }
                FromSliceError::InvalidSliceLength => {
                    ("body length does not match Lc/Le", Sw::WRONG_LENGTH)
                }
            };
            ApduError::MalformedCommand { reason, sw }
        })?;
        // Header bytes: CommandView guarantees at least 4 bytes here.
        let (cla, ins, p1, p2) = match bytes {
            [a, b, c, d, ..] => (*a, *b, *c, *d),
            _ => {
                return Err(ApduError::MalformedCommand {
                    reason: "shorter than the 4-byte header",
                    sw: Sw::WRONG_LENGTH,
                });
            }
        };
        // ISO/IEC 7816-4 §5.1: an extended Lc is never 0000. `iso7816` accepts the body
        // `00 00 00 Le1 Le2` as "case 4E with no data"; that is not a valid encoding (it
        // would be case 2E, `00 Le1 Le2`), so it is refused here and every accepted byte
        // string re-encodes to itself.
        if view.extended && view.data().is_empty() && bytes.len() != 7 {
            return Err(ApduError::MalformedCommand {
                reason: "extended Lc of zero",
                sw: Sw::WRONG_LENGTH,
            });
        }
        let le = match view.expected() {
            0 => None,
            n => Some(n),
        };
        Ok(Command {
            cla,
            ins,
            p1,
            p2,
            data: view.data().to_vec(),
            le,
            extended: view.extended,
        })
    }

    /// The status word a card answers for bytes that do not parse, or `None` if they do.
    pub fn parse_sw(bytes: &[u8]) -> Result<Command, Sw> {
        Command::parse(bytes).map_err(|e| match e {
            ApduError::MalformedCommand { sw, .. } => sw,
            _ => Sw::WRONG_LENGTH,
        })
    }

    /// `Ok` when P1 and P2 are exactly these values, 6A86 (incorrect P1-P2) otherwise: the
    /// check every applet handler starts with.
    pub fn expect_p1p2(&self, p1: u8, p2: u8) -> Result<(), Sw> {
        if self.p1 == p1 && self.p2 == p2 {
            Ok(())
        } else {
            Err(Sw::INCORRECT_P1P2)
        }
    }

    /// `Ok` when the class byte, taken on the basic channel (channel bits and chaining
    /// cleared, as [`ClassByte::on_basic_channel`]), is one of `allowed`; 6E00 otherwise.
    pub fn expect_cla(&self, allowed: &[u8]) -> Result<(), Sw> {
        let cla = self.class()?.on_basic_channel();
        if allowed.contains(&cla) {
            Ok(())
        } else {
            Err(Sw::CLA_NOT_SUPPORTED)
        }
    }

    /// `Ok` when the command has no data field, 6700 (wrong length) otherwise.
    pub fn expect_no_data(&self) -> Result<(), Sw> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(Sw::WRONG_LENGTH)
        }
    }

    /// Decoded class byte.
    pub fn class(&self) -> Result<ClassByte, Sw> {
        ClassByte::decode(self.cla)
    }

    /// Le as a number of bytes, 0 when absent.
    pub fn le_or_zero(&self) -> usize {
        self.le.unwrap_or(0)
    }

    /// ISO case number (1-4).
    pub fn case(&self) -> u8 {
        match (self.data.is_empty(), self.le.is_some()) {
            (true, false) => 1,
            (true, true) => 2,
            (false, false) => 3,
            (false, true) => 4,
        }
    }

    /// Encode, big-endian extended lengths where needed. Fails on a data field over
    /// 65535 bytes or Le over 65536.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ApduError> {
        let n = self.data.len();
        if n > MAX_EXTENDED_DATA {
            return Err(ApduError::DataTooLong {
                len: n,
                max: MAX_EXTENDED_DATA,
            });
        }
        if let Some(le) = self.le
            && (le == 0 || le > 65_536)
        {
            return Err(ApduError::LeTooLarge(le));
        }
        let extended = self.extended || n > MAX_SHORT_DATA || self.le.is_some_and(|l| l > 256);
        let mut out = Vec::with_capacity(4 + 3 + n + 3);
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        if extended {
            if n > 0 {
                out.push(0);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                out.extend_from_slice(&self.data);
            }
            if let Some(le) = self.le {
                if n == 0 {
                    out.push(0);
                }
                let v = if le == 65_536 { 0u16 } else { le as u16 };
                out.extend_from_slice(&v.to_be_bytes());
            }
        } else {
            if n > 0 {
                out.push(n as u8);
                out.extend_from_slice(&self.data);
            }
            if let Some(le) = self.le {
                out.push(if le == 256 { 0 } else { le as u8 });
            }
        }
        Ok(out)
    }

    /// Hex of the encoded command (for traces); falls back to the header on encode errors.
    pub fn to_hex(&self) -> String {
        match self.to_bytes() {
            Ok(b) => hex::encode_upper(b),
            Err(_) => hex::encode_upper([self.cla, self.ins, self.p1, self.p2]),
        }
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Command {{ CLA={:02X} INS={:02X} P1={:02X} P2={:02X} Lc={} data={} Le={:?}{} }}",
            self.cla,
            self.ins,
            self.p1,
            self.p2,
            self.data.len(),
            hex::encode_upper(&self.data),
            self.le,
            if self.extended { " extended" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        crate::parse_hex(s).unwrap()
    }

    #[test]
    fn cases_short() {
        let c = Command::parse(&h("00A40400")).unwrap();
        assert_eq!((c.case(), c.le), (1, None));
        let c = Command::parse(&h("00B0000000")).unwrap();
        assert_eq!((c.case(), c.le), (2, Some(256)));
        let c = Command::parse(&h("00A4040003A00001")).unwrap();
        assert_eq!((c.case(), c.data.clone()), (3, h("A00001")));
        let c = Command::parse(&h("00A4040003A0000110")).unwrap();
        assert_eq!((c.case(), c.le), (4, Some(16)));
    }

    #[test]
    fn cases_extended() {
        let c = Command::parse(&h("00B00000000000")).unwrap();
        assert_eq!((c.case(), c.le, c.extended), (2, Some(65536), true));
        let c = Command::parse(&h("00B00000000FA0")).unwrap();
        assert_eq!(c.le, Some(4000));
        let c = Command::parse(&h("00DA00000000020102")).unwrap();
        assert_eq!((c.case(), c.data.clone()), (3, h("0102")));
        let c = Command::parse(&h("00DA000000000201020100")).unwrap();
        assert_eq!((c.case(), c.le), (4, Some(256)));
    }

    #[test]
    fn handler_checks() {
        let on = |cla: u8| Command::new(cla, 0x30, 0, 0);
        // Proprietary CLA 80 on channels 0, 1 (first form) and 4 (further form).
        assert_eq!(on(0x80).expect_cla(&[0x80]), Ok(()));
        assert_eq!(on(0x81).expect_cla(&[0x80]), Ok(()));
        assert_eq!(on(0xC0).expect_cla(&[0x80]), Ok(()));
        assert_eq!(on(0x00).expect_cla(&[0x80]), Err(Sw::CLA_NOT_SUPPORTED));
        assert_eq!(on(0x02).expect_cla(&[0x00, 0x80]), Ok(()));
        assert_eq!(on(0x20).expect_cla(&[0x00]), Err(Sw::CLA_NOT_SUPPORTED));
        assert_eq!(on(0x80).expect_p1p2(0, 0), Ok(()));
        assert_eq!(on(0x80).expect_p1p2(0, 1), Err(Sw::INCORRECT_P1P2));
        assert_eq!(on(0x80).expect_no_data(), Ok(()));
        assert_eq!(
            on(0x80).with_data(vec![1]).expect_no_data(),
            Err(Sw::WRONG_LENGTH)
        );
    }

    #[test]
    fn malformed() {
        assert_eq!(Command::parse_sw(&h("00A404")), Err(Sw::WRONG_LENGTH));
        assert_eq!(
            Command::parse_sw(&h("00A4040005A000")),
            Err(Sw::WRONG_LENGTH)
        );
        assert_eq!(
            Command::parse_sw(&h("FFA40400")),
            Err(Sw::CLA_NOT_SUPPORTED)
        );
        assert_eq!(
            Command::parse_sw(&h("00A4040000")).map(|c| c.le),
            Ok(Some(256))
        );
        // Two zero bytes: neither a short nor an extended body.
        assert_eq!(Command::parse_sw(&h("00A404000000")), Err(Sw::WRONG_LENGTH));
        // Extended Lc = 0000 followed by an extended Le: not a valid encoding.
        assert_eq!(
            Command::parse_sw(&h("00B000000000000100")),
            Err(Sw::WRONG_LENGTH)
        );
        // Lc = 2 but four bytes follow (neither case 3 nor 4): 6700.
        assert_eq!(
            Command::parse_sw(&h("00DA000002AABBCCDD")),
            Err(Sw::WRONG_LENGTH)
        );
        assert_eq!(Command::parse_sw(&h("")), Err(Sw::WRONG_LENGTH));
        // The reserved class range parses (hosts may send anything) but is refused by class().
        assert_eq!(
            Command::parse(&h("2FA40400")).unwrap().class(),
            Err(Sw::CLA_NOT_SUPPORTED)
        );
    }

    #[test]
    fn encode_big_endian_extended() {
        let c = Command::new(0x00, 0xB0, 0, 0).with_le(4000);
        assert_eq!(c.to_bytes().unwrap(), h("00B00000000FA0"));
        let data = vec![0xAB; 300];
        let c = Command::new(0x80, 0x10, 0, 0)
            .with_data(data.clone())
            .with_le(65536);
        let b = c.to_bytes().unwrap();
        assert_eq!(&b[4..7], &[0x00, 0x01, 0x2C]);
        assert_eq!(&b[b.len() - 2..], &[0x00, 0x00]);
        assert_eq!(Command::parse(&b).unwrap(), c);
    }

    #[test]
    fn encode_rejects_oversize() {
        let c = Command::new(0, 0, 0, 0).with_data(vec![0; 65_536]);
        assert!(matches!(c.to_bytes(), Err(ApduError::DataTooLong { .. })));
        let c = Command::new(0, 0, 0, 0).with_le(65_537);
        assert!(matches!(c.to_bytes(), Err(ApduError::LeTooLarge(_))));
    }
}
