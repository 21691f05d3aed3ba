//! ISO/IEC 7816-4 APDUs for Tessera.
//!
//! * [`Command`]: a parsed command APDU (cases 1-4, short and extended form). Parsing is
//!   validated by the `iso7816` crate; encoding is ours and always writes Lc/Le big-endian.
//! * [`Response`]: response data plus a status word.
//! * [`Sw`]: status words with the ISO 7816-4 names used across the project.
//! * [`ClassByte`]: decoding of CLA (interindustry / proprietary, chaining, secure
//!   messaging indication, logical channel 0-19).
//! * [`tlv`]: BER-TLV encoding and decoding (FCI templates, GET DATA objects).
//!
//! Nothing in this crate panics on input bytes; every malformed input becomes a status
//! word (card side) or an [`ApduError`] (host side).
#![forbid(unsafe_code)]
// No panics on paths that APDU bytes or image files reach (tests may unwrap).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod class;
mod command;
mod response;
mod sw;
pub mod tlv;

pub use class::ClassByte;
pub use command::{Command, MAX_EXTENDED_DATA, MAX_SHORT_DATA};
pub use response::Response;
pub use sw::Sw;

/// Errors raised by host-side APDU handling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApduError {
    /// The byte string is not a well-formed command APDU; the status word a card answers.
    #[error("malformed command APDU: {reason} (card answers {sw})")]
    MalformedCommand { reason: &'static str, sw: Sw },
    /// A response shorter than the two status bytes.
    #[error("response APDU of {0} bytes is shorter than the 2-byte status word")]
    ResponseTooShort(usize),
    /// Data longer than the form allows.
    #[error("command data of {len} bytes exceeds the {max}-byte limit")]
    DataTooLong { len: usize, max: usize },
    /// Le larger than the form allows.
    #[error("expected length {0} exceeds 65536")]
    LeTooLarge(usize),
    /// Invalid hexadecimal text.
    #[error("invalid hex: {0}")]
    Hex(String),
}

/// Decode hexadecimal text, ignoring spaces, tabs and colons.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, ApduError> {
    let cleaned: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    hex::decode(&cleaned).map_err(|e| ApduError::Hex(format!("{e} in {text:?}")))
}
