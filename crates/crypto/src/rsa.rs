//! RSA 2048/3072 (other sizes 1024..=4096 for verification and import):
//! PKCS#1 v1.5 and PSS signatures with SHA-256, OAEP (SHA-256, MGF1-SHA-256)
//! encryption, key generation and PKCS#8 / SPKI DER import and export.
//!
//! Private-key operations use RSA blinding (OS entropy). See
//! docs/dependencies.md for RUSTSEC-2023-0071 (Marvin) and why it is
//! acceptable in this emulator.

use ::rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ::rsa::traits::PublicKeyParts;
use ::rsa::{BoxedUint, Oaep, Pkcs1v15Sign, Pss};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::rng::CardRng;

/// Key sizes accepted by [`RsaPrivateKey::generate`].
pub const GENERATE_BITS: [usize; 2] = [2048, 3072];
/// Smallest modulus accepted on import / verification.
pub const MIN_BITS: usize = 1024;
/// Largest modulus accepted on import / verification.
pub const MAX_BITS: usize = 4096;
/// PSS salt length used when signing (= SHA-256 output length).
pub const PSS_SALT_LEN: usize = 32;

/// An RSA private key (the inner key material is zeroized on drop).
#[derive(Clone)]
pub struct RsaPrivateKey(::rsa::RsaPrivateKey);

/// An RSA public key.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaPublicKey(::rsa::RsaPublicKey);

impl core::fmt::Debug for RsaPrivateKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "RsaPrivateKey({} bits, redacted)", self.bits())
    }
}

impl core::fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "RsaPublicKey({} bits)", self.bits())
    }
}

fn uint(bytes: &[u8]) -> BoxedUint {
    BoxedUint::from_be_slice_vartime(bytes)
}

fn check_bits(bits: usize) -> Result<(), CryptoError> {
    if !(MIN_BITS..=MAX_BITS).contains(&bits) {
        return Err(CryptoError::Rsa(format!(
            "modulus of {bits} bits outside {MIN_BITS}..={MAX_BITS}"
        )));
    }
    Ok(())
}

fn sha256(msg: &[u8]) -> Vec<u8> {
    Sha256::digest(msg).to_vec()
}

impl RsaPrivateKey {
    /// Generate a fresh key of 2048 or 3072 bits (e = 65537).
    pub fn generate(bits: usize, rng: &mut CardRng) -> Result<Self, CryptoError> {
        if !GENERATE_BITS.contains(&bits) {
            return Err(CryptoError::InvalidInput(
                "RSA key generation supports 2048 or 3072 bits",
            ));
        }
        Ok(Self(::rsa::RsaPrivateKey::new(rng, bits)?))
    }

    /// Build a key from big-endian components (n, e, d, p, q); validated.
    pub fn from_components(
        n: &[u8],
        e: &[u8],
        d: &[u8],
        p: &[u8],
        q: &[u8],
    ) -> Result<Self, CryptoError> {
        let k = ::rsa::RsaPrivateKey::from_components(
            uint(n),
            uint(e),
            uint(d),
            vec![uint(p), uint(q)],
        )?;
        check_bits(k.n().bits_vartime() as usize)?;
        Ok(Self(k))
    }

    /// Decode an unencrypted PKCS#8 `PrivateKeyInfo` (DER).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CryptoError> {
        let k = ::rsa::RsaPrivateKey::from_pkcs8_der(der)?;
        check_bits(k.n().bits_vartime() as usize)?;
        Ok(Self(k))
    }

    /// Encode as unencrypted PKCS#8 DER (zeroized on drop).
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let doc = self.0.to_pkcs8_der()?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// The public half.
    pub fn public_key(&self) -> RsaPublicKey {
        RsaPublicKey(self.0.to_public_key())
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.0.n().bits_vartime() as usize
    }

    /// Signature / ciphertext size in bytes.
    pub fn size(&self) -> usize {
        self.0.size()
    }

    /// RSASSA-PKCS1-v1_5 signature over SHA-256(`msg`).
    pub fn sign_pkcs1v15_sha256(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        Ok(self.0.sign(Pkcs1v15Sign::new::<Sha256>(), &sha256(msg))?)
    }

    /// RSASSA-PSS signature over SHA-256(`msg`), MGF1-SHA-256, 32-byte salt
    /// drawn from `rng`.
    pub fn sign_pss_sha256(&self, msg: &[u8], rng: &mut CardRng) -> Result<Vec<u8>, CryptoError> {
        Ok(self.0.sign_with_rng(
            rng,
            Pss::<Sha256>::new_with_salt(PSS_SALT_LEN),
            &sha256(msg),
        )?)
    }

    /// RSAES-OAEP decryption, SHA-256 and MGF1-SHA-256, empty label.
    pub fn decrypt_oaep_sha256(
        &self,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.decrypt_oaep_sha256_label(ciphertext, &[])
    }

    /// RSAES-OAEP decryption with an explicit label.
    pub fn decrypt_oaep_sha256_label(
        &self,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if ciphertext.len() != self.size() {
            return Err(CryptoError::Rsa(
                "ciphertext length differs from modulus length".into(),
            ));
        }
        let padding = if label.is_empty() {
            Oaep::<Sha256>::new()
        } else {
            Oaep::<Sha256>::new_with_label(label.to_vec())
        };
        Ok(Zeroizing::new(self.0.decrypt(padding, ciphertext)?))
    }
}

impl RsaPublicKey {
    /// Build a public key from big-endian modulus and exponent.
    pub fn from_components(n: &[u8], e: &[u8]) -> Result<Self, CryptoError> {
        let k = ::rsa::RsaPublicKey::new_with_size_limits(uint(n), uint(e), MIN_BITS..=MAX_BITS)?;
        Ok(Self(k))
    }

