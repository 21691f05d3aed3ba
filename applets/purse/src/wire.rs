//! The purse's wire messages: the ONE definition used by the purse applet, the SAM applet
//! and the host client. Every message has `encode` and `decode` (decode never panics and
//! rejects a wrong length with [`WireError`]). The exact bytes each MAC covers are built
//! by the `*_mac_input` functions below, so the card, the SAM and tests cannot disagree.
//!
//! All integers are big-endian. Amounts and balances are unsigned minor units (u32).
//! MACs are AES-CMAC (NIST SP 800-38B) truncated to the leftmost 8 bytes, under AES-128
//! card keys diversified from the SAM master keys with NXP AN10922:
//! `K(usage) = AN10922(M(usage), purse_id || usage)`, usage 0x01 load, 0x02 debit.

use sha2::{Digest, Sha256};

/// Purse applet AID (proprietary RID F0 "TSRA", PIX 01 01).
pub const PURSE_AID: [u8; 7] = [0xF0, 0x54, 0x53, 0x52, 0x41, 0x01, 0x01];
/// Proprietary class byte of purse commands.
pub const CLA: u8 = 0x80;

/// Instruction codes (CLA 80 unless noted).
pub mod ins {
    /// VERIFY cardholder PIN: CLA 00 (or 80), P1 00, P2 81.
    pub const VERIFY: u8 = 0x20;
    pub const READ_PURSE_DATA: u8 = 0x30;
    pub const GET_BALANCE: u8 = 0x32;
    pub const READ_LOG: u8 = 0x34;
    pub const INIT_PERSO: u8 = 0x36;
    pub const PUT_KEYS: u8 = 0x38;
    /// GET ATTESTATION KEY (80 3A 00 00 Le) → DER SubjectPublicKeyInfo of the purse's
    /// RSA-2048 attestation key (generated inside the purse at installation).
    pub const GET_ATTESTATION_KEY: u8 = 0x3A;
    pub const INIT_LOAD: u8 = 0x40;
    pub const LOAD: u8 = 0x42;
    pub const INIT_PURCHASE: u8 = 0x50;
    pub const PURCHASE: u8 = 0x52;
    pub const GET_TXN_STATUS: u8 = 0x54;
}

/// Application status words of the purse (beyond the ISO ones it also uses).
pub mod sw {
    use tessera_apdu::Sw;
    /// The load would take the balance over the maximum balance.
    pub const OVER_MAXIMUM: Sw = Sw(0x6910);
    /// Not enough funds for the debit.
    pub const INSUFFICIENT_FUNDS: Sw = Sw(0x6911);
    /// The transaction counter is exhausted: the purse accepts no more value commands.
    pub const COUNTER_EXHAUSTED: Sw = Sw(0x6912);
    /// The message is for another session (stale counter or no matching challenge).
    pub const STALE_SESSION: Sw = Sw(0x6914);
    /// Currency in the message differs from the purse currency.
    pub const WRONG_CURRENCY: Sw = Sw(0x6915);
    /// The purse has no keys yet (personalisation not finished) or is already personalised.
    pub const NOT_PERSONALISED: Sw = Sw(0x6916);
}

/// MAC domain-separation tags (first byte of every MAC input).
pub mod tag {
    pub const LOAD_AUTH: u8 = 0x4C; // 'L'
    pub const LOAD_RECEIPT: u8 = 0x52; // 'R'
    pub const CARD_AUTH: u8 = 0x49; // 'I'
    pub const DEBIT_AUTH: u8 = 0x44; // 'D'
    pub const DEBIT_PROOF: u8 = 0x50; // 'P'
    pub const TXN_STATUS: u8 = 0x53; // 'S'
    pub const KEY_BLOB: u8 = 0x4B; // 'K'
}

/// Key usages (also the last byte of the diversification input).
pub mod usage {
    pub const LOAD: u8 = 0x01;
    pub const DEBIT: u8 = 0x02;
    pub const TICKET: u8 = 0x03;
    pub const ADMIN: u8 = 0x04;
    pub const MIGRATE: u8 = 0x05;
    pub const JOURNAL: u8 = 0x06;
}

pub const MAC_LEN: usize = 8;
pub type Mac = [u8; MAC_LEN];
pub type PurseId = [u8; 8];

/// Errors decoding a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{msg}: expected {expected} bytes, got {got}")]
    Length {
        msg: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{msg}: invalid field {field}")]
    Field {
        msg: &'static str,
        field: &'static str,
    },
}

impl WireError {
    /// The status word a card answers for this error.
    pub fn sw(&self) -> tessera_apdu::Sw {
        match self {
            WireError::Length { .. } => tessera_apdu::Sw::WRONG_LENGTH,
            WireError::Field { .. } => tessera_apdu::Sw::WRONG_DATA,
        }
    }
}

