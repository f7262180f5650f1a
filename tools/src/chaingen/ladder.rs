//! Cheap deterministic key derivation for the generator's wallet: keys `base + i` whose public
//! keys are sums of precomputed multiples of G.

use std::sync::Arc;

use bitcoin::secp256k1::{All, PublicKey, Scalar, Secp256k1, SecretKey};

/// Bits of a key index served by the fixed table of small multiples of G.
const LADDER_LOW_BITS: u32 = 12;

/// Keys `base + i` (mod n) for i = 0, 1, 2...: public key `i` is `base·G + i·G`, assembled from
/// two small tables of multiples of G with point additions instead of a full scalar
/// multiplication, which makes deriving a script several times cheaper. Keys related this way
/// are unsafe for real money and fine for a test chain.
#[derive(Clone)]
pub(crate) struct KeyLadder {
    base: SecretKey,
    base_public: PublicKey,
    /// `low[j] = (j + 1)·G`, shared by every ladder.
    low: Arc<Vec<PublicKey>>,
    /// `high[j] = ((j + 1) << LADDER_LOW_BITS)·G`, grown on demand.
    high: Vec<PublicKey>,
}

fn scalar_bytes(value: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[24..].copy_from_slice(&value.to_be_bytes());
    bytes
}

impl KeyLadder {
    pub(crate) fn low_table(secp: &Secp256k1<All>) -> Arc<Vec<PublicKey>> {
        let one = SecretKey::from_slice(&scalar_bytes(1)).expect("1 is a valid secret");
        let g = PublicKey::from_secret_key(secp, &one);
        let mut low = vec![g];
        for _ in 2..1u64 << LADDER_LOW_BITS {
            let last = low.last().expect("non-empty");
            low.push(last.combine(&g).expect("j·G + G is not infinity"));
        }
        Arc::new(low)
    }

    pub(crate) fn new(secp: &Secp256k1<All>, base: SecretKey, low: Arc<Vec<PublicKey>>) -> Self {
        let base_public = PublicKey::from_secret_key(secp, &base);
        Self {
            base,
            base_public,
            low,
            high: Vec::new(),
        }
    }

    pub(crate) fn key(&mut self, secp: &Secp256k1<All>, index: u64) -> (SecretKey, PublicKey) {
        let tweak = Scalar::from_be_bytes(scalar_bytes(index)).expect("a u64 is below n");
        let secret = self
            .base
            .add_tweak(&tweak)
            .expect("base + index is not 0: odds 2^-256");
        let low = (index & ((1 << LADDER_LOW_BITS) - 1)) as usize;
        let high = (index >> LADDER_LOW_BITS) as usize;
        while self.high.len() < high {
            let multiple = (self.high.len() as u64 + 1) << LADDER_LOW_BITS;
            let scalar = SecretKey::from_slice(&scalar_bytes(multiple)).expect("small non-zero");
            self.high.push(PublicKey::from_secret_key(secp, &scalar));
        }
        let mut parts = vec![&self.base_public];
        if low > 0 {
            parts.push(&self.low[low - 1]);
        }
        if high > 0 {
            parts.push(&self.high[high - 1]);
        }
        let public = PublicKey::combine_keys(&parts).expect("the sum is secret·G, not infinity");
        (secret, public)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_public_keys_match_their_secrets() {
        let secp = Secp256k1::new();
        let low = KeyLadder::low_table(&secp);
        let mut ladder = KeyLadder::new(&secp, SecretKey::from_slice(&[7u8; 32]).unwrap(), low);
        for index in [0, 1, 2, 4095, 4096, 4097, 8191, 8192, 123_456, 9_999_999] {
            let (secret, public) = ladder.key(&secp, index);
            assert_eq!(
                public,
                PublicKey::from_secret_key(&secp, &secret),
                "index {index}"
            );
        }
        let (first, _) = ladder.key(&secp, 5);
        let (again, _) = ladder.key(&secp, 5);
        assert_eq!(first, again);
    }
}