    /// Decode a `SubjectPublicKeyInfo` (DER).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        let k = ::rsa::RsaPublicKey::from_public_key_der(der)?;
        check_bits(k.n().bits_vartime() as usize)?;
        Ok(Self(k))
    }

    /// Encode as `SubjectPublicKeyInfo` DER.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, CryptoError> {
        Ok(self.0.to_public_key_der()?.as_bytes().to_vec())
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.0.n().bits_vartime() as usize
    }

    /// Modulus length in bytes.
    pub fn size(&self) -> usize {
        self.0.size()
    }

    /// Verify an RSASSA-PKCS1-v1_5 SHA-256 signature.
    pub fn verify_pkcs1v15_sha256(&self, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        self.verify_pkcs1v15_sha256_prehashed(&sha256(msg), sig)
    }

    /// Verify an RSASSA-PKCS1-v1_5 signature over a given SHA-256 digest.
    pub fn verify_pkcs1v15_sha256_prehashed(
        &self,
        digest: &[u8],
        sig: &[u8],
    ) -> Result<(), CryptoError> {
        if digest.len() != 32 {
            return Err(CryptoError::InvalidInput("SHA-256 digest must be 32 bytes"));
        }
        self.0
            .verify(Pkcs1v15Sign::new::<Sha256>(), digest, sig)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Verify an RSASSA-PSS SHA-256 signature (MGF1-SHA-256) with the
    /// 32-byte salt this crate signs with.
    pub fn verify_pss_sha256(&self, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        self.verify_pss_sha256_salt(msg, sig, Some(PSS_SALT_LEN))
    }

    /// Verify an RSASSA-PSS SHA-256 signature with a given salt length
    /// (`None`: recover the salt length from the encoding).
    pub fn verify_pss_sha256_salt(
        &self,
        msg: &[u8],
        sig: &[u8],
        salt_len: Option<usize>,
    ) -> Result<(), CryptoError> {
        let scheme = Pss::<Sha256> {
            blinded: false,
            digest: Sha256::new(),
            salt_len,
        };
        self.0
            .verify(scheme, &sha256(msg), sig)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// RSAES-OAEP encryption, SHA-256 and MGF1-SHA-256, empty label.
    pub fn encrypt_oaep_sha256(
        &self,
        msg: &[u8],
        rng: &mut CardRng,
    ) -> Result<Vec<u8>, CryptoError> {
        Ok(self.0.encrypt(rng, Oaep::<Sha256>::new(), msg)?)
    }
}

impl RsaPrivateKey {
    pub(crate) fn inner(&self) -> &::rsa::RsaPrivateKey {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn key() -> &'static RsaPrivateKey {
        static K: OnceLock<RsaPrivateKey> = OnceLock::new();
        K.get_or_init(|| RsaPrivateKey::generate(2048, &mut CardRng::from_seed([1; 32])).unwrap())
    }

    #[test]
    fn sign_verify_roundtrip() {
        let k = key();
        let p = k.public_key();
        let s = k.sign_pkcs1v15_sha256(b"card").unwrap();
        assert_eq!(s.len(), 256);
        p.verify_pkcs1v15_sha256(b"card", &s).unwrap();
        assert_eq!(
            p.verify_pkcs1v15_sha256(b"cart", &s),
            Err(CryptoError::BadSignature)
        );
        let mut rng = CardRng::from_seed([2; 32]);
        let s = k.sign_pss_sha256(b"card", &mut rng).unwrap();
        p.verify_pss_sha256(b"card", &s).unwrap();
        p.verify_pss_sha256_salt(b"card", &s, None).unwrap();
        assert!(p.verify_pss_sha256(b"card", &s[1..]).is_err());
        assert!(p.verify_pss_sha256(b"card", &[]).is_err());
    }

    #[test]
    fn oaep_roundtrip_and_errors() {
        let k = key();
        let mut rng = CardRng::from_seed([3; 32]);
        let c = k
            .public_key()
            .encrypt_oaep_sha256(b"session key", &mut rng)
            .unwrap();
        assert_eq!(&k.decrypt_oaep_sha256(&c).unwrap()[..], b"session key");
        let mut bad = c.clone();
        bad[10] ^= 1;
        assert!(k.decrypt_oaep_sha256(&bad).is_err());
        assert!(k.decrypt_oaep_sha256(&c[1..]).is_err());
        assert!(
            k.public_key()
                .encrypt_oaep_sha256(&[0; 200], &mut rng)
                .is_err()
        );
    }

    #[test]
    fn der_roundtrip_and_garbage() {
        let k = key();
        let der = k.to_pkcs8_der().unwrap();
        let k2 = RsaPrivateKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        let spki = k.public_key().to_spki_der().unwrap();
        assert_eq!(RsaPublicKey::from_spki_der(&spki).unwrap(), k.public_key());
        assert!(RsaPrivateKey::from_pkcs8_der(&der[..der.len() - 1]).is_err());
        assert!(RsaPrivateKey::from_pkcs8_der(&[0x30, 0x82, 0xFF]).is_err());
        assert!(RsaPublicKey::from_spki_der(&[]).is_err());
        assert!(RsaPublicKey::from_spki_der(&spki[..20]).is_err());
    }

    #[test]
    fn generate_rejects_odd_sizes() {
        assert!(RsaPrivateKey::generate(1024, &mut CardRng::from_seed([0; 32])).is_err());
        assert!(RsaPublicKey::from_components(&[0xFF; 64], &[1, 0, 1]).is_err());
    }
}
