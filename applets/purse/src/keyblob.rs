//! Key transport: seal and open [`KeyBlob`]s under a transport key `KT`.
//!
//! `KT_enc = AES-CMAC(KT, 01 || "TSRA-KT-ENC")`, `KT_mac = AES-CMAC(KT, 02 ||
//! "TSRA-KT-MAC")`; the keys are AES-128-CBC encrypted under `KT_enc` (IV zero, no
//! padding, 16 bytes each, in entry order); the MAC is AES-CMAC(KT_mac, `4B` ||
//! [`KeyBlob::mac_body`]) truncated to 8 bytes. The chip that generated `KT` checks the
//! MAC and that the blob carries the nonce it sent in its [`super::wire::KeyTransportRequest`].

use crate::wire::{
    KT_ENC_LABEL, KT_MAC_LABEL, KeyBlob, KeyEntry, KeyTransportRequest, MAC_LEN, Mac, tag,
};
use tessera_crypto::cipher::{aes_cbc_decrypt, aes_cbc_encrypt};
use tessera_crypto::cmac::{aes_cmac, aes_cmac_verify};
use tessera_crypto::padding::Padding;
use tessera_crypto::rng::CardRng;
use tessera_crypto::rsa::RsaPublicKey;
use zeroize::{Zeroize, Zeroizing};

/// An AES-128 key held in RAM, wiped on drop.
pub type Key16 = Zeroizing<[u8; 16]>;

/// Why a blob could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyBlobError {
    /// The MAC does not verify under the transport key.
    #[error("key blob MAC does not verify")]
    Mac,
    /// The blob carries another nonce than the one the chip sent.
    #[error("key blob nonce differs from the chip's")]
    Nonce,
    /// Entries and keys disagree in number, or the ciphertext has a wrong length.
    #[error("key blob is malformed")]
    Format,
    /// The cipher failed (not expected with valid lengths).
    #[error("key blob cipher failure")]
    Crypto,
}

struct TransportKeys {
    enc: Key16,
    mac: Key16,
}

fn transport_keys(kt: &[u8; 16]) -> Result<TransportKeys, KeyBlobError> {
    let enc = aes_cmac(kt, KT_ENC_LABEL).map_err(|_| KeyBlobError::Crypto)?;
    let mac = aes_cmac(kt, KT_MAC_LABEL).map_err(|_| KeyBlobError::Crypto)?;
    Ok(TransportKeys {
        enc: Zeroizing::new(enc),
        mac: Zeroizing::new(mac),
    })
}

fn mac_input(blob: &KeyBlob) -> Vec<u8> {
    let mut v = vec![tag::KEY_BLOB];
    v.extend_from_slice(&blob.mac_body());
    v
}

/// Wrap `keys` (one per entry, same order) under `kt` for the chip that sent `nonce`.
pub fn seal(
    kt: &[u8; 16],
    nonce: [u8; 8],
    entries: Vec<KeyEntry>,
    keys: &[Key16],
) -> Result<KeyBlob, KeyBlobError> {
    if entries.is_empty() || entries.len() > 16 || entries.len() != keys.len() {
        return Err(KeyBlobError::Format);
    }
    let tk = transport_keys(kt)?;
    let mut plain = Zeroizing::new(Vec::with_capacity(16 * keys.len()));
    for k in keys {
        plain.extend_from_slice(&k[..]);
    }
    let ciphertext = aes_cbc_encrypt(&tk.enc[..], &[0u8; 16], &plain, Padding::None)
        .map_err(|_| KeyBlobError::Crypto)?;
    let mut blob = KeyBlob {
        nonce,
        entries,
        ciphertext,
        mac: [0u8; MAC_LEN],
    };
    let full = aes_cmac(&tk.mac[..], &mac_input(&blob)).map_err(|_| KeyBlobError::Crypto)?;
    let mut mac: Mac = [0u8; MAC_LEN];
    mac.copy_from_slice(full.get(..MAC_LEN).ok_or(KeyBlobError::Crypto)?);
    blob.mac = mac;
    Ok(blob)
}