/// The purse ID of a card: the first 8 bytes of SHA-256("TSRA-PURSE" || card_id).
pub fn purse_id_for(card_id: &[u8]) -> PurseId {
    let mut h = Sha256::new();
    h.update(b"TSRA-PURSE");
    h.update(card_id);
    let d = h.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(d.get(..8).unwrap_or(&[0u8; 8]));
    id
}

/// AN10922 diversification input of a card key: purse_id || usage.
pub fn div_input(purse_id: &PurseId, key_usage: u8) -> [u8; 9] {
    let mut d = [0u8; 9];
    d[..8].copy_from_slice(purse_id);
    d[8] = key_usage;
    d
}

// ---------------------------------------------------------------- reader helpers

/// Bounds-checked reader used by the message codecs.
#[doc(hidden)]
pub struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    msg: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8], msg: &'static str, expected: usize) -> Result<Self, WireError> {
        if b.len() != expected {
            return Err(WireError::Length {
                msg,
                expected,
                got: b.len(),
            });
        }
        Ok(Reader { b, at: 0, msg })
    }
    pub fn at_least(b: &'a [u8], msg: &'static str, min: usize) -> Result<Self, WireError> {
        if b.len() < min {
            return Err(WireError::Length {
                msg,
                expected: min,
                got: b.len(),
            });
        }
        Ok(Reader { b, at: 0, msg })
    }
    pub fn bytes<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let s = self.b.get(self.at..self.at + N).ok_or(WireError::Length {
            msg: self.msg,
            expected: self.at + N,
            got: self.b.len(),
        })?;
        self.at += N;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.bytes()?))
    }
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.bytes()?))
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let r = self.b.get(self.at..).unwrap_or(&[]);
        self.at = self.b.len();
        r
    }
}

