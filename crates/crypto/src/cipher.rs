//! DES, 3DES (2-key / 3-key EDE) and AES-128/192/256 in ECB and CBC mode.
//!
//! All functions take the key as bytes, validate its length and return
//! [`CryptoError`] on bad key, IV or data lengths and on bad padding when
//! decrypting. CBC takes an explicit IV (no implicit zero IV: pass
//! `&[0u8; 16]` if a protocol demands one).

use ::cipher::{Block, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use des::{Des, TdesEde2, TdesEde3};
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::padding::{self, Padding};

/// AES block size in bytes.
pub const AES_BLOCK: usize = 16;
/// DES / 3DES block size in bytes.
pub const DES_BLOCK: usize = 8;

/// An AES key (16, 24 or 32 bytes), zeroized on drop.
#[derive(Clone)]
pub struct AesKey(Zeroizing<Vec<u8>>);

impl AesKey {
    /// Validate and copy an AES-128/192/256 key.
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        match key.len() {
            16 | 24 | 32 => Ok(Self(Zeroizing::new(key.to_vec()))),
            got => Err(CryptoError::InvalidKeyLength {
                alg: "AES",
                got,
                expected: "16, 24 or 32",
            }),
        }
    }
    /// Key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl core::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "AesKey({} bits, redacted)", self.0.len() * 8)
    }
}

/// A single-DES key (8 bytes, parity bits ignored), zeroized on drop.
#[derive(Clone)]
pub struct DesKey(Zeroizing<[u8; 8]>);

impl DesKey {
    /// Validate and copy a DES key.
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let k: [u8; 8] = key.try_into().map_err(|_| CryptoError::InvalidKeyLength {
            alg: "DES",
            got: key.len(),
            expected: "8",
        })?;
        Ok(Self(Zeroizing::new(k)))
    }
    /// Key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0[..]
    }
}

impl core::fmt::Debug for DesKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("DesKey(redacted)")
    }
}

/// A 3DES key: 16 bytes (2-key, K1 K2 K1) or 24 bytes (3-key), zeroized on
/// drop.
#[derive(Clone)]
pub struct TdesKey(Zeroizing<Vec<u8>>);

impl TdesKey {
    /// Validate and copy a 2-key or 3-key 3DES key.
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        match key.len() {
            16 | 24 => Ok(Self(Zeroizing::new(key.to_vec()))),
            got => Err(CryptoError::InvalidKeyLength {
                alg: "3DES",
                got,
                expected: "16 or 24",
            }),
        }
    }
    /// Key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl core::fmt::Debug for TdesKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "TdesKey({}-key, redacted)", self.0.len() / 8)
    }
}

/// A keyed block cipher instance (the RustCrypto types zeroize their key
/// schedules on drop).
pub(crate) enum Engine {
    Aes128(Box<Aes128>),
    Aes192(Box<Aes192>),
    Aes256(Box<Aes256>),
    Des(Box<Des>),
    Tdes2(Box<TdesEde2>),
    Tdes3(Box<TdesEde3>),
}

fn init<C: KeyInit>(
    alg: &'static str,
    key: &[u8],
    expected: &'static str,
) -> Result<C, CryptoError> {
    C::new_from_slice(key).map_err(|_| CryptoError::InvalidKeyLength {
        alg,
        got: key.len(),
        expected,
    })
}

fn enc<C: BlockCipherEncrypt>(c: &C, buf: &mut [u8]) {
    let mut b = Block::<C>::default();
    b.copy_from_slice(buf);
    c.encrypt_block(&mut b);
    buf.copy_from_slice(&b);
}

fn dec<C: BlockCipherDecrypt>(c: &C, buf: &mut [u8]) {
    let mut b = Block::<C>::default();
    b.copy_from_slice(buf);
    c.decrypt_block(&mut b);
    buf.copy_from_slice(&b);
}

