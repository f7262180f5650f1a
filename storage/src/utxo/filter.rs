//! An in-memory Bloom filter of a run's outpoints, so a lookup skips most runs that lack the
//! outpoint without reading a block. Kept in memory only (no disk cost); rebuilt when a run
//! is opened by scanning its by-outpoint section.

/// Runs with more outpoints than this get no filter: the biggest (oldest) run is looked at
/// last, where a filter saves nothing, and memory stays at most 4 MiB per run.
pub(crate) const MAX_FILTERED: u64 = 1 << 21;

const PROBES: u32 = 3;

pub(crate) struct OutpointFilter {
    bits: Vec<u64>,
    mask: u64, // number of bits - 1 (a power of two)
}

fn hash(txnum: u64, vout: u32) -> u64 {
    let mut h = txnum.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(vout);
    h = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

/// Bit positions to probe: double hashing, probe i at h1 + i*h2.
fn positions(mask: u64, txnum: u64, vout: u32) -> impl Iterator<Item = u64> {
    let h = hash(txnum, vout);
    let (h1, h2) = (h, (h >> 32) | 1);
    (0..PROBES).map(move |i| h1.wrapping_add(u64::from(i).wrapping_mul(h2)) & mask)
}

impl OutpointFilter {
    /// About 10-20 bits per entry: under 2% false positives with 3 probes.
    pub fn with_capacity(entries: u64) -> OutpointFilter {
        let bits = (entries.max(1) * 10).next_power_of_two().max(64);
        OutpointFilter {
            bits: vec![0; (bits / 64) as usize],
            mask: bits - 1,
        }
    }

    pub fn insert(&mut self, txnum: u64, vout: u32) {
        for p in positions(self.mask, txnum, vout) {
            self.bits[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    pub fn may_contain(&self, txnum: u64, vout: u32) -> bool {
        positions(self.mask, txnum, vout)
            .all(|p| self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut f = OutpointFilter::with_capacity(10_000);
        for t in 0..10_000u64 {
            f.insert(t * 7, (t % 3) as u32);
        }
        assert!((0..10_000u64).all(|t| f.may_contain(t * 7, (t % 3) as u32)));
        let false_hits = (0..100_000u64)
            .filter(|&t| f.may_contain(t * 7 + 1, 0))
            .count();
        assert!(false_hits < 3_000, "{false_hits} false positives in 100k");
    }
}
