//! The compact fee histogram of `mempool.get_fee_histogram`, built as ElectrumX builds it:
//! vsize per fee rate floored to 0.1 sat/vB, then folded from the highest rate down into bins
//! of at least 30,000 vB, each bin 1.1 times larger than the previous.

use std::collections::BTreeMap;

/// ElectrumX's `MEMPOOL_COMPACT_HISTOGRAM_BINSIZE` (vB): the first bin's minimum size.
pub(super) const BIN_SIZE: u64 = 30_000;

/// ElectrumX's `_update_histogram` then `_compress_histogram` over (fee, vsize) pairs.
pub(super) fn compact(txs: impl Iterator<Item = (u64, u64)>, bin_size: u64) -> Vec<(f64, u64)> {
    // Rates as whole tenths of sat/vB: ElectrumX's `floor(10 * fee / size) / 10`, with the
    // same float arithmetic so that a rate lands in the same bin.
    let mut by_rate: BTreeMap<u64, u64> = BTreeMap::new();
    for (fee, vsize) in txs {
        if vsize == 0 {
            continue;
        }
        let tenths = (10.0 * (fee as f64 / vsize as f64)).floor() as u64;
        let total = by_rate.entry(tenths).or_default();
        *total = total.saturating_add(vsize);
    }
    compress(&by_rate, bin_size)
}

/// ElectrumX's `_compress_histogram`: from the highest rate down, a bin closes once its size
/// exceeds the bin size, which then grows by 1.1. A rate holding more than twice the bin
/// size (a "big lump") first closes the bin in progress at the previous rate. What is left
/// below the last closed bin is not reported.
fn compress(by_rate: &BTreeMap<u64, u64>, bin_size: u64) -> Vec<(f64, u64)> {
    let mut bin = bin_size as f64;
    let mut compact = Vec::new();
    let mut cum: u64 = 0;
    let mut prev: Option<f64> = None;
    for (&tenths, &size) in by_rate.iter().rev() {
        let rate = tenths as f64 / 10.0;
        if let Some(prev) = prev.filter(|_| size as f64 > 2.0 * bin && cum > 0) {
            compact.push((prev, cum));
            cum = 0;
            bin *= 1.1;
        }
        cum = cum.saturating_add(size);
        if cum as f64 > bin {
            compact.push((rate, cum));
            cum = 0;
            bin *= 1.1;
        }
        prev = Some(rate);
    }
    compact
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_floored_to_tenths_and_weighted_by_vsize() {
        // 2000/200 = 10.0 and 1005/100 = 10.05 -> 10.0: 300 vB; 150000/30000 = 5.0: 30000 vB;
        // 25000/25000 and 10000/10000 = 1.0: 35000 vB; 100/1000 = 0.1: 1000 vB.
        // Bin 30000: 10.0 -> cum 300; 5.0 -> cum 30300 > 30000: (5.0, 30300), bin 33000;
        // 1.0 -> 35000 > 33000: (1.0, 35000), bin 36300; 0.1 -> 1000, never closed.
        let txs = [
            (2000, 200),
            (1005, 100),
            (150_000, 30_000),
            (25_000, 25_000),
            (10_000, 10_000),
            (100, 1000),
        ];
        assert_eq!(
            compact(txs.into_iter(), BIN_SIZE),
            [(5.0, 30_300), (1.0, 35_000)]
        );
    }

    #[test]
    fn flooring_rounds_down() {
        // 999/1000 = 0.999 -> 0.9 (not 1.0); 1/3 = 0.33 -> 0.3; 0/500 -> 0.0. Bin 1000:
        // 0.9 -> 1000, not > 1000; 0.3 -> 1003 > 1000: (0.3, 1003), bin 1100; 0.0 -> 500.
        let txs = [(999, 1000), (1, 3), (0, 500)];
        assert_eq!(compact(txs.into_iter(), 1000), [(0.3, 1003)]);
    }

    #[test]
    fn bins_grow_by_a_tenth() {
        // 31000 vB at each of 4.0, 3.0, 2.0, 1.0. 4.0: 31000 > 30000: (4.0, 31000), bin 33000;
        // 3.0: 31000 <= 33000; 2.0: 62000 > 33000: (2.0, 62000), bin 36300; 1.0: 31000 left.
        let txs = [
            (124_000, 31_000),
            (93_000, 31_000),
            (62_000, 31_000),
            (31_000, 31_000),
        ];
        assert_eq!(
            compact(txs.into_iter(), BIN_SIZE),
            [(4.0, 31_000), (2.0, 62_000)]
        );
    }

    #[test]
    fn a_big_lump_closes_the_bin_before_it() {
        // 20.0: 1000 vB; 8.0: 70000; 3.0: 5000; 2.0: 40000. 20.0 -> cum 1000. 8.0: 70000 >
        // 2 * 30000 with cum 1000 pending: (20.0, 1000), bin 33000; then 70000 > 33000:
        // (8.0, 70000), bin 36300. 3.0 -> 5000 (5000 < 2 * 36300). 2.0 -> 45000 > 36300:
        // (2.0, 45000), bin 39930.
        let txs = [
            (20_000, 1000),
            (560_000, 70_000),
            (15_000, 5000),
            (80_000, 40_000),
        ];
        assert_eq!(
            compact(txs.into_iter(), BIN_SIZE),
            [(20.0, 1000), (8.0, 70_000), (2.0, 45_000)]
        );
        // A lump at the highest rate has nothing before it: just one bin.
        assert_eq!(
            compact([(900_000, 100_000)].into_iter(), BIN_SIZE),
            [(9.0, 100_000)]
        );
    }

    #[test]
    fn empty_and_degenerate_input() {
        assert!(compact(std::iter::empty(), BIN_SIZE).is_empty());
        // A zero vsize cannot come from a parsed transaction; it is ignored, not divided by.
        assert!(compact([(5, 0)].into_iter(), BIN_SIZE).is_empty());
    }
}
