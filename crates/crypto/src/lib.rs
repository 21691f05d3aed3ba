//! Tessera crypto: a small, typed cryptographic toolbox for the card OS
//! emulator and its applets.
//!
//! * block ciphers ([`cipher`]): DES, 2-key/3-key 3DES, AES-128/192/256 in
//!   ECB and CBC with explicit IV, with [`padding::Padding`];
//! * MACs ([`cmac`], [`mac`]): AES-CMAC, 3DES-CMAC, ISO 9797-1 MAC
//!   algorithm 3 ("retail MAC"), constant-time verification with truncation;
//! * key derivation ([`kdf`]): NIST SP 800-108 counter mode with CMAC,
//!   GlobalPlatform SCP03 layout, NXP AN10922 diversification;
//! * RSA ([`rsa`]): PKCS#1 v1.5 / PSS signatures, OAEP, PKCS#8 / SPKI DER;
//! * X.509 ([`x509`]): card certificates with a card-role extension, chain
//!   verification with revocation;
//! * randomness ([`rng`]): OS entropy or a seeded, reproducible CSPRNG.
//!
//! Every function that takes caller data returns a [`CryptoError`] instead of
//! panicking on bad lengths, bad padding or bad DER. Secret key material held
//! by this crate is zeroized on drop.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod cipher;
pub mod cmac;
mod error;
pub mod kdf;
pub mod mac;
pub mod padding;
pub mod rng;
pub mod rsa;
pub mod x509;

pub use error::CryptoError;

/// Constant-time equality of two byte strings.
///
/// Returns `false` when the lengths differ (the length itself is not
/// secret); otherwise the comparison time does not depend on the contents.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    if a.len() != b.len() {
        return false;
    }
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_basics() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
