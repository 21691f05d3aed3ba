//! Key derivation: NIST SP 800-108 counter mode with CMAC as PRF (general
//! form and the GlobalPlatform SCP03 layout) and NXP AN10922 key
//! diversification.

use zeroize::Zeroizing;

use crate::CryptoError;
use crate::cipher::Engine;

/// Where the counter `[i]_r` sits relative to the fixed input data in
/// SP 800-108 counter mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterLocation {
    /// `[i]_r || FixedInputData` (CAVP "BEFORE_FIXED").
    BeforeFixed,
    /// `FixedInputData || [i]_r` (CAVP "AFTER_FIXED").
    AfterFixed,
    /// Counter inserted at this byte offset of the fixed input data
    /// (CAVP "MIDDLE_FIXED"; SCP03 uses offset 15).
    Middle(usize),
}

/// PRF for SP 800-108: CMAC with the block cipher given by the key length
/// class. AES-CMAC is what SCP03 and the CAVP vectors here use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmacPrf {
    /// AES-CMAC, key 16/24/32 bytes, h = 128.
    Aes,
    /// 3DES-CMAC, key 16/24 bytes, h = 64.
    Tdes,
}

/// NIST SP 800-108 KDF in counter mode with CMAC as PRF.
///
/// `r_bits` is the counter width (8, 16, 24 or 32), `out_bits` the length L
/// of derived keying material in bits (must be a positive multiple of 8).
/// The fixed input data is taken as given (the caller encodes label,
/// separator, context and L as its protocol requires).
pub fn sp800_108_counter_cmac(
    prf: CmacPrf,
    key: &[u8],
    fixed_input: &[u8],
    location: CounterLocation,
    r_bits: u8,
    out_bits: u32,
) -> Result<Vec<u8>, CryptoError> {
    if !matches!(r_bits, 8 | 16 | 24 | 32) {
        return Err(CryptoError::InvalidInput(
            "counter width must be 8, 16, 24 or 32 bits",
        ));
    }
    if out_bits == 0 || !out_bits.is_multiple_of(8) {
        return Err(CryptoError::InvalidInput(
            "output length must be a positive multiple of 8 bits",
        ));
    }
    let h_bytes: usize = match prf {
        CmacPrf::Aes => 16,
        CmacPrf::Tdes => 8,
    };
    let out_len = (out_bits / 8) as usize;
    let n = out_len.div_ceil(h_bytes);
    let max_n: u64 = (1u64 << r_bits) - 1;
    if n as u64 > max_n {
        return Err(CryptoError::InvalidInput(
            "output too long for the counter width",
        ));
    }
    let split = match location {
        CounterLocation::BeforeFixed => 0,
        CounterLocation::AfterFixed => fixed_input.len(),
        CounterLocation::Middle(off) => {
            if off > fixed_input.len() {
                return Err(CryptoError::InvalidInput(
                    "counter offset beyond fixed input",
                ));
            }
            off
        }
    };
    let (before, after) = fixed_input.split_at(split);
    let r_bytes = usize::from(r_bits / 8);
    let mut out = Vec::with_capacity(n * h_bytes);
    let mut msg = Zeroizing::new(Vec::with_capacity(fixed_input.len() + r_bytes));
    for i in 1..=n as u32 {
        msg.clear();
        msg.extend_from_slice(before);
        let ctr = i.to_be_bytes();
        msg.extend_from_slice(ctr.get(4 - r_bytes..).unwrap_or_default());
        msg.extend_from_slice(after);
        match prf {
            CmacPrf::Aes => out.extend_from_slice(&crate::cmac::aes_cmac(key, &msg)?),
            CmacPrf::Tdes => out.extend_from_slice(&crate::cmac::tdes_cmac(key, &msg)?),
        }
    }
    out.truncate(out_len);
    Ok(out)
}

/// SP 800-108 counter-mode AES-CMAC KDF with the GlobalPlatform SCP03 fixed
/// input layout (GPC Amendment D, "Data derivation scheme"):
///
/// `label (11 x 00 || derivation constant) || 00 || L (2 bytes, bits, BE) ||
/// i (1 byte) || context`
///
/// `label` is the derivation constant (e.g. 0x04 S-ENC, 0x06 S-MAC,
/// 0x07 S-RMAC, 0x00 card cryptogram, 0x01 host cryptogram, 0x02 card
/// challenge), `context` typically host challenge || card challenge.
pub fn sp800_108_cmac_scp03(
    key: &[u8],
    label: u8,
    context: &[u8],
    out_bits: u16,
) -> Result<Vec<u8>, CryptoError> {
    let mut fixed = Vec::with_capacity(15 + context.len());
    fixed.extend_from_slice(&[0u8; 11]);
    fixed.push(label);
    fixed.push(0x00);
    fixed.extend_from_slice(&out_bits.to_be_bytes());
    fixed.extend_from_slice(context);
    sp800_108_counter_cmac(
        CmacPrf::Aes,
        key,
        &fixed,
        CounterLocation::Middle(15),
        8,
        u32::from(out_bits),
    )
}