/// Declare a fixed-layout message with `LEN`, `encode` and `decode` (shared with the SAM's
/// wire module so that both use one codec). Field types: `u8`, `u16`, `u32` (big-endian),
/// `id` (purse ID, 8 bytes), `mac` (8 bytes), `b4`, `b8` (raw bytes).
#[macro_export]
#[doc(hidden)]
macro_rules! message {
    ($(#[$m:meta])* $name:ident, $len:expr, { $($(#[$fm:meta])* $field:ident : $ty:tt),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name { $($(#[$fm])* pub $field: $crate::__field_ty!($ty)),* }
        impl $name {
            /// Encoded length in bytes.
            pub const LEN: usize = $len;
            pub fn encode(&self) -> Vec<u8> {
                let mut v = Vec::with_capacity(Self::LEN);
                $( $crate::__put!(v, $ty, self.$field); )*
                v
            }
            pub fn decode(b: &[u8]) -> Result<Self, $crate::wire::WireError> {
                let mut r = $crate::wire::Reader::new(b, stringify!($name), Self::LEN)?;
                Ok($name { $($field: $crate::__get!(r, $ty)),* })
            }
        }
    };
}
#[macro_export]
#[doc(hidden)]
macro_rules! __field_ty {
    (u8) => {
        u8
    };
    (u16) => {
        u16
    };
    (u32) => {
        u32
    };
    (id) => {
        $crate::wire::PurseId
    };
    (mac) => {
        $crate::wire::Mac
    };
    (b4) => {
        [u8; 4]
    };
    (b8) => {
        [u8; 8]
    };
}
#[macro_export]
#[doc(hidden)]
macro_rules! __put {
    ($v:ident, u8, $e:expr) => {
        $v.push($e)
    };
    ($v:ident, u16, $e:expr) => {
        $v.extend_from_slice(&$e.to_be_bytes())
    };
    ($v:ident, u32, $e:expr) => {
        $v.extend_from_slice(&$e.to_be_bytes())
    };
    ($v:ident, $t:tt, $e:expr) => {
        $v.extend_from_slice(&$e)
    };
}
#[macro_export]
#[doc(hidden)]
macro_rules! __get {
    ($r:ident, u8) => {
        $r.u8()?
    };
    ($r:ident, u16) => {
        $r.u16()?
    };
    ($r:ident, u32) => {
        $r.u32()?
    };
    ($r:ident, $t:tt) => {
        $r.bytes()?
    };
}

// ---------------------------------------------------------------- read commands

message!(
    /// READ PURSE DATA response (80 30 00 00 Le).
    PurseData, 8 + 2 + 4 + 4 + 4 + 4 + 1 + 1 + 1 + 1 + 4 + 1, {
    purse_id: id,
    /// ISO 4217 numeric currency code.
    currency: u16,
    balance: u32,
    max_balance: u32,
    /// The transaction counter: the number of value commands applied so far.
    counter: u32,
    /// The counter value at which the purse refuses value commands.
    counter_limit: u32,
    /// Version of the load key.
    load_key_version: u8,
    /// Version of the debit key.
    debit_key_version: u8,
    /// Bit 0: keys present (personalised); bit 1: cardholder PIN set.
    flags: u8,
    /// Log capacity (N).
    log_capacity: u8,
    /// Debits above this amount need the cardholder PIN (0xFFFFFFFF: never).
    pin_threshold: u32,
    /// Number of log records held.
    log_count: u8,
});

pub const FLAG_PERSONALISED: u8 = 0x01;
pub const FLAG_PIN_SET: u8 = 0x02;

message!(
    /// GET BALANCE response (80 32 00 00 Le).
    Balance, 6, { currency: u16, balance: u32 });

/// Transaction kinds in the log and in the SAM journal.
pub mod kind {
    pub const LOAD: u8 = 0x01;
    pub const PURCHASE: u8 = 0x02;
}

message!(
    /// One log record: READ LOG response (80 34 P1=index from the newest, 0-based, 00 Le).
    /// 6A83 when the index is beyond the records held.
    LogRecord, 1 + 4 + 4 + 4 + 4 + 4 + 4 + 4 + 8, {
    kind: u8,
    amount: u32,
    balance_after: u32,
    /// Counter value the transaction used (before it was incremented).
    counter: u32,
    /// SAM ID of the counterparty.
    sam_id: b4,
    /// SAM transaction number.
    sam_txn: u32,
    /// Terminal ID (purchases) or zeros (loads).
    terminal_id: b4,
    /// Terminal time (seconds since the Unix epoch), as sent by the terminal.
    terminal_time: u32,
    /// The proof returned: load receipt or debit proof.
    proof: mac,
});

// ---------------------------------------------------------------- load

message!(
    /// INIT LOAD response (80 40 00 00 Le, no data). Opens a load session (its challenge
    /// lives in transient memory: cleared on reset and deselect).
    InitLoadResponse, 8 + 2 + 4 + 4 + 8 + 1, {
    purse_id: id,
    currency: u16,
    balance: u32,
    counter: u32,
    challenge: b8,
    key_version: u8,
});

message!(
    /// SAM AUTHORIZE LOAD request: what the issuer SAM needs to authorise a load.
    AuthorizeLoad, 8 + 2 + 4 + 8 + 1 + 4 + 4, {
    purse_id: id,
    currency: u16,
    counter: u32,
    challenge: b8,
    key_version: u8,
    amount: u32,
    terminal_time: u32,
});

message!(
    /// SAM AUTHORIZE LOAD response.
    LoadAuthorization, 4 + 4 + 8, {
    sam_id: b4,
    sam_txn: u32,
    mac: mac,
});

message!(
    /// LOAD command data (80 42 00 00 Lc data Le).
    Load, 4 + 4 + 4 + 4 + 4 + 8, {
    amount: u32,
    sam_id: b4,
    sam_txn: u32,
    terminal_time: u32,
    /// The counter of the session this load belongs to.
    counter: u32,
    mac: mac,
});

message!(
    /// LOAD / PURCHASE response: the card's proof of the change.
    ValueReceipt, 4 + 4 + 8, {
    /// Counter value used by the transaction (the purse counter is now this + 1).
    counter: u32,
    balance_after: u32,
    proof: mac,
});

/// Bytes covered by the load authorisation MAC (key: load key of the purse).
#[allow(clippy::too_many_arguments)]
pub fn load_auth_mac_input(
    purse_id: &PurseId,
    counter: u32,
    challenge: &[u8; 8],
    currency: u16,
    amount: u32,
    sam_id: &[u8; 4],
    sam_txn: u32,
    terminal_time: u32,
) -> Vec<u8> {
    let mut v = vec![tag::LOAD_AUTH];
    v.extend_from_slice(purse_id);
    v.extend_from_slice(&counter.to_be_bytes());
    v.extend_from_slice(challenge);
    v.extend_from_slice(&currency.to_be_bytes());
    v.extend_from_slice(&amount.to_be_bytes());
    v.extend_from_slice(sam_id);
    v.extend_from_slice(&sam_txn.to_be_bytes());
    v.extend_from_slice(&terminal_time.to_be_bytes());
    v
}

/// Bytes covered by the load receipt MAC (key: load key of the purse).
pub fn load_receipt_mac_input(
    purse_id: &PurseId,
    counter: u32,
    amount: u32,
    balance_after: u32,
    sam_id: &[u8; 4],
    sam_txn: u32,
) -> Vec<u8> {
    let mut v = vec![tag::LOAD_RECEIPT];
    v.extend_from_slice(purse_id);
    v.extend_from_slice(&counter.to_be_bytes());
    v.extend_from_slice(&amount.to_be_bytes());
    v.extend_from_slice(&balance_after.to_be_bytes());
    v.extend_from_slice(sam_id);
    v.extend_from_slice(&sam_txn.to_be_bytes());
    v
}

// ---------------------------------------------------------------- purchase

message!(
    /// INIT PURCHASE command data (80 50 00 00 Lc data Le): the terminal SAM's identity and
    /// fresh challenge.
    InitPurchase, 4 + 8, {
    sam_id: b4,
    sam_challenge: b8,
});

message!(
    /// INIT PURCHASE response: the purse state, its fresh challenge and its
    /// authentication cryptogram (proves the card holds the debit key of this purse).
    InitPurchaseResponse, 8 + 2 + 4 + 4 + 8 + 1 + 4 + 1 + 8, {
    purse_id: id,
    currency: u16,
    balance: u32,
    counter: u32,
    card_challenge: b8,
    key_version: u8,
    pin_threshold: u32,
    /// FLAG_PIN_SET when a PIN exists; bit 2 (0x04) when the PIN is currently validated.
    flags: u8,
    card_auth: mac,
});

pub const FLAG_PIN_VALIDATED: u8 = 0x04;

/// Bytes covered by the card authentication cryptogram (key: debit key of the purse).
pub fn card_auth_mac_input(
    purse_id: &PurseId,
    currency: u16,
    balance: u32,
    counter: u32,
    card_challenge: &[u8; 8],
    sam_challenge: &[u8; 8],
) -> Vec<u8> {
    let mut v = vec![tag::CARD_AUTH];
    v.extend_from_slice(purse_id);
    v.extend_from_slice(&currency.to_be_bytes());
    v.extend_from_slice(&balance.to_be_bytes());
    v.extend_from_slice(&counter.to_be_bytes());
    v.extend_from_slice(card_challenge);
    v.extend_from_slice(sam_challenge);
    v
}

message!(
    /// SAM AUTHORIZE PURCHASE request: the card's INIT PURCHASE response plus the sale.
    AuthorizePurchase, InitPurchaseResponse::LEN + 4 + 4 + 4, {
    purse_id: id,
    currency: u16,
    balance: u32,
    counter: u32,
    card_challenge: b8,
    key_version: u8,
    pin_threshold: u32,
    flags: u8,
    card_auth: mac,
    amount: u32,
    terminal_id: b4,
    terminal_time: u32,
});

impl AuthorizePurchase {
    /// The request for a sale of `amount` at terminal `terminal_id`, `terminal_time`, on
    /// the card's INIT PURCHASE answer `init` (carried unchanged: the SAM checks its
    /// cryptogram).
    pub fn new(
        init: &InitPurchaseResponse,
        amount: u32,
        terminal_id: [u8; 4],
        terminal_time: u32,
    ) -> Self {
        AuthorizePurchase {
            purse_id: init.purse_id,
            currency: init.currency,
            balance: init.balance,
            counter: init.counter,
            card_challenge: init.card_challenge,
            key_version: init.key_version,
            pin_threshold: init.pin_threshold,
            flags: init.flags,
            card_auth: init.card_auth,
            amount,
            terminal_id,
            terminal_time,
        }
    }
}

message!(
    /// SAM AUTHORIZE PURCHASE response.
    PurchaseAuthorization, 4 + 8, {
    sam_txn: u32,
    mac: mac,
});

message!(
    /// PURCHASE command data (80 52 00 00 Lc data Le).
    Purchase, 4 + 4 + 4 + 4 + 4 + 4 + 8, {
    amount: u32,
    terminal_id: b4,
    sam_id: b4,
    sam_txn: u32,
    terminal_time: u32,
    counter: u32,
    mac: mac,
});

/// Bytes covered by the debit authorisation MAC (key: debit key of the purse).
#[allow(clippy::too_many_arguments)]
pub fn debit_auth_mac_input(
    purse_id: &PurseId,
    counter: u32,
    card_challenge: &[u8; 8],
    sam_challenge: &[u8; 8],
    currency: u16,
    amount: u32,
    terminal_id: &[u8; 4],
    sam_id: &[u8; 4],
    sam_txn: u32,
    terminal_time: u32,
) -> Vec<u8> {
    let mut v = vec![tag::DEBIT_AUTH];
    v.extend_from_slice(purse_id);
    v.extend_from_slice(&counter.to_be_bytes());
    v.extend_from_slice(card_challenge);
    v.extend_from_slice(sam_challenge);
    v.extend_from_slice(&currency.to_be_bytes());
    v.extend_from_slice(&amount.to_be_bytes());
    v.extend_from_slice(terminal_id);
    v.extend_from_slice(sam_id);
    v.extend_from_slice(&sam_txn.to_be_bytes());
    v.extend_from_slice(&terminal_time.to_be_bytes());
    v
}

/// Bytes covered by the debit proof MAC (key: debit key of the purse).
#[allow(clippy::too_many_arguments)]
pub fn debit_proof_mac_input(
    purse_id: &PurseId,
    counter: u32,
    amount: u32,
    balance_after: u32,
    terminal_id: &[u8; 4],
    sam_id: &[u8; 4],
    sam_txn: u32,
    sam_challenge: &[u8; 8],
) -> Vec<u8> {
    let mut v = vec![tag::DEBIT_PROOF];
    v.extend_from_slice(purse_id);
    v.extend_from_slice(&counter.to_be_bytes());
    v.extend_from_slice(&amount.to_be_bytes());
    v.extend_from_slice(&balance_after.to_be_bytes());
    v.extend_from_slice(terminal_id);
    v.extend_from_slice(sam_id);
    v.extend_from_slice(&sam_txn.to_be_bytes());
    v.extend_from_slice(sam_challenge);
    v
}

// ---------------------------------------------------------------- recovery

message!(
    /// GET TRANSACTION STATUS command data (80 54 P1=key usage 01 load / 02 debit, 00,
    /// Lc data Le): which SAM transaction the host asks about, and the SAM's fresh
    /// resolve challenge (SAM BEGIN RESOLVE) that the answer's MAC covers, so that a
    /// "not applied" answer cannot have been obtained before the authorisation existed.
    TxnStatusQuery, 4 + 4 + 8, {
    sam_id: b4,
    sam_txn: u32,
    sam_challenge: b8,
});

/// GET TRANSACTION STATUS response: applied (1) | record (37) | oldest_logged_counter
/// u32 | mac (8).
///
/// `applied` = 0x01: the transaction is in the log and `record` is its log record (with
/// the same proof the card returned first). `applied` = 0x00: the card has no such
/// transaction in its log and never will apply it (its session challenge is gone);
/// `record` is all zeros except `counter` (the purse's current counter).
/// `oldest_logged_counter` (both answers): the counter of the oldest log record the purse
/// still holds, or its current counter when the log is empty — every transaction the
/// purse applied with a counter in `oldest_logged_counter..counter` is in its log, so a
/// "not applied" answer is conclusive for an authorisation made for a counter `c >=
/// oldest_logged_counter`. `mac` covers [`txn_status_mac_input`] under the key selected
/// by P1, so a SAM can void its pending authorisation on the card's word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnStatus {
    pub applied: bool,
    pub record: LogRecord,
    pub oldest_logged_counter: u32,
    pub mac: Mac,
}

