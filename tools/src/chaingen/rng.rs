//! The generator's deterministic randomness: xoshiro256** seeded by splitmix64, plus the
//! few distributions the chain shape needs (uniform ranges, chances, Zipf ranks).

/// A small, fast, seedable PRNG. Its whole output is a function of the seed, which is what
/// makes generated chains byte-identical from run to run.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        let mut state = seed;
        Self {
            s: [0; 4].map(|_| splitmix64(&mut state)),
        }
    }

    /// An independent stream derived from this one's state and `salt` (used by forks), distinct
    /// from the stream this generator itself continues with.
    pub(crate) fn forked(&self, salt: u64) -> Self {
        let mut state =
            self.s[0] ^ self.s[1].rotate_left(17) ^ self.s[2].rotate_left(31) ^ self.s[3];
        state ^= splitmix64(&mut salt.wrapping_add(0xF0F0_5A5A_0F0F_A5A5));
        Self::new(splitmix64(&mut state))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A rank in `0..n` drawn with probability roughly proportional to `1 / (rank + 1)^s`, by
    /// inverting the continuous power law's CDF: O(1) whatever `n` is.
    pub(crate) fn zipf_rank(&mut self, n: u64, s: f64) -> u64 {
        let u = self.unit();
        let top = (n + 1) as f64;
        let x = if (s - 1.0).abs() < 1e-9 {
            top.powf(u)
        } else {
            let a = 1.0 - s;
            ((top.powf(a) - 1.0) * u + 1.0).powf(1.0 / a)
        };
        (x as u64).clamp(1, n) - 1
    }

    pub(crate) fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_forks_differ() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut f0 = a.forked(0);
        let mut f1 = a.forked(1);
        let next = a.clone().next_u64();
        let (x0, x1) = (f0.next_u64(), f1.next_u64());
        assert_ne!(x0, x1);
        assert_ne!(x0, next);
    }

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[rng.zipf_rank(100, 1.0) as usize] += 1;
        }
        assert!(counts[0] > counts[9] * 5, "{counts:?}");
        assert!(counts[9] > counts[99] * 3, "{counts:?}");
        assert!(counts.iter().all(|&c| c > 0));
        for _ in 0..1000 {
            assert!(rng.zipf_rank(3, 0.7) < 3);
            assert_eq!(rng.zipf_rank(1, 1.2), 0);
        }
    }
}