/// GF(2^n) doubling used for CMAC subkeys (n = 64 or 128).
fn dbl(block: &mut [u8]) {
    let rb: u8 = if block.len() == 16 { 0x87 } else { 0x1B };
    let msb = block.first().map(|b| b >> 7).unwrap_or(0);
    let mut carry = 0u8;
    for b in block.iter_mut().rev() {
        let next = *b >> 7;
        *b = (*b << 1) | carry;
        carry = next;
    }
    if let Some(last) = block.last_mut() {
        // constant-time conditional XOR
        *last ^= rb & 0u8.wrapping_sub(msb);
    }
}

/// CMAC as used by AN10922: the message `const || M` is padded (0x80 00..)
/// to exactly `pad_to` bytes, even when that means two blocks for a short
/// input, and the last block is masked with K2 if padding was added, K1
/// otherwise.
fn an10922_cmac(
    engine: &Engine,
    constant: u8,
    m: &[u8],
    pad_to: usize,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let bs = engine.block_size();
    let mut d = Zeroizing::new(Vec::with_capacity(pad_to));
    d.push(constant);
    d.extend_from_slice(m);
    if d.len() > pad_to {
        return Err(CryptoError::InvalidInput("diversification input too long"));
    }
    let padded = d.len() < pad_to;
    if padded {
        d.push(0x80);
        d.resize(pad_to, 0);
    }
    let mut k = Zeroizing::new(vec![0u8; bs]);
    engine.encrypt_block(&mut k);
    dbl(&mut k);
    if padded {
        dbl(&mut k);
    }
    let last_start = pad_to - bs;
    if let Some(last) = d.get_mut(last_start..) {
        for (a, b) in last.iter_mut().zip(k.iter()) {
            *a ^= *b;
        }
    }
    let mut chain = Zeroizing::new(vec![0u8; bs]);
    for chunk in d.chunks_exact(bs) {
        for (c, x) in chain.iter_mut().zip(chunk) {
            *c ^= *x;
        }
        engine.encrypt_block(&mut chain);
    }
    Ok(chain)
}

fn check_div_input(m: &[u8], max: usize) -> Result<(), CryptoError> {
    if m.is_empty() || m.len() > max {
        return Err(CryptoError::InvalidInput(
            "diversification input length out of range",
        ));
    }
    Ok(())
}

/// NXP AN10922 AES-128 key diversification: `CMAC(K, 0x01 || M || pad)`
/// over 32 bytes. `div_input` M (e.g. UID || AID || system identifier) must
/// be 1..=31 bytes.
pub fn an10922_aes128(master: &[u8; 16], div_input: &[u8]) -> Result<[u8; 16], CryptoError> {
    check_div_input(div_input, 31)?;
    let engine = Engine::aes(master)?;
    let out = an10922_cmac(&engine, 0x01, div_input, 32)?;
    let mut key = [0u8; 16];
    key.copy_from_slice(&out);
    Ok(key)
}

/// DESFire keeps the version of a DES / 3DES key in the least significant
/// (parity) bit of each of its first 8 bytes, most significant version bit
/// first. AN10922 TDEA diversification carries the master key's version over
/// to the diversified key: the LSBs of bytes 0..8 of the CMAC output are
/// replaced by those of the master key; every other bit (including the
/// parity bits of the later key parts) is the CMAC output as is.
fn restore_des_version(key: &mut [u8], master: &[u8]) {
    for (k, m) in key.iter_mut().zip(master).take(8) {
        *k = (*k & 0xFE) | (*m & 0x01);
    }
}

/// NXP AN10922 2TDEA diversification: `CMAC(K, 0x21 || M) || CMAC(K, 0x22 ||
/// M)` (3DES-CMAC, each input padded to 16 bytes), then the master key's
/// version bits restored (LSBs of bytes 0..8, see `restore_des_version`);
/// `div_input` 1..=15 bytes.
///
/// Checked against the published AN10922 2TDEA example (test-vectors
/// `data/an10922/an10922-2tdea.txt`, docs/crypto.md).
pub fn an10922_2tdea(master: &[u8; 16], div_input: &[u8]) -> Result<[u8; 16], CryptoError> {
    check_div_input(div_input, 15)?;
    let engine = Engine::tdes(master)?;
    let a = an10922_cmac(&engine, 0x21, div_input, 16)?;
    let b = an10922_cmac(&engine, 0x22, div_input, 16)?;
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&a);
    key[8..].copy_from_slice(&b);
    restore_des_version(&mut key, master);
    Ok(key)
}