impl TxnStatus {
    pub const LEN: usize = 1 + LogRecord::LEN + 4 + MAC_LEN;
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![u8::from(self.applied)];
        v.extend_from_slice(&self.record.encode());
        v.extend_from_slice(&self.oldest_logged_counter.to_be_bytes());
        v.extend_from_slice(&self.mac);
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b, "TxnStatus", Self::LEN)?;
        let applied = match r.u8()? {
            0 => false,
            1 => true,
            _ => {
                return Err(WireError::Field {
                    msg: "TxnStatus",
                    field: "applied",
                });
            }
        };
        let rec = r.bytes::<{ LogRecord::LEN }>()?;
        let record = LogRecord::decode(&rec)?;
        let oldest_logged_counter = r.u32()?;
        let mac = r.bytes()?;
        Ok(TxnStatus {
            applied,
            record,
            oldest_logged_counter,
            mac,
        })
    }
}

/// Bytes covered by the transaction status MAC: `53` || purse_id || query (sam_id,
/// sam_txn, sam_challenge) || applied || record || oldest_logged_counter.
pub fn txn_status_mac_input(
    purse_id: &PurseId,
    query: &TxnStatusQuery,
    status: &TxnStatus,
) -> Vec<u8> {
    let mut v = vec![tag::TXN_STATUS];
    v.extend_from_slice(purse_id);
    v.extend_from_slice(&query.encode());
    v.push(u8::from(status.applied));
    v.extend_from_slice(&status.record.encode());
    v.extend_from_slice(&status.oldest_logged_counter.to_be_bytes());
    v
}

