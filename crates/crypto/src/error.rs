//! Error type shared by every module of the crate.

use thiserror::Error;

/// Everything that can go wrong in `tessera-crypto` (except X.509 chain
/// checks, which have their own detailed [`crate::x509::X509Error`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// A key had a length the algorithm does not accept.
    #[error("invalid key length for {alg}: got {got} bytes, expected {expected}")]
    InvalidKeyLength {
        /// Algorithm name.
        alg: &'static str,
        /// Length given.
        got: usize,
        /// Accepted lengths, human readable (e.g. "16, 24 or 32").
        expected: &'static str,
    },
    /// The IV length is not the cipher block size.
    #[error("invalid IV length: got {got} bytes, expected {expected}")]
    InvalidIvLength {
        /// Length given.
        got: usize,
        /// Block size.
        expected: usize,
    },
    /// Data length is not a multiple of the block size (no padding, or
    /// ciphertext input).
    #[error("data length {len} is not a multiple of the block size {block}")]
    InvalidDataLength {
        /// Length given.
        len: usize,
        /// Block size.
        block: usize,
    },
    /// Padding was malformed on removal.
    #[error("invalid padding")]
    InvalidPadding,
    /// A MAC (or truncated MAC) had an unacceptable length.
    #[error("invalid MAC length {got} (accepted {min}..={max})")]
    InvalidMacLength {
        /// Length given.
        got: usize,
        /// Shortest accepted.
        min: usize,
        /// Longest accepted.
        max: usize,
    },
    /// An input parameter is outside the accepted range.
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    /// RSA operation failed (bad key, message too long, decryption error).
    #[error("RSA error: {0}")]
    Rsa(String),
    /// Signature verification failed.
    #[error("signature verification failed")]
    BadSignature,
    /// DER / PKCS#8 / SPKI encoding or decoding failed.
    #[error("DER encoding error: {0}")]
    Der(String),
}

impl From<::rsa::Error> for CryptoError {
    fn from(e: ::rsa::Error) -> Self {
        CryptoError::Rsa(e.to_string())
    }
}

impl From<der::Error> for CryptoError {
    fn from(e: der::Error) -> Self {
        CryptoError::Der(e.to_string())
    }
}

impl From<pkcs8::Error> for CryptoError {
    fn from(e: pkcs8::Error) -> Self {
        CryptoError::Der(e.to_string())
    }
}

impl From<spki::Error> for CryptoError {
    fn from(e: spki::Error) -> Self {
        CryptoError::Der(e.to_string())
    }
}