/// Check the blob's MAC (constant time) and nonce, then decrypt its keys (one per entry).
pub fn open(
    kt: &[u8; 16],
    expected_nonce: &[u8; 8],
    blob: &KeyBlob,
) -> Result<Vec<Key16>, KeyBlobError> {
    let tk = transport_keys(kt)?;
    let ok = aes_cmac_verify(&tk.mac[..], &mac_input(blob), &blob.mac)
        .map_err(|_| KeyBlobError::Crypto)?;
    if !ok {
        return Err(KeyBlobError::Mac);
    }
    if !tessera_crypto::ct_eq(&blob.nonce, expected_nonce) {
        return Err(KeyBlobError::Nonce);
    }
    if blob.ciphertext.len() != 16 * blob.entries.len() {
        return Err(KeyBlobError::Format);
    }
    let plain = Zeroizing::new(
        aes_cbc_decrypt(&tk.enc[..], &[0u8; 16], &blob.ciphertext, Padding::None)
            .map_err(|_| KeyBlobError::Crypto)?,
    );
    let mut out = Vec::with_capacity(blob.entries.len());
    for chunk in plain.chunks_exact(16) {
        let mut k = Zeroizing::new([0u8; 16]);
        k.copy_from_slice(chunk);
        out.push(k);
    }
    if out.len() != blob.entries.len() {
        return Err(KeyBlobError::Format);
    }
    Ok(out)
}

/// A chip's side of a key transport: the record it keeps (`KT || nonce`, 24 bytes) until
/// the blob comes back, and the OAEP-SHA256 ciphertext of its [`KeyTransportRequest`]
/// under the issuer SAM's personalisation key.
pub struct TransportRequest {
    pub record: Zeroizing<Vec<u8>>,
    pub ciphertext: Vec<u8>,
}

/// Build a key-transport request for `subject_id` with a fresh `kt` and `nonce`.
pub fn request(
    issuer_spki: &[u8],
    kt: Key16,
    nonce: [u8; 8],
    subject_id: &[u8],
    rng: &mut CardRng,
) -> Result<TransportRequest, KeyBlobError> {
    let issuer = RsaPublicKey::from_spki_der(issuer_spki).map_err(|_| KeyBlobError::Crypto)?;
    let mut req = KeyTransportRequest {
        transport_key: *kt,
        nonce,
        subject_id: subject_id.to_vec(),
    };
    let plain = Zeroizing::new(req.encode());
    req.transport_key.zeroize();
    let ciphertext = issuer
        .encrypt_oaep_sha256(&plain, rng)
        .map_err(|_| KeyBlobError::Crypto)?;
    let mut record = Zeroizing::new(Vec::with_capacity(24));
    record.extend_from_slice(&kt[..]);
    record.extend_from_slice(&nonce);
    Ok(TransportRequest { record, ciphertext })
}

/// Split a stored `KT || nonce` record.
pub fn parse_record(record: &[u8]) -> Option<(Key16, [u8; 8])> {
    let (kt, nonce) = record.split_first_chunk::<16>()?;
    let nonce: [u8; 8] = nonce.try_into().ok()?;
    Some((Zeroizing::new(*kt), nonce))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<KeyEntry> {
        vec![
            KeyEntry {
                usage: 1,
                number: 1,
                version: 1,
                master: false,
            },
            KeyEntry {
                usage: 2,
                number: 2,
                version: 1,
                master: false,
            },
        ]
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let kt = [7u8; 16];
        let keys = vec![Zeroizing::new([1u8; 16]), Zeroizing::new([2u8; 16])];
        let blob = seal(&kt, [9; 8], entries(), &keys).unwrap();
        let decoded = KeyBlob::decode(&blob.encode()).unwrap();
        let got = open(&kt, &[9; 8], &decoded).unwrap();
        assert_eq!(*got[0], [1u8; 16]);
        assert_eq!(*got[1], [2u8; 16]);
        assert!(matches!(
            open(&kt, &[8; 8], &decoded),
            Err(KeyBlobError::Nonce)
        ));
        assert!(matches!(
            open(&[6u8; 16], &[9; 8], &decoded),
            Err(KeyBlobError::Mac)
        ));
        let mut bad = decoded.clone();
        bad.ciphertext[0] ^= 1;
        assert!(matches!(open(&kt, &[9; 8], &bad), Err(KeyBlobError::Mac)));
        let mut bad = decoded;
        bad.entries[0].version = 2;
        assert!(matches!(open(&kt, &[9; 8], &bad), Err(KeyBlobError::Mac)));
        assert!(matches!(
            seal(&kt, [0; 8], entries(), &keys[..1]),
            Err(KeyBlobError::Format)
        ));
    }
}