// ---------------------------------------------------------------- personalisation

/// Purse installation parameters (the `params` of `Card::install`).
///
/// Layout: currency u16 | max_balance u32 | log_capacity u8 (1-255) | counter_limit u32 |
/// pin_threshold u32 | pin_try_limit u8 | pin_len u8 | pin[pin_len] | spki_len u16 |
/// spki[spki_len] (DER SubjectPublicKeyInfo of the issuer SAM's RSA personalisation key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurseInstall {
    pub currency: u16,
    pub max_balance: u32,
    pub log_capacity: u8,
    pub counter_limit: u32,
    pub pin_threshold: u32,
    pub pin_try_limit: u8,
    /// Empty: no cardholder PIN.
    pub pin: Vec<u8>,
    pub issuer_perso_spki: Vec<u8>,
}

impl PurseInstall {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&self.currency.to_be_bytes());
        v.extend_from_slice(&self.max_balance.to_be_bytes());
        v.push(self.log_capacity);
        v.extend_from_slice(&self.counter_limit.to_be_bytes());
        v.extend_from_slice(&self.pin_threshold.to_be_bytes());
        v.push(self.pin_try_limit);
        v.push(self.pin.len() as u8);
        v.extend_from_slice(&self.pin);
        v.extend_from_slice(&(self.issuer_perso_spki.len() as u16).to_be_bytes());
        v.extend_from_slice(&self.issuer_perso_spki);
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const M: &str = "PurseInstall";
        let mut r = Reader::at_least(b, M, 2 + 4 + 1 + 4 + 4 + 1 + 1 + 2)?;
        let currency = r.u16()?;
        let max_balance = r.u32()?;
        let log_capacity = r.u8()?;
        let counter_limit = r.u32()?;
        let pin_threshold = r.u32()?;
        let pin_try_limit = r.u8()?;
        let pin_len = r.u8()? as usize;
        let rest = r.rest();
        let pin = rest
            .get(..pin_len)
            .ok_or(WireError::Field {
                msg: M,
                field: "pin",
            })?
            .to_vec();
        let rest = rest.get(pin_len..).unwrap_or(&[]);
        let (len, spki) = match rest {
            [a, b, spki @ ..] => (u16::from_be_bytes([*a, *b]) as usize, spki),
            _ => {
                return Err(WireError::Field {
                    msg: M,
                    field: "spki length",
                });
            }
        };
        if spki.len() != len {
            return Err(WireError::Field {
                msg: M,
                field: "spki",
            });
        }
        if log_capacity == 0 {
            return Err(WireError::Field {
                msg: M,
                field: "log_capacity",
            });
        }
        Ok(PurseInstall {
            currency,
            max_balance,
            log_capacity,
            counter_limit,
            pin_threshold,
            pin_try_limit,
            pin,
            issuer_perso_spki: spki.to_vec(),
        })
    }
}

