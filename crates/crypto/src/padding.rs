//! Block padding: ISO/IEC 9797-1 methods 1 and 2, or none (length checked).

use crate::CryptoError;

/// Padding applied before encryption / MAC computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Padding {
    /// No padding: the data length must already be a multiple of the block
    /// size, otherwise [`CryptoError::InvalidDataLength`].
    None,
    /// ISO/IEC 9797-1 padding method 1: append `0x00` bytes until the length
    /// is a positive multiple of the block size (empty input becomes one
    /// zero block). Not reversible: [`unpad`] returns the data unchanged.
    Iso9797M1,
    /// ISO/IEC 9797-1 padding method 2: append `0x80` then `0x00` bytes up
    /// to the next multiple of the block size (always adds 1..=block bytes).
    Iso9797M2,
}

fn check_block(block: usize) -> Result<(), CryptoError> {
    if block == 0 || block > 255 {
        return Err(CryptoError::InvalidInput("block size must be 1..=255"));
    }
    Ok(())
}

/// Pad `data` to a multiple of `block` bytes with the given method.
pub fn pad(data: &[u8], block: usize, padding: Padding) -> Result<Vec<u8>, CryptoError> {
    check_block(block)?;
    let mut out = data.to_vec();
    match padding {
        Padding::None => {
            if !data.len().is_multiple_of(block) {
                return Err(CryptoError::InvalidDataLength {
                    len: data.len(),
                    block,
                });
            }
        }
        Padding::Iso9797M1 => {
            if out.is_empty() {
                out.resize(block, 0);
            } else {
                let rem = out.len() % block;
                if rem != 0 {
                    out.resize(out.len() + block - rem, 0);
                }
            }
        }
        Padding::Iso9797M2 => {
            out.push(0x80);
            let rem = out.len() % block;
            if rem != 0 {
                out.resize(out.len() + block - rem, 0);
            }
        }
    }
    Ok(out)
}

/// Remove padding from `data` (whose length must be a multiple of `block`).
///
/// Method 2 is checked over the whole last block without data-dependent
/// early exits: a missing `0x80` marker or a non-zero byte after it gives
/// [`CryptoError::InvalidPadding`]. Method 1 and `None` only check the length.
pub fn unpad(data: &[u8], block: usize, padding: Padding) -> Result<Vec<u8>, CryptoError> {
    check_block(block)?;
    if !data.len().is_multiple_of(block) {
        return Err(CryptoError::InvalidDataLength {
            len: data.len(),
            block,
        });
    }
    match padding {
        Padding::None | Padding::Iso9797M1 => Ok(data.to_vec()),
        Padding::Iso9797M2 => {
            if data.is_empty() {
                return Err(CryptoError::InvalidPadding);
            }
            let start = data.len() - block;
            let last = data.get(start..).ok_or(CryptoError::InvalidPadding)?;
            // Scan the last block from the end: `in_zeros` stays 1 while only
            // 0x00 were seen; the first non-zero byte must be 0x80.
            let mut in_zeros: u8 = 1;
            let mut found: u8 = 0;
            let mut pos: usize = 0;
            let mut bad: u8 = 0;
            for (i, &b) in last.iter().enumerate().rev() {
                let is_zero = u8::from(b == 0);
                let is_marker = u8::from(b == 0x80);
                let here = in_zeros & (1 - is_zero);
                // first non-zero byte from the right: must be the marker
                bad |= here & (1 - is_marker);
                found |= here;
                if here == 1 {
                    pos = i;
                }
                in_zeros &= is_zero;
            }
            if (bad | (1 - found)) != 0 {
                return Err(CryptoError::InvalidPadding);
            }
            Ok(data.get(..start + pos).unwrap_or_default().to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m2_adds_full_block_when_aligned() {
        let p = pad(&[1u8; 8], 8, Padding::Iso9797M2).unwrap();
        assert_eq!(p.len(), 16);
        assert_eq!(&p[8..], &[0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(unpad(&p, 8, Padding::Iso9797M2).unwrap(), vec![1u8; 8]);
    }

    #[test]
    fn m2_empty_and_short() {
        let p = pad(&[], 16, Padding::Iso9797M2).unwrap();
        assert_eq!(p.len(), 16);
        assert_eq!(p[0], 0x80);
        assert_eq!(unpad(&p, 16, Padding::Iso9797M2).unwrap(), Vec::<u8>::new());
        let p = pad(&[0xAA; 7], 8, Padding::Iso9797M2).unwrap();
        assert_eq!(p, vec![0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0x80]);
        assert_eq!(unpad(&p, 8, Padding::Iso9797M2).unwrap(), vec![0xAA; 7]);
    }

    #[test]
    fn m2_data_ending_in_80_roundtrips() {
        let d = [0x80u8, 0x00, 0x80];
        let p = pad(&d, 8, Padding::Iso9797M2).unwrap();
        assert_eq!(unpad(&p, 8, Padding::Iso9797M2).unwrap(), d.to_vec());
    }

    #[test]
    fn m2_rejects_bad() {
        assert_eq!(
            unpad(&[0u8; 8], 8, Padding::Iso9797M2),
            Err(CryptoError::InvalidPadding)
        );
        assert_eq!(
            unpad(&[1, 2, 3, 4, 5, 6, 0x80, 1], 8, Padding::Iso9797M2),
            Err(CryptoError::InvalidPadding)
        );
        assert_eq!(
            unpad(&[1, 2, 3, 4, 5, 6, 7, 0x81], 8, Padding::Iso9797M2),
            Err(CryptoError::InvalidPadding)
        );
        assert_eq!(
            unpad(&[], 8, Padding::Iso9797M2),
            Err(CryptoError::InvalidPadding)
        );
        assert!(matches!(
            unpad(&[0x80; 7], 8, Padding::Iso9797M2),
            Err(CryptoError::InvalidDataLength { .. })
        ));
    }

    #[test]
    fn m1_behaviour() {
        assert_eq!(pad(&[], 8, Padding::Iso9797M1).unwrap(), vec![0u8; 8]);
        assert_eq!(pad(&[1; 8], 8, Padding::Iso9797M1).unwrap(), vec![1u8; 8]);
        assert_eq!(
            pad(&[1; 9], 8, Padding::Iso9797M1).unwrap(),
            [vec![1u8; 9], vec![0u8; 7]].concat()
        );
        assert_eq!(
            unpad(&[1u8; 8], 8, Padding::Iso9797M1).unwrap(),
            vec![1u8; 8]
        );
    }

    #[test]
    fn none_length_check() {
        assert!(pad(&[0; 16], 16, Padding::None).is_ok());
        assert!(pad(&[], 16, Padding::None).unwrap().is_empty());
        assert!(matches!(
            pad(&[0; 15], 16, Padding::None),
            Err(CryptoError::InvalidDataLength { len: 15, block: 16 })
        ));
    }

    #[test]
    fn bad_block_size() {
        assert!(pad(&[1], 0, Padding::Iso9797M2).is_err());
        assert!(unpad(&[1], 0, Padding::Iso9797M2).is_err());
    }
}