impl Engine {
    pub(crate) fn aes(key: &[u8]) -> Result<Self, CryptoError> {
        const E: &str = "16, 24 or 32";
        Ok(match key.len() {
            16 => Engine::Aes128(Box::new(init("AES", key, E)?)),
            24 => Engine::Aes192(Box::new(init("AES", key, E)?)),
            32 => Engine::Aes256(Box::new(init("AES", key, E)?)),
            got => {
                return Err(CryptoError::InvalidKeyLength {
                    alg: "AES",
                    got,
                    expected: E,
                });
            }
        })
    }

    pub(crate) fn des(key: &[u8]) -> Result<Self, CryptoError> {
        Ok(Engine::Des(Box::new(init("DES", key, "8")?)))
    }

    pub(crate) fn tdes(key: &[u8]) -> Result<Self, CryptoError> {
        const E: &str = "16 or 24";
        Ok(match key.len() {
            16 => Engine::Tdes2(Box::new(init("3DES", key, E)?)),
            24 => Engine::Tdes3(Box::new(init("3DES", key, E)?)),
            got => {
                return Err(CryptoError::InvalidKeyLength {
                    alg: "3DES",
                    got,
                    expected: E,
                });
            }
        })
    }

    pub(crate) fn block_size(&self) -> usize {
        match self {
            Engine::Aes128(_) | Engine::Aes192(_) | Engine::Aes256(_) => AES_BLOCK,
            _ => DES_BLOCK,
        }
    }

    /// Encrypt one block in place; `buf.len()` must equal the block size
    /// (guaranteed by all callers in this crate).
    pub(crate) fn encrypt_block(&self, buf: &mut [u8]) {
        if buf.len() != self.block_size() {
            return;
        }
        match self {
            Engine::Aes128(c) => enc(c.as_ref(), buf),
            Engine::Aes192(c) => enc(c.as_ref(), buf),
            Engine::Aes256(c) => enc(c.as_ref(), buf),
            Engine::Des(c) => enc(c.as_ref(), buf),
            Engine::Tdes2(c) => enc(c.as_ref(), buf),
            Engine::Tdes3(c) => enc(c.as_ref(), buf),
        }
    }

    /// Decrypt one block in place (same length rule as `encrypt_block`).
    pub(crate) fn decrypt_block(&self, buf: &mut [u8]) {
        if buf.len() != self.block_size() {
            return;
        }
        match self {
            Engine::Aes128(c) => dec(c.as_ref(), buf),
            Engine::Aes192(c) => dec(c.as_ref(), buf),
            Engine::Aes256(c) => dec(c.as_ref(), buf),
            Engine::Des(c) => dec(c.as_ref(), buf),
            Engine::Tdes2(c) => dec(c.as_ref(), buf),
            Engine::Tdes3(c) => dec(c.as_ref(), buf),
        }
    }

    fn check_iv(&self, iv: &[u8]) -> Result<(), CryptoError> {
        if iv.len() != self.block_size() {
            return Err(CryptoError::InvalidIvLength {
                got: iv.len(),
                expected: self.block_size(),
            });
        }
        Ok(())
    }

    fn check_ct(&self, data: &[u8]) -> Result<(), CryptoError> {
        let block = self.block_size();
        if !data.len().is_multiple_of(block) {
            return Err(CryptoError::InvalidDataLength {
                len: data.len(),
                block,
            });
        }
        Ok(())
    }

    pub(crate) fn ecb_encrypt(
        &self,
        data: &[u8],
        padding: Padding,
    ) -> Result<Vec<u8>, CryptoError> {
        let block = self.block_size();
        let mut buf = padding::pad(data, block, padding)?;
        for chunk in buf.chunks_exact_mut(block) {
            self.encrypt_block(chunk);
        }
        Ok(buf)
    }

    pub(crate) fn ecb_decrypt(
        &self,
        data: &[u8],
        padding: Padding,
    ) -> Result<Vec<u8>, CryptoError> {
        self.check_ct(data)?;
        let block = self.block_size();
        let mut buf = Zeroizing::new(data.to_vec());
        for chunk in buf.chunks_exact_mut(block) {
            self.decrypt_block(chunk);
        }
        padding::unpad(&buf, block, padding)
    }