/// Plaintext of a key-transport request, encrypted with RSA-OAEP-SHA256 under the issuer
/// SAM's personalisation key: transport key KT (16) | nonce (8) | subject ID length (1) |
/// subject ID (purse ID for a purse, SAM ID for a SAM).
///
/// Used by INIT PERSO (purse, 80 36 00 00 Le: response = an [`AttestedKeyRequest`] with
/// the OAEP ciphertext) and by the SAM's INIT KEY IMPORT. The chip generates KT itself and
/// keeps it until PUT KEYS / IMPORT KEYS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTransportRequest {
    pub transport_key: [u8; 16],
    pub nonce: [u8; 8],
    pub subject_id: Vec<u8>,
}

impl KeyTransportRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.transport_key.to_vec();
        v.extend_from_slice(&self.nonce);
        v.push(self.subject_id.len() as u8);
        v.extend_from_slice(&self.subject_id);
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const M: &str = "KeyTransportRequest";
        let mut r = Reader::at_least(b, M, 25)?;
        let transport_key = r.bytes()?;
        let nonce = r.bytes()?;
        let len = r.u8()? as usize;
        let id = r.rest();
        if id.len() != len {
            return Err(WireError::Field {
                msg: M,
                field: "subject id",
            });
        }
        Ok(KeyTransportRequest {
            transport_key,
            nonce,
            subject_id: id.to_vec(),
        })
    }
}

/// Domain tag of the attestation signature over a key-transport request (see
/// [`key_request_signed_input`]).
pub const KEY_REQUEST_SIG_TAG: &[u8] = b"TSRA-KEY-REQUEST-V1";

/// Bytes a chip signs with its attestation key (RSASSA-PKCS1-v1_5, SHA-256) when it
/// answers INIT PERSO / INIT KEY IMPORT: [`KEY_REQUEST_SIG_TAG`] || the OAEP ciphertext.
pub fn key_request_signed_input(ciphertext: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(KEY_REQUEST_SIG_TAG.len() + ciphertext.len());
    v.extend_from_slice(KEY_REQUEST_SIG_TAG);
    v.extend_from_slice(ciphertext);
    v
}