/// NXP AN10922 3TDEA diversification: constants 0x31, 0x32, 0x33 (3-key
/// 3DES-CMAC, each input padded to 16 bytes), then the master key's version
/// bits restored as in [`an10922_2tdea`]; `div_input` 1..=15 bytes.
///
/// Checked against the published AN10922 3TDEA example (test-vectors
/// `data/an10922/an10922-3tdea.txt`).
pub fn an10922_3tdea(master: &[u8; 24], div_input: &[u8]) -> Result<[u8; 24], CryptoError> {
    check_div_input(div_input, 15)?;
    let engine = Engine::tdes(master)?;
    let mut key = [0u8; 24];
    for (chunk, c) in key.chunks_exact_mut(8).zip([0x31u8, 0x32, 0x33]) {
        let part = an10922_cmac(&engine, c, div_input, 16)?;
        chunk.copy_from_slice(&part);
    }
    restore_des_version(&mut key, master);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// NXP AN10922 rev 1.2, section 2.2.1 "AES-128 key diversification
    /// example".
    #[test]
    fn an10922_published_example() {
        let master: [u8; 16] = h("00112233445566778899AABBCCDDEEFF").try_into().unwrap();
        let m = h("04782E21801D803042F54E585020416275");
        let k = an10922_aes128(&master, &m).unwrap();
        assert_eq!(k.to_vec(), h("A8DD63A3B89D54B37CA802473FDA9175"));
    }

    /// Full 31-byte input: no padding, K1 mask; equals plain AES-CMAC of
    /// the 32-byte message.
    #[test]
    fn an10922_unpadded_matches_cmac() {
        let master = [0x42u8; 16];
        let m = [0x5Au8; 31];
        let mut d = vec![0x01];
        d.extend_from_slice(&m);
        assert_eq!(
            an10922_aes128(&master, &m).unwrap(),
            crate::cmac::aes_cmac(&master, &d).unwrap()
        );
        // 17..=31 byte messages also coincide with standard CMAC
        let m = [0x33u8; 20];
        let mut d = vec![0x01];
        d.extend_from_slice(&m);
        assert_eq!(
            an10922_aes128(&master, &m).unwrap(),
            crate::cmac::aes_cmac(&master, &d).unwrap()
        );
    }

    /// Published AN10922 2TDEA example (as quoted verbatim by
    /// hst125fan/nxp-key-diversification and mittelab/libspookyaction; see
    /// test-vectors/README.md): M = UID || AID || "NXP A".
    #[test]
    fn an10922_2tdea_published_example() {
        let master: [u8; 16] = h("00112233445566778899AABBCCDDEEFF").try_into().unwrap();
        let m = h("04782E21801D803042F54E58502041");
        let k = an10922_2tdea(&master, &m).unwrap();
        assert_eq!(k.to_vec(), h("16F9587D9E8910C96B9648D006107DD7"));
    }

    /// Published AN10922 3TDEA example (libfreefare, hst125fan and
    /// libspookyaction quote the same value): M = UID || AID || "NXP".
    #[test]
    fn an10922_3tdea_published_example() {
        let master: [u8; 24] = h("00112233445566778899AABBCCDDEEFF0102030405060708")
            .try_into()
            .unwrap();
        let m = h("04782E21801D803042F54E5850");
        let k = an10922_3tdea(&master, &m).unwrap();
        assert_eq!(
            k.to_vec(),
            h("2E0DD03774D3FA9B5705AB0BDA91CA0B55B8E07FCDBF10EC")
        );
    }

    /// DES ignores the parity bits, so changing only the master key's version
    /// bits (LSBs of bytes 0..8, 0x55 in the published examples) leaves the
    /// CMACs unchanged and must change exactly the LSBs of bytes 0..8 of the
    /// diversified key.
    #[test]
    fn an10922_tdea_version_bits_follow_master() {
        let flip_version = |v: &mut [u8]| {
            for b in v.iter_mut().take(8) {
                *b ^= 0x01;
            }
        };
        let mut master: [u8; 16] = h("00112233445566778899AABBCCDDEEFF").try_into().unwrap();
        flip_version(&mut master); // version 0xAA
        let mut want = h("16F9587D9E8910C96B9648D006107DD7");
        flip_version(&mut want);
        let k = an10922_2tdea(&master, &h("04782E21801D803042F54E58502041")).unwrap();
        assert_eq!(k.to_vec(), want);

        let mut master: [u8; 24] = h("00112233445566778899AABBCCDDEEFF0102030405060708")
            .try_into()
            .unwrap();
        flip_version(&mut master);
        let mut want = h("2E0DD03774D3FA9B5705AB0BDA91CA0B55B8E07FCDBF10EC");
        flip_version(&mut want);
        let k = an10922_3tdea(&master, &h("04782E21801D803042F54E5850")).unwrap();
        assert_eq!(k.to_vec(), want);
    }

    /// With a 15-byte M, `const || M` is exactly one 16-byte two-block input:
    /// each part is plain 3DES-CMAC (SP 800-38B), apart from the version bits
    /// of the first part, which come from the master key.
    #[test]
    fn an10922_tdea_matches_cmac_for_full_block() {
        let with_version = |mac: [u8; 8], master: &[u8]| -> Vec<u8> {
            mac.iter()
                .zip(master)
                .map(|(c, m)| (c & 0xFE) | (m & 0x01))
                .collect()
        };
        let cmac = |key: &[u8], c: u8, m: &[u8]| {
            let mut d = vec![c];
            d.extend_from_slice(m);
            crate::cmac::tdes_cmac(key, &d).unwrap()
        };
        let m = [0x11u8; 15];

        let master: [u8; 16] = h("0123456789ABCDEFFEDCBA9876543210").try_into().unwrap();
        let k = an10922_2tdea(&master, &m).unwrap();
        assert_eq!(k[..8], with_version(cmac(&master, 0x21, &m), &master)[..]);
        assert_eq!(k[8..], cmac(&master, 0x22, &m));

        let master: [u8; 24] = h("0123456789ABCDEF23456789ABCDEF01456789ABCDEF0123")
            .try_into()
            .unwrap();
        let k = an10922_3tdea(&master, &m).unwrap();
        assert_eq!(k[..8], with_version(cmac(&master, 0x31, &m), &master)[..]);
        assert_eq!(k[8..16], cmac(&master, 0x32, &m));
        assert_eq!(k[16..], cmac(&master, 0x33, &m));
    }

    #[test]
    fn an10922_bounds() {
        assert!(an10922_aes128(&[0; 16], &[]).is_err());
        assert!(an10922_aes128(&[0; 16], &[0; 32]).is_err());
        assert!(an10922_aes128(&[0; 16], &[0; 31]).is_ok());
        assert!(an10922_2tdea(&[0; 16], &[0; 16]).is_err());
        assert!(an10922_3tdea(&[0; 24], &[]).is_err());
    }

    #[test]
    fn dbl_known_subkeys() {
        // RFC 4493 section 4: L = AES-128(K, 0) = 7df76b0c1ab899b33e42f047b91b546f,
        // K1 = fbeed618357133667c85e08f7236a8de, K2 = f7ddac306ae266ccf90bc11ee46d513b
        let mut l = h("7df76b0c1ab899b33e42f047b91b546f");
        dbl(&mut l);
        assert_eq!(l, h("fbeed618357133667c85e08f7236a8de"));
        dbl(&mut l);
        assert_eq!(l, h("f7ddac306ae266ccf90bc11ee46d513b"));
    }

    #[test]
    fn kdf_parameter_errors() {
        let k = [0u8; 16];
        assert!(
            sp800_108_counter_cmac(CmacPrf::Aes, &k, b"x", CounterLocation::BeforeFixed, 7, 128)
                .is_err()
        );
        assert!(
            sp800_108_counter_cmac(CmacPrf::Aes, &k, b"x", CounterLocation::BeforeFixed, 8, 0)
                .is_err()
        );
        assert!(
            sp800_108_counter_cmac(CmacPrf::Aes, &k, b"x", CounterLocation::BeforeFixed, 8, 12)
                .is_err()
        );
        assert!(
            sp800_108_counter_cmac(CmacPrf::Aes, &k, b"x", CounterLocation::Middle(2), 8, 128)
                .is_err()
        );
        // 256 blocks do not fit an 8-bit counter
        assert!(
            sp800_108_counter_cmac(
                CmacPrf::Aes,
                &k,
                b"x",
                CounterLocation::BeforeFixed,
                8,
                256 * 128
            )
            .is_err()
        );
        assert!(sp800_108_cmac_scp03(&[0; 15], 4, b"", 128).is_err());
        assert_eq!(
            sp800_108_cmac_scp03(&k, 4, &[1; 16], 256).unwrap().len(),
            32
        );
        assert_eq!(sp800_108_cmac_scp03(&k, 0, &[1; 16], 64).unwrap().len(), 8);
    }
}
