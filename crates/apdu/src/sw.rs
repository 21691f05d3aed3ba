use std::fmt;

/// A status word (SW1 SW2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sw(pub u16);

impl Sw {
    /// 9000: normal processing.
    pub const OK: Sw = Sw(0x9000);
    /// 6200: warning, state of non-volatile memory unchanged.
    pub const WARNING_UNCHANGED: Sw = Sw(0x6200);
    /// 6281: part of returned data may be corrupted.
    pub const DATA_CORRUPTED: Sw = Sw(0x6281);
    /// 6282: end of file or record reached before reading Le bytes.
    pub const END_OF_DATA: Sw = Sw(0x6282);
    /// 6283: selected file (application) deactivated / locked.
    pub const SELECTED_FILE_INVALIDATED: Sw = Sw(0x6283);
    /// 6400: execution error, state of non-volatile memory unchanged.
    pub const EXECUTION_ERROR: Sw = Sw(0x6400);
    /// 6581: memory failure.
    pub const MEMORY_FAILURE: Sw = Sw(0x6581);
    /// 6700: wrong length.
    pub const WRONG_LENGTH: Sw = Sw(0x6700);
    /// 6881: logical channel not supported.
    pub const LOGICAL_CHANNEL_NOT_SUPPORTED: Sw = Sw(0x6881);
    /// 6882: secure messaging not supported.
    pub const SECURE_MESSAGING_NOT_SUPPORTED: Sw = Sw(0x6882);
    /// 6883: last command of the chain expected.
    pub const LAST_COMMAND_EXPECTED: Sw = Sw(0x6883);
    /// 6884: command chaining not supported.
    pub const CHAINING_NOT_SUPPORTED: Sw = Sw(0x6884);
    /// 6982: security status not satisfied.
    pub const SECURITY_STATUS_NOT_SATISFIED: Sw = Sw(0x6982);
    /// 6983: authentication method blocked.
    pub const AUTH_METHOD_BLOCKED: Sw = Sw(0x6983);
    /// 6984: reference data not usable.
    pub const REFERENCE_DATA_NOT_USABLE: Sw = Sw(0x6984);
    /// 6985: conditions of use not satisfied.
    pub const CONDITIONS_NOT_SATISFIED: Sw = Sw(0x6985);
    /// 6986: command not allowed (no current EF / application).
    pub const COMMAND_NOT_ALLOWED: Sw = Sw(0x6986);
    /// 6987: expected secure messaging data objects missing.
    pub const SM_OBJECTS_MISSING: Sw = Sw(0x6987);
    /// 6988: incorrect secure messaging data objects (bad MAC).
    pub const SM_OBJECTS_INCORRECT: Sw = Sw(0x6988);
    /// 6999: applet selection failed (Java Card: the applet refused `select`).
    pub const APPLET_SELECT_FAILED: Sw = Sw(0x6999);
    /// 6A80: incorrect parameters in the command data field.
    pub const WRONG_DATA: Sw = Sw(0x6A80);
    /// 6A81: function not supported.
    pub const FUNCTION_NOT_SUPPORTED: Sw = Sw(0x6A81);
    /// 6A82: file or application not found.
    pub const FILE_NOT_FOUND: Sw = Sw(0x6A82);
    /// 6A83: record not found.
    pub const RECORD_NOT_FOUND: Sw = Sw(0x6A83);
    /// 6A84: not enough memory space in the file.
    pub const NOT_ENOUGH_MEMORY: Sw = Sw(0x6A84);
    /// 6A86: incorrect parameters P1-P2.
    pub const INCORRECT_P1P2: Sw = Sw(0x6A86);
    /// 6A87: Nc inconsistent with P1-P2.
    pub const LC_INCONSISTENT_WITH_P1P2: Sw = Sw(0x6A87);
    /// 6A88: referenced data or reference data not found.
    pub const REFERENCED_DATA_NOT_FOUND: Sw = Sw(0x6A88);
    /// 6A89: file (or object) already exists.
    pub const ALREADY_EXISTS: Sw = Sw(0x6A89);
    /// 6B00: wrong parameters P1-P2 (offset outside the EF).
    pub const WRONG_P1P2: Sw = Sw(0x6B00);
    /// 6D00: instruction code not supported or invalid.
    pub const INS_NOT_SUPPORTED: Sw = Sw(0x6D00);
    /// 6E00: class not supported.
    pub const CLA_NOT_SUPPORTED: Sw = Sw(0x6E00);
    /// 6F00: no precise diagnosis.
    pub const UNKNOWN: Sw = Sw(0x6F00);