/// A key-transport request signed by the chip that made it: the INIT PERSO response of
/// the purse and the INIT KEY IMPORT response of a new SAM.
///
/// Layout: ct_len u16 | ciphertext (RSA-OAEP-SHA256 of a [`KeyTransportRequest`] under the
/// issuer SAM's personalisation key) | sig_len u16 | signature (RSASSA-PKCS1-v1_5 SHA-256
/// by the chip's attestation key over [`key_request_signed_input`]`(ciphertext)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedKeyRequest {
    pub ciphertext: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Append `len u16 || bytes` (callers keep `bytes` under 64 KiB; longer is cut to fit).
#[doc(hidden)]
pub fn put_u16_prefixed(v: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len().min(usize::from(u16::MAX));
    v.extend_from_slice(&(n as u16).to_be_bytes());
    v.extend_from_slice(bytes.get(..n).unwrap_or(&[]));
}

impl Reader<'_> {
    /// A `len u16 || bytes` field.
    pub fn u16_prefixed(&mut self, field: &'static str) -> Result<Vec<u8>, WireError> {
        let n = usize::from(self.u16()?);
        let s = self.b.get(self.at..self.at + n).ok_or(WireError::Field {
            msg: self.msg,
            field,
        })?;
        self.at += n;
        Ok(s.to_vec())
    }
    /// Fail unless every byte was read.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(WireError::Length {
                msg: self.msg,
                expected: self.at,
                got: self.b.len(),
            })
        }
    }
}

impl AttestedKeyRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + self.ciphertext.len() + self.signature.len());
        put_u16_prefixed(&mut v, &self.ciphertext);
        put_u16_prefixed(&mut v, &self.signature);
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::at_least(b, "AttestedKeyRequest", 4)?;
        let ciphertext = r.u16_prefixed("ciphertext")?;
        let signature = r.u16_prefixed("signature")?;
        r.finish()?;
        Ok(AttestedKeyRequest {
            ciphertext,
            signature,
        })
    }
}

/// One key inside a [`KeyBlob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub usage: u8,
    pub number: u8,
    pub version: u8,
    /// Set for a SAM master key (it diversifies card keys); clear for a card's own key.
    pub master: bool,
}

/// Keys wrapped under a transport key (PUT KEYS data, 80 38 00 00 Lc data; and the SAM's
/// IMPORT KEYS). Layout: nonce (8) | count (1) | count × (usage, number, version,
/// master 0/1) | AES-128-CBC ciphertext of the keys (16 bytes each, IV zero, no padding)
/// under KT_enc | MAC (8).
/// `KT_enc = AES-CMAC(KT, 01 || "TSRA-KT-ENC")`, `KT_mac = AES-CMAC(KT, 02 ||
/// "TSRA-KT-MAC")`, MAC = AES-CMAC(KT_mac, `4B` || every preceding byte) truncated to 8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBlob {
    pub nonce: [u8; 8],
    pub entries: Vec<KeyEntry>,
    pub ciphertext: Vec<u8>,
    pub mac: Mac,
}

impl KeyBlob {
    /// Everything the MAC covers except the leading tag byte.
    pub fn mac_body(&self) -> Vec<u8> {
        let mut v = self.nonce.to_vec();
        v.push(self.entries.len() as u8);
        for e in &self.entries {
            v.extend_from_slice(&[e.usage, e.number, e.version, u8::from(e.master)]);
        }
        v.extend_from_slice(&self.ciphertext);
        v
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.mac_body();
        v.extend_from_slice(&self.mac);
        v
    }
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const M: &str = "KeyBlob";
        let mut r = Reader::at_least(b, M, 8 + 1 + MAC_LEN)?;
        let nonce = r.bytes()?;
        let count = r.u8()? as usize;
        if count == 0 || count > 16 {
            return Err(WireError::Field {
                msg: M,
                field: "count",
            });
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let [usage, number, version, master] = r.bytes::<4>()?;
            if master > 1 {
                return Err(WireError::Field {
                    msg: M,
                    field: "master",
                });
            }
            entries.push(KeyEntry {
                usage,
                number,
                version,
                master: master == 1,
            });
        }
        let rest = r.rest();
        let expected = count * 16 + MAC_LEN;
        if rest.len() != expected {
            return Err(WireError::Length {
                msg: M,
                expected: b.len() - rest.len() + expected,
                got: b.len(),
            });
        }
        let (ct, mac) = rest.split_at(count * 16);
        let mut m = [0u8; MAC_LEN];
        m.copy_from_slice(mac);
        Ok(KeyBlob {
            nonce,
            entries,
            ciphertext: ct.to_vec(),
            mac: m,
        })
    }
}