    pub(crate) fn cbc_encrypt(
        &self,
        iv: &[u8],
        data: &[u8],
        padding: Padding,
    ) -> Result<Vec<u8>, CryptoError> {
        self.check_iv(iv)?;
        let block = self.block_size();
        let mut buf = padding::pad(data, block, padding)?;
        let mut chain = iv.to_vec();
        for chunk in buf.chunks_exact_mut(block) {
            for (b, c) in chunk.iter_mut().zip(chain.iter()) {
                *b ^= *c;
            }
            self.encrypt_block(chunk);
            chain.copy_from_slice(chunk);
        }
        Ok(buf)
    }

    pub(crate) fn cbc_decrypt(
        &self,
        iv: &[u8],
        data: &[u8],
        padding: Padding,
    ) -> Result<Vec<u8>, CryptoError> {
        self.check_iv(iv)?;
        self.check_ct(data)?;
        let block = self.block_size();
        let mut buf = Zeroizing::new(data.to_vec());
        let mut chain = iv.to_vec();
        let mut next = vec![0u8; block];
        for chunk in buf.chunks_exact_mut(block) {
            next.copy_from_slice(chunk);
            self.decrypt_block(chunk);
            for (b, c) in chunk.iter_mut().zip(chain.iter()) {
                *b ^= *c;
            }
            core::mem::swap(&mut chain, &mut next);
        }
        padding::unpad(&buf, block, padding)
    }
}

macro_rules! mode_fns {
    ($key:ty, $ctor:ident, $ecb_e:ident, $ecb_d:ident, $cbc_e:ident, $cbc_d:ident, $name:literal) => {
        #[doc = concat!($name, " ECB encryption of `data` after applying `padding`.")]
        pub fn $ecb_e(key: &[u8], data: &[u8], padding: Padding) -> Result<Vec<u8>, CryptoError> {
            Engine::$ctor(key)?.ecb_encrypt(data, padding)
        }
        #[doc = concat!($name, " ECB decryption; `padding` is removed (and checked for method 2).")]
        pub fn $ecb_d(key: &[u8], data: &[u8], padding: Padding) -> Result<Vec<u8>, CryptoError> {
            Engine::$ctor(key)?.ecb_decrypt(data, padding)
        }
        #[doc = concat!($name, " CBC encryption with explicit `iv` (one block) after applying `padding`.")]
        pub fn $cbc_e(
            key: &[u8],
            iv: &[u8],
            data: &[u8],
            padding: Padding,
        ) -> Result<Vec<u8>, CryptoError> {
            Engine::$ctor(key)?.cbc_encrypt(iv, data, padding)
        }
        #[doc = concat!($name, " CBC decryption with explicit `iv`; `padding` is removed.")]
        pub fn $cbc_d(
            key: &[u8],
            iv: &[u8],
            data: &[u8],
            padding: Padding,
        ) -> Result<Vec<u8>, CryptoError> {
            Engine::$ctor(key)?.cbc_decrypt(iv, data, padding)
        }

        impl $key {
            #[doc = concat!("CBC-encrypt with this key (see [`", stringify!($cbc_e), "`]).")]
            pub fn cbc_encrypt(
                &self,
                iv: &[u8],
                data: &[u8],
                padding: Padding,
            ) -> Result<Vec<u8>, CryptoError> {
                $cbc_e(self.as_bytes(), iv, data, padding)
            }
            #[doc = concat!("CBC-decrypt with this key (see [`", stringify!($cbc_d), "`]).")]
            pub fn cbc_decrypt(
                &self,
                iv: &[u8],
                data: &[u8],
                padding: Padding,
            ) -> Result<Vec<u8>, CryptoError> {
                $cbc_d(self.as_bytes(), iv, data, padding)
            }
        }
    };
}

