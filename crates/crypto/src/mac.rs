//! ISO/IEC 9797-1 MAC algorithm 3 ("retail MAC") with DES, plus truncation.
//!
//! The key is `K || K'` (16 bytes). The padded data is CBC-MACed with single
//! DES under `K` (zero IV); the last block's output is then decrypted with
//! `K'` and encrypted again with `K` (output transformation 3).

use crate::CryptoError;
use crate::cipher::{DES_BLOCK, Engine};
use crate::padding::{self, Padding};

pub use crate::cmac::truncate;

/// ISO 9797-1 MAC algorithm 3 over `data` padded with `padding`
/// (method 1 or 2; `None` requires 8-byte aligned data), 16-byte key.
pub fn retail_mac(key: &[u8], data: &[u8], padding: Padding) -> Result<[u8; 8], CryptoError> {
    retail_mac_iv(key, &[0u8; DES_BLOCK], data, padding)
}

/// Retail MAC with an explicit initial chaining value (e.g. the previous
/// MAC in a secure-messaging session). `iv` must be 8 bytes.
pub fn retail_mac_iv(
    key: &[u8],
    iv: &[u8],
    data: &[u8],
    padding: Padding,
) -> Result<[u8; 8], CryptoError> {
    if key.len() != 16 {
        return Err(CryptoError::InvalidKeyLength {
            alg: "retail MAC (ISO 9797-1 alg 3)",
            got: key.len(),
            expected: "16",
        });
    }
    let mut chain: [u8; 8] = iv.try_into().map_err(|_| CryptoError::InvalidIvLength {
        got: iv.len(),
        expected: DES_BLOCK,
    })?;
    let (k1, k2) = key.split_at(8);
    let e1 = Engine::des(k1)?;
    let e2 = Engine::des(k2)?;
    let buf = padding::pad(data, DES_BLOCK, padding)?;
    if buf.is_empty() {
        return Err(CryptoError::InvalidInput(
            "retail MAC over empty data without padding",
        ));
    }
    for chunk in buf.chunks_exact(DES_BLOCK) {
        for (c, d) in chain.iter_mut().zip(chunk) {
            *c ^= *d;
        }
        e1.encrypt_block(&mut chain);
    }
    e2.decrypt_block(&mut chain);
    e1.encrypt_block(&mut chain);
    Ok(chain)
}

/// Constant-time verification of a retail MAC, full (8) or truncated
/// (4..=8 leftmost bytes).
pub fn retail_mac_verify(
    key: &[u8],
    data: &[u8],
    padding: Padding,
    mac: &[u8],
) -> Result<bool, CryptoError> {
    let t = retail_mac(key, data, padding)?;
    crate::cmac::verify_truncated(&t, mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::{des_cbc_encrypt, tdes_ecb_encrypt};

    // Structural identity (no self-generated expected values): the retail
    // MAC equals single-DES CBC-MAC over all blocks but the last, followed by
    // 2-key 3DES (EDE, K1 K2 K1) on the last chained block.
    #[test]
    fn equals_des_cbc_then_3des_last_block() {
        let key: Vec<u8> = (1u8..=16).collect();
        let data: Vec<u8> = (0u8..29).collect();
        let padded = padding::pad(&data, 8, Padding::Iso9797M2).unwrap();
        let (head, last) = padded.split_at(padded.len() - 8);
        let cbc = des_cbc_encrypt(&key[..8], &[0; 8], head, Padding::None).unwrap();
        let prev = &cbc[cbc.len() - 8..];
        let x: Vec<u8> = last.iter().zip(prev).map(|(a, b)| a ^ b).collect();
        let expect = tdes_ecb_encrypt(&key, &x, Padding::None).unwrap();
        assert_eq!(
            retail_mac(&key, &data, Padding::Iso9797M2)
                .unwrap()
                .to_vec(),
            expect
        );
    }

    #[test]
    fn equal_halves_reduce_to_des_cbc_mac() {
        let k = [0x0Fu8, 0x1E, 0x2D, 0x3C, 0x4B, 0x5A, 0x69, 0x78];
        let key = [k, k].concat();
        let data = [0xA5u8; 24];
        let cbc = des_cbc_encrypt(&k, &[0; 8], &data, Padding::None).unwrap();
        assert_eq!(
            retail_mac(&key, &data, Padding::None).unwrap().to_vec(),
            cbc[16..].to_vec()
        );
    }

    #[test]
    fn verify_and_errors() {
        let key = [0x11u8; 16];
        let m = retail_mac(&key, b"hello", Padding::Iso9797M2).unwrap();
        assert!(retail_mac_verify(&key, b"hello", Padding::Iso9797M2, &m).unwrap());
        assert!(retail_mac_verify(&key, b"hello", Padding::Iso9797M2, &m[..4]).unwrap());
        assert!(!retail_mac_verify(&key, b"hellp", Padding::Iso9797M2, &m).unwrap());
        assert!(retail_mac_verify(&key, b"hello", Padding::Iso9797M2, &m[..3]).is_err());
        assert!(retail_mac(&[0; 8], b"x", Padding::Iso9797M2).is_err());
        assert!(retail_mac(&key, b"x", Padding::None).is_err());
        assert!(retail_mac(&key, b"", Padding::None).is_err());
        assert!(retail_mac_iv(&key, &[0; 7], b"x", Padding::Iso9797M1).is_err());
        assert_eq!(truncate(&m, 4).unwrap(), m[..4].to_vec());
    }
}