/// Derivation constants of the transport key halves.
pub const KT_ENC_LABEL: &[u8] = b"\x01TSRA-KT-ENC";
pub const KT_MAC_LABEL: &[u8] = b"\x02TSRA-KT-MAC";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_messages_round_trip_and_reject_wrong_length() {
        let m = Load {
            amount: 500,
            sam_id: [1, 2, 3, 4],
            sam_txn: 7,
            terminal_time: 1_700_000_000,
            counter: 3,
            mac: [9; 8],
        };
        let b = m.encode();
        assert_eq!(b.len(), Load::LEN);
        assert_eq!(&b[..4], &[0, 0, 1, 0xF4]);
        assert_eq!(Load::decode(&b), Ok(m));
        assert!(matches!(
            Load::decode(&b[1..]),
            Err(WireError::Length { .. })
        ));
        assert_eq!(PurseData::LEN, 35);
        assert_eq!(InitPurchaseResponse::LEN, 40);
        assert_eq!(AuthorizePurchase::LEN, 52);
        assert_eq!(TxnStatusQuery::LEN, 16);
        assert_eq!(TxnStatus::LEN, 50);
    }

    #[test]
    fn txn_status_round_trips_and_its_mac_covers_the_oldest_counter() {
        let st = TxnStatus {
            applied: false,
            record: LogRecord {
                kind: 0,
                amount: 0,
                balance_after: 0,
                counter: 40,
                sam_id: [0; 4],
                sam_txn: 0,
                terminal_id: [0; 4],
                terminal_time: 0,
                proof: [0; 8],
            },
            oldest_logged_counter: 32,
            mac: [5; 8],
        };
        let b = st.encode();
        assert_eq!(b.len(), TxnStatus::LEN);
        assert_eq!(&b[38..42], &[0, 0, 0, 32]);
        assert_eq!(TxnStatus::decode(&b), Ok(st.clone()));
        let q = TxnStatusQuery {
            sam_id: [0, 0, 0, 2],
            sam_txn: 9,
            sam_challenge: [7; 8],
        };
        let other = TxnStatus {
            oldest_logged_counter: 31,
            ..st.clone()
        };
        assert_ne!(
            txn_status_mac_input(&[1; 8], &q, &st),
            txn_status_mac_input(&[1; 8], &q, &other)
        );
    }

    #[test]
    fn install_params_round_trip() {
        let p = PurseInstall {
            currency: 978,
            max_balance: 100_000,
            log_capacity: 32,
            counter_limit: 0xFFFF_FFFF,
            pin_threshold: 2_000,
            pin_try_limit: 3,
            pin: b"1234".to_vec(),
            issuer_perso_spki: vec![0x30, 0x82, 1, 2],
        };
        assert_eq!(PurseInstall::decode(&p.encode()), Ok(p.clone()));
        let mut bad = p.encode();
        bad.pop();
        assert!(PurseInstall::decode(&bad).is_err());
    }

    #[test]
    fn purse_id_is_stable() {
        // SHA-256("TSRA-PURSE" || 04 11 22 33 44 55 66), first 8 bytes, computed with
        // coreutils: printf 'TSRA-PURSE\x04\x11\x22\x33\x44\x55\x66' | sha256sum
        let id = purse_id_for(&[0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66]);
        assert_eq!(id, [0xcb, 0x62, 0x6a, 0x3c, 0xf2, 0x1a, 0x04, 0x5c]);
        assert_ne!(
            id,
            purse_id_for(&[0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x67])
        );
    }

    #[test]
    fn attested_key_request_round_trip_and_length_checks() {
        let r = AttestedKeyRequest {
            ciphertext: vec![1; 256],
            signature: vec![2; 256],
        };
        let b = r.encode();
        assert_eq!(b.len(), 2 + 256 + 2 + 256);
        assert_eq!(&b[..2], &[0x01, 0x00]);
        assert_eq!(AttestedKeyRequest::decode(&b), Ok(r));
        assert!(AttestedKeyRequest::decode(&b[..b.len() - 1]).is_err());
        let mut long = b.clone();
        long.push(0);
        assert!(AttestedKeyRequest::decode(&long).is_err());
        assert!(AttestedKeyRequest::decode(&[0, 0]).is_err());
        assert_eq!(
            key_request_signed_input(&[0xAB]),
            [KEY_REQUEST_SIG_TAG, &[0xAB]].concat()
        );
    }
}