    /// 61xx: `n` more bytes available through GET RESPONSE (0 means 256 or more).
    pub const fn bytes_remaining(n: usize) -> Sw {
        let n = if n > 255 { 0 } else { n as u16 };
        Sw(0x6100 | n)
    }
    /// 6Cxx: wrong Le; `n` is the exact length available (0 means 256).
    pub const fn wrong_le(n: usize) -> Sw {
        let n = if n > 255 { 0 } else { n as u16 };
        Sw(0x6C00 | n)
    }
    /// 63Cx: verification failed, `tries` further tries allowed (capped at 15).
    pub const fn verify_failed(tries: u8) -> Sw {
        let t = if tries > 15 { 15 } else { tries as u16 };
        Sw(0x63C0 | t)
    }

    pub const fn sw1(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub const fn sw2(self) -> u8 {
        (self.0 & 0xFF) as u8
    }
    pub const fn from_bytes(sw1: u8, sw2: u8) -> Sw {
        Sw(((sw1 as u16) << 8) | sw2 as u16)
    }
    pub const fn to_bytes(self) -> [u8; 2] {
        [self.sw1(), self.sw2()]
    }
    /// 9000 or 61xx (processing completed, more data may follow).
    pub const fn is_success(self) -> bool {
        self.0 == 0x9000 || self.sw1() == 0x61
    }
    /// Whether a card that answered this status word has left its non-volatile memory
    /// unchanged by ISO 7816-4's classification: 9000, 61xx and 62xx/63xx warnings may
    /// have changed it; 64xx-6Fxx errors (except 6581) must not have.
    pub const fn is_error(self) -> bool {
        let s1 = self.sw1();
        s1 >= 0x64 && s1 <= 0x6F
    }

    /// A short English name for logs and traces.
    pub fn description(self) -> &'static str {
        match self.0 {
            0x9000 => "success",
            0x6200 => "warning: memory unchanged",
            0x6281 => "warning: data may be corrupted",
            0x6282 => "warning: end of data reached",
            0x6283 => "warning: selected application locked",
            0x6400 => "execution error",
            0x6581 => "memory failure",
            0x6700 => "wrong length",
            0x6881 => "logical channel not supported",
            0x6882 => "secure messaging not supported",
            0x6883 => "last command of chain expected",
            0x6884 => "command chaining not supported",
            0x6982 => "security status not satisfied",
            0x6983 => "authentication method blocked",
            0x6984 => "reference data not usable",
            0x6985 => "conditions of use not satisfied",
            0x6986 => "command not allowed",
            0x6987 => "secure messaging data objects missing",
            0x6988 => "secure messaging data objects incorrect",
            0x6999 => "applet selection failed",
            0x6A80 => "incorrect data",
            0x6A81 => "function not supported",
            0x6A82 => "file or application not found",
            0x6A83 => "record not found",
            0x6A84 => "not enough memory",
            0x6A86 => "incorrect P1-P2",
            0x6A87 => "Nc inconsistent with P1-P2",
            0x6A88 => "referenced data not found",
            0x6A89 => "already exists",
            0x6B00 => "wrong P1-P2",
            0x6D00 => "instruction not supported",
            0x6E00 => "class not supported",
            0x6F00 => "no precise diagnosis",
            x if x & 0xFF00 == 0x6100 => "more data available",
            x if x & 0xFF00 == 0x6C00 => "wrong Le",
            x if x & 0xFFF0 == 0x63C0 => "verification failed",
            x if x & 0xFF00 == 0x6900 => "command not allowed",
            x if x & 0xFF00 == 0x6A00 => "wrong parameters",
            _ => "application-specific",
        }
    }
}

impl fmt::Display for Sw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X}", self.0)
    }
}

impl fmt::Debug for Sw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sw({:04X} {})", self.0, self.description())
    }
}

impl From<u16> for Sw {
    fn from(v: u16) -> Self {
        Sw(v)
    }
}
