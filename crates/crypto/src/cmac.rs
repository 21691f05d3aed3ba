//! CMAC (NIST SP 800-38B) with AES-128/192/256 and 3DES (2-key / 3-key).
//!
//! Verification always compares in constant time ([`crate::ct_eq`]) and
//! accepts truncated MACs (the leftmost bytes of the full tag).

use ::cmac::{Cmac, KeyInit, Mac};
use aes::{Aes128, Aes192, Aes256};
use des::{TdesEde2, TdesEde3};

use crate::CryptoError;

/// Shortest truncated MAC accepted by the `*_verify` functions.
pub const MIN_MAC_LEN: usize = 4;

fn full<M: Mac + KeyInit>(
    key: &[u8],
    data: &[u8],
    alg: &'static str,
    expected: &'static str,
) -> Result<Vec<u8>, CryptoError> {
    let mut m = <M as KeyInit>::new_from_slice(key).map_err(|_| CryptoError::InvalidKeyLength {
        alg,
        got: key.len(),
        expected,
    })?;
    m.update(data);
    Ok(m.finalize().into_bytes().to_vec())
}

/// AES-CMAC over `data` with a 16, 24 or 32-byte key (full 16-byte tag).
pub fn aes_cmac(key: &[u8], data: &[u8]) -> Result<[u8; 16], CryptoError> {
    const E: &str = "16, 24 or 32";
    let v = match key.len() {
        16 => full::<Cmac<Aes128>>(key, data, "AES-CMAC", E)?,
        24 => full::<Cmac<Aes192>>(key, data, "AES-CMAC", E)?,
        32 => full::<Cmac<Aes256>>(key, data, "AES-CMAC", E)?,
        got => {
            return Err(CryptoError::InvalidKeyLength {
                alg: "AES-CMAC",
                got,
                expected: E,
            });
        }
    };
    v.try_into()
        .map_err(|_| CryptoError::InvalidInput("CMAC output length"))
}

/// 3DES-CMAC over `data` with a 16-byte (2-key) or 24-byte (3-key) key.
pub fn tdes_cmac(key: &[u8], data: &[u8]) -> Result<[u8; 8], CryptoError> {
    const E: &str = "16 or 24";
    let v = match key.len() {
        16 => full::<Cmac<TdesEde2>>(key, data, "3DES-CMAC", E)?,
        24 => full::<Cmac<TdesEde3>>(key, data, "3DES-CMAC", E)?,
        got => {
            return Err(CryptoError::InvalidKeyLength {
                alg: "3DES-CMAC",
                got,
                expected: E,
            });
        }
    };
    v.try_into()
        .map_err(|_| CryptoError::InvalidInput("CMAC output length"))
}

/// AES-CMAC truncated to its leftmost `len` bytes (`4..=16`).
pub fn aes_cmac_truncated(key: &[u8], data: &[u8], len: usize) -> Result<Vec<u8>, CryptoError> {
    let t = aes_cmac(key, data)?;
    truncate(&t, len)
}

/// Leftmost `len` bytes of a MAC, `MIN_MAC_LEN..=mac.len()`.
pub fn truncate(mac: &[u8], len: usize) -> Result<Vec<u8>, CryptoError> {
    if len < MIN_MAC_LEN || len > mac.len() {
        return Err(CryptoError::InvalidMacLength {
            got: len,
            min: MIN_MAC_LEN,
            max: mac.len(),
        });
    }
    Ok(mac.get(..len).unwrap_or_default().to_vec())
}

/// Constant-time comparison of `given` (possibly truncated) against the
/// leftmost bytes of `full`. Lengths outside `MIN_MAC_LEN..=full.len()` are
/// an error, not a silent `false`.
pub(crate) fn verify_truncated(full: &[u8], given: &[u8]) -> Result<bool, CryptoError> {
    if given.len() < MIN_MAC_LEN || given.len() > full.len() {
        return Err(CryptoError::InvalidMacLength {
            got: given.len(),
            min: MIN_MAC_LEN,
            max: full.len(),
        });
    }
    Ok(crate::ct_eq(
        full.get(..given.len()).unwrap_or_default(),
        given,
    ))
}

/// Verify an AES-CMAC tag; `mac` may be truncated to 4..=16 leftmost bytes.
/// Returns `Ok(false)` on mismatch, `Err` on bad key or MAC length.
pub fn aes_cmac_verify(key: &[u8], data: &[u8], mac: &[u8]) -> Result<bool, CryptoError> {
    let t = aes_cmac(key, data)?;
    verify_truncated(&t, mac)
}

/// Verify a 3DES-CMAC tag; `mac` may be truncated to 4..=8 leftmost bytes.
pub fn tdes_cmac_verify(key: &[u8], data: &[u8], mac: &[u8]) -> Result<bool, CryptoError> {
    let t = tdes_cmac(key, data)?;
    verify_truncated(&t, mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 4493 section 4, example 2 (16-byte message).
    const K: [u8; 16] = [
        0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f,
        0x3c,
    ];
    const M: [u8; 16] = [
        0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96, 0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93, 0x17,
        0x2a,
    ];
    const T: [u8; 16] = [
        0x07, 0x0a, 0x16, 0xb4, 0x6b, 0x4d, 0x41, 0x44, 0xf7, 0x9b, 0xdd, 0x9d, 0xd0, 0x4a, 0x28,
        0x7c,
    ];

    #[test]
    fn rfc4493_example2() {
        assert_eq!(aes_cmac(&K, &M).unwrap(), T);
    }

    #[test]
    fn truncated_verify() {
        assert!(aes_cmac_verify(&K, &M, &T).unwrap());
        assert!(aes_cmac_verify(&K, &M, &T[..8]).unwrap());
        assert!(aes_cmac_verify(&K, &M, &T[..4]).unwrap());
        let mut bad = T;
        bad[3] ^= 1;
        assert!(!aes_cmac_verify(&K, &M, &bad[..4]).unwrap());
        assert!(!aes_cmac_verify(&K, &M, &bad).unwrap());
        // rightmost bytes are not a valid truncation
        assert!(!aes_cmac_verify(&K, &M, &T[8..]).unwrap());
        assert!(matches!(
            aes_cmac_verify(&K, &M, &T[..3]),
            Err(CryptoError::InvalidMacLength { got: 3, .. })
        ));
        assert!(matches!(
            aes_cmac_verify(&K, &M, &[0u8; 17]),
            Err(CryptoError::InvalidMacLength { got: 17, .. })
        ));
        assert_eq!(aes_cmac_truncated(&K, &M, 8).unwrap(), T[..8].to_vec());
        assert!(aes_cmac_truncated(&K, &M, 2).is_err());
    }

    #[test]
    fn wrong_key_lengths() {
        assert!(matches!(
            aes_cmac(&[0; 15], b"x"),
            Err(CryptoError::InvalidKeyLength { .. })
        ));
        assert!(matches!(
            tdes_cmac(&[0; 8], b"x"),
            Err(CryptoError::InvalidKeyLength { .. })
        ));
        assert!(aes_cmac_verify(&[0; 0], b"x", &[0; 8]).is_err());
        let t = tdes_cmac(&[1; 24], b"abc").unwrap();
        assert!(tdes_cmac_verify(&[1; 24], b"abc", &t[..4]).unwrap());
        assert!(tdes_cmac_verify(&[1; 24], b"abc", &[0; 9]).is_err());
    }
}