mode_fns!(
    AesKey,
    aes,
    aes_ecb_encrypt,
    aes_ecb_decrypt,
    aes_cbc_encrypt,
    aes_cbc_decrypt,
    "AES-128/192/256 (key 16/24/32 bytes)"
);
mode_fns!(
    DesKey,
    des,
    des_ecb_encrypt,
    des_ecb_decrypt,
    des_cbc_encrypt,
    des_cbc_decrypt,
    "Single DES (key 8 bytes)"
);
mode_fns!(
    TdesKey,
    tdes,
    tdes_ecb_encrypt,
    tdes_ecb_decrypt,
    tdes_cbc_encrypt,
    tdes_cbc_decrypt,
    "3DES EDE (key 16 or 24 bytes)"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_key_lengths() {
        for len in [0usize, 8, 15, 17, 33] {
            assert!(matches!(
                aes_ecb_encrypt(&vec![0; len], &[0; 16], Padding::None),
                Err(CryptoError::InvalidKeyLength { alg: "AES", .. })
            ));
        }
        assert!(matches!(
            des_ecb_encrypt(&[0; 16], &[0; 8], Padding::None),
            Err(CryptoError::InvalidKeyLength { alg: "DES", .. })
        ));
        assert!(matches!(
            tdes_cbc_encrypt(&[0; 8], &[0; 8], &[0; 8], Padding::None),
            Err(CryptoError::InvalidKeyLength { alg: "3DES", .. })
        ));
        assert!(AesKey::new(&[0; 20]).is_err());
        assert!(TdesKey::new(&[0; 32]).is_err());
        assert!(DesKey::new(&[0; 7]).is_err());
    }

    #[test]
    fn wrong_iv_and_data_lengths() {
        assert!(matches!(
            aes_cbc_encrypt(&[0; 16], &[0; 8], &[0; 16], Padding::None),
            Err(CryptoError::InvalidIvLength {
                got: 8,
                expected: 16
            })
        ));
        assert!(matches!(
            aes_cbc_decrypt(&[0; 16], &[0; 16], &[0; 17], Padding::None),
            Err(CryptoError::InvalidDataLength { .. })
        ));
        assert!(matches!(
            tdes_ecb_encrypt(&[1; 16], &[0; 9], Padding::None),
            Err(CryptoError::InvalidDataLength { len: 9, block: 8 })
        ));
    }

    #[test]
    fn roundtrips_with_padding() {
        let key = [7u8; 32];
        let iv = [9u8; 16];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let ct = aes_cbc_encrypt(&key, &iv, &data, Padding::Iso9797M2).unwrap();
            assert_eq!(ct.len() % 16, 0);
            assert_eq!(
                aes_cbc_decrypt(&key, &iv, &ct, Padding::Iso9797M2).unwrap(),
                data
            );
            let ct = tdes_ecb_encrypt(&[3u8; 24], &data, Padding::Iso9797M2).unwrap();
            assert_eq!(
                tdes_ecb_decrypt(&[3u8; 24], &ct, Padding::Iso9797M2).unwrap(),
                data
            );
        }
    }

    #[test]
    fn tdes_with_equal_keys_is_des() {
        let k = [0x13u8, 0x34, 0x57, 0x79, 0x9B, 0xBC, 0xDF, 0xF1];
        let k2 = [k, k].concat();
        let d = [0x55u8; 16];
        assert_eq!(
            tdes_ecb_encrypt(&k2, &d, Padding::None).unwrap(),
            des_ecb_encrypt(&k, &d, Padding::None).unwrap()
        );
    }

    #[test]
    fn bad_padding_on_decrypt_is_error() {
        let key = [1u8; 16];
        let ct = aes_ecb_encrypt(&key, &[0u8; 16], Padding::None).unwrap();
        assert_eq!(
            aes_ecb_decrypt(&key, &ct, Padding::Iso9797M2),
            Err(CryptoError::InvalidPadding)
        );
    }
}
