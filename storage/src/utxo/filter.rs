//! An in-memory Bloom filter of a file's keys (a run's outpoints, a segment's script keys),
//! so a lookup skips most files that lack the key without reading a block. Kept in memory
//! only (no disk cost); built when the file is opened by scanning its keys.

/// Files with more entries than this get no filter: the biggest (oldest) file is looked at
/// last or holds most keys anyway, and memory stays at most 4 MiB per file.
pub(crate) const MAX_FILTERED: u64 = 1 << 21;

const PROBES: u32 = 3;

pub(crate) struct KeyFilter {
    bits: Vec<u64>,
    mask: u64, // number of bits - 1 (a power of two)
}

fn hash(a: u64, b: u32) -> u64 {
    let mut h = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(b);
    h = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

/// Bit positions to probe: double hashing, probe i at h1 + i*h2.
fn positions(mask: u64, a: u64, b: u32) -> impl Iterator<Item = u64> {
    let h = hash(a, b);
    let (h1, h2) = (h, (h >> 32) | 1);
    (0..PROBES).map(move |i| h1.wrapping_add(u64::from(i).wrapping_mul(h2)) & mask)
}

impl KeyFilter {
    /// About 10-20 bits per entry: under 2% false positives with 3 probes.
    pub fn with_capacity(entries: u64) -> KeyFilter {
        let bits = (entries.max(1) * 10).next_power_of_two().max(64);
        KeyFilter {
            bits: vec![0; (bits / 64) as usize],
            mask: bits - 1,
        }
    }

    /// Keys are a u64 and a u32: an outpoint, or a script key split by `hashx_parts`.
    pub fn insert(&mut self, a: u64, b: u32) {
        for p in positions(self.mask, a, b) {
            self.bits[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    pub fn may_contain(&self, a: u64, b: u32) -> bool {
        positions(self.mask, a, b).all(|p| self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }
}

/// A script key as filter key parts.
pub(crate) fn hashx_parts(hashx: &crate::HashX) -> (u64, u32) {
    let a = u64::from_le_bytes(hashx[..8].try_into().unwrap());
    let b = u32::from_le_bytes([hashx[8], hashx[9], hashx[10], 0]);
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut f = KeyFilter::with_capacity(10_000);
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
