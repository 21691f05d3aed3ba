//! The 8-byte AES-CMAC used by every purse and SAM message, and its constant-time check.

use crate::keyblob::Key16;
use crate::wire::{MAC_LEN, Mac, PurseId, div_input};
use tessera_crypto::CryptoError;
use tessera_crypto::cmac::{aes_cmac, aes_cmac_verify};
use tessera_crypto::kdf::an10922_aes128;
use zeroize::Zeroizing;

/// AES-CMAC of `data` under `key`, truncated to its leftmost 8 bytes.
pub fn mac8(key: &[u8; 16], data: &[u8]) -> Result<Mac, CryptoError> {
    let full = aes_cmac(key, data)?;
    let mut m = [0u8; MAC_LEN];
    m.copy_from_slice(
        full.get(..MAC_LEN)
            .ok_or(CryptoError::InvalidInput("CMAC length"))?,
    );
    Ok(m)
}

/// Constant-time check of an 8-byte AES-CMAC.
pub fn verify8(key: &[u8; 16], data: &[u8], mac: &Mac) -> Result<bool, CryptoError> {
    aes_cmac_verify(key, data, mac)
}

/// A purse's card key: `AN10922(master, purse_id || usage)`.
pub fn card_key(master: &[u8; 16], purse_id: &PurseId, usage: u8) -> Result<Key16, CryptoError> {
    Ok(Zeroizing::new(an10922_aes128(
        master,
        &div_input(purse_id, usage),
    )?))
}
