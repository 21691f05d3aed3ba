//! Cryptographically secure random numbers: OS entropy by default, or a
//! seeded ChaCha20 stream for reproducible tests and simulations.

use core::convert::Infallible;

use rand::rngs::{ChaCha20Rng, SysRng};
use rand::{SeedableRng, TryCryptoRng, TryRng};

/// CSPRNG handle used by every randomized operation of this crate
/// (RSA key generation, PSS salts, OAEP seeds, serial numbers).
///
/// It implements `rand_core`'s `CryptoRng` so it can be handed to RustCrypto
/// APIs directly.
pub struct CardRng {
    inner: ChaCha20Rng,
    seeded: bool,
}

impl CardRng {
    /// ChaCha20 keyed from the operating system's entropy source.
    ///
    /// # Panics
    /// Only if the OS entropy source itself fails (not reachable from
    /// caller input); use [`CardRng::try_from_entropy`] to handle that.
    #[allow(
        clippy::panic,
        reason = "OS entropy failure is not caller input; see try_from_entropy"
    )]
    pub fn from_entropy() -> Self {
        match Self::try_from_entropy() {
            Ok(r) => r,
            Err(e) => panic!("OS entropy source failed: {e}"),
        }
    }

    /// Like [`CardRng::from_entropy`] but reports OS entropy failure.
    pub fn try_from_entropy() -> Result<Self, rand::rngs::SysError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        SysRng.try_fill_bytes(&mut seed[..])?;
        Ok(Self {
            inner: ChaCha20Rng::from_seed(*seed),
            seeded: false,
        })
    }

    /// Deterministic ChaCha20 stream from a 32-byte seed: the same seed
    /// gives the same bytes on every platform. For tests and reproducible
    /// simulations only.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            inner: ChaCha20Rng::from_seed(seed),
            seeded: true,
        }
    }

    /// Fill `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        rand::Rng::fill_bytes(&mut self.inner, out);
    }

    /// `true` when created with [`CardRng::from_seed`].
    pub fn is_deterministic(&self) -> bool {
        self.seeded
    }
}

impl Default for CardRng {
    fn default() -> Self {
        Self::from_entropy()
    }
}

impl core::fmt::Debug for CardRng {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CardRng")
            .field("deterministic", &self.seeded)
            .finish_non_exhaustive()
    }
}

impl TryRng for CardRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        self.inner.try_next_u32()
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.inner.try_next_u64()
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.inner.try_fill_bytes(dst)
    }
}

impl TryCryptoRng for CardRng {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_reproducible() {
        let mut a = CardRng::from_seed([7; 32]);
        let mut b = CardRng::from_seed([7; 32]);
        let mut c = CardRng::from_seed([8; 32]);
        let (mut x, mut y, mut z) = ([0u8; 64], [0u8; 64], [0u8; 64]);
        a.fill(&mut x);
        b.fill(&mut y);
        c.fill(&mut z);
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert!(a.is_deterministic());
    }

    #[test]
    fn entropy_differs() {
        let mut a = CardRng::from_entropy();
        let mut b = CardRng::from_entropy();
        let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_ne!(x, y);
        assert!(!a.is_deterministic());
    }
}
