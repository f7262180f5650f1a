//! Tests of script histories: buffer, segments, cuts, merges, against a model, and on
//! corrupted files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use proptest::prelude::*;

use super::*;
use crate::frame::decode_frame;
use crate::utxo::sorted_file::footer_len;

fn ids() -> impl FnMut() -> u64 {
    let mut next = 0;
    move || {
        next += 1;
        next
    }
}

fn hx(n: u8) -> HashX {
    let mut h = [0u8; 11];
    h[0] = n;
    h[10] = n.wrapping_mul(7);
    h
}

fn everything(view: &HistoryView) -> Vec<(HashX, Vec<u64>)> {
    let mut out = Vec::new();
    view.for_each(&mut |h, nums| out.push((*h, nums.to_vec())))
        .unwrap();
    out
}

#[test]
fn append_flush_and_read_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = HistorySet::open(dir.path(), &[]).unwrap();
    set.append(hx(1), 3);
    set.append(hx(1), 3);
    set.append(hx(2), 4);
    set.append(hx(1), 5);
    assert!(set.buffer_bytes() > 0);
    assert!(
        set.view().get(&hx(1)).unwrap().is_empty(),
        "views see segments only"
    );
    set.flush(&mut alloc).unwrap();
    assert_eq!(set.buffer_bytes(), 0);
    set.append(hx(1), 9);
    set.append(hx(3), 9);
    set.flush(&mut alloc).unwrap();
    set.flush(&mut alloc).unwrap(); // nothing buffered: no segment
    assert_eq!(set.file_names(), vec!["hist-1.seg", "hist-2.seg"]);
    let view = set.view();
    assert_eq!(view.get(&hx(1)).unwrap(), vec![3, 5, 9]);
    assert_eq!(view.get(&hx(2)).unwrap(), vec![4]);
    assert_eq!(view.get(&hx(4)).unwrap(), Vec::<u64>::new());
    assert_eq!(
        everything(&view),
        vec![(hx(1), vec![3, 5, 9]), (hx(2), vec![4]), (hx(3), vec![9])]
    );
}

#[test]
fn out_of_order_appends_are_placed_and_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = HistorySet::open(dir.path(), &[]).unwrap();
    for t in [10, 4, 7, 4, 12, 10] {
        set.append(hx(1), t);
    }
    set.flush(&mut alloc).unwrap();
    set.append(hx(1), 7); // already in an older segment
    set.append(hx(1), 1);
    set.flush(&mut alloc).unwrap();
    assert_eq!(set.view().get(&hx(1)).unwrap(), vec![1, 4, 7, 10, 12]);
    assert_eq!(everything(&set.view())[0].1, vec![1, 4, 7, 10, 12]);
    set.compact(&mut alloc, u64::MAX).unwrap();
    assert_eq!(set.view().get(&hx(1)).unwrap(), vec![1, 4, 7, 10, 12]);
}

#[test]
fn truncate_hides_old_entries_but_not_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = HistorySet::open(dir.path(), &[]).unwrap();
    for t in 0..10 {
        set.append(hx(1), t);
    }
    set.flush(&mut alloc).unwrap();
    for t in 10..20 {
        set.append(hx(1), t);
        set.append(hx(2), t);
    }
    set.flush(&mut alloc).unwrap();
    set.append(hx(1), 20);
    set.truncate(15); // buffered 20 and flushed 15.. go
    for t in [15, 16] {
        set.append(hx(2), t);
    }
    let view = set.view();
    assert_eq!(view.get(&hx(1)).unwrap(), (0..15).collect::<Vec<_>>());
    set.flush(&mut alloc).unwrap();
    assert_eq!(
        set.view().get(&hx(2)).unwrap(),
        (10..17).collect::<Vec<_>>()
    );
    // A cut below everything a segment holds removes the segment.
    set.truncate(5);
    assert_eq!(set.file_names(), vec!["hist-1.seg"]);
    assert_eq!(set.view().get(&hx(2)).unwrap(), Vec::<u64>::new());
    let state = set.state();
    drop(set);
    let mut set = HistorySet::open(dir.path(), &state).unwrap();
    assert_eq!(set.view().get(&hx(1)).unwrap(), vec![0, 1, 2, 3, 4]);
    let mut copy = HistorySet::open(dir.path(), &state).unwrap();
    assert!(
        copy.compact_all(&mut || 100).unwrap(),
        "a lone segment's cut is folded in"
    );
    let names = copy.file_names();
    assert_eq!(names, vec!["hist-100.seg"]);
    assert_eq!(copy.state()[3], 0, "no cut");
    assert_eq!(copy.view().get(&hx(1)).unwrap(), vec![0, 1, 2, 3, 4]);
    drop(copy);
    set.append(hx(1), 5);
    set.flush(&mut alloc).unwrap();
    assert!(set.compact(&mut alloc, u64::MAX).unwrap());
    assert_eq!(set.state(), vec![1, 1, 5, 0], "one segment, cut folded in");
    assert_eq!(set.view().get(&hx(1)).unwrap(), (0..6).collect::<Vec<_>>());
}

#[test]
fn state_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let err = HistorySet::open(dir.path(), &[7]).err().unwrap();
    assert_eq!(err.to_string(), "history state version 7 is not supported");
    let err = HistorySet::open(dir.path(), &[1, 1, 1]).err().unwrap();
    assert_eq!(err.to_string(), "history state is malformed");
    let err = HistorySet::open(dir.path(), &[1, 1, 1, 0]).err().unwrap();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn replaced_segments_are_deleted_after_commit_and_last_view() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = HistorySet::open(dir.path(), &[]).unwrap();
    for t in 0..3 {
        set.append(hx(1), t);
        set.flush(&mut alloc).unwrap();
    }
    let view = set.view();
    assert!(set.compact(&mut alloc, u64::MAX).unwrap());
    assert!(!set.compact(&mut alloc, u64::MAX).unwrap());
    assert_eq!(set.file_names(), vec!["hist-4.seg"]);
    let exists = |n: &str| dir.path().join(n).exists();
    assert!(exists("hist-2.seg"));
    set.committed();
    assert!(exists("hist-2.seg"), "a view still reads it");
    assert_eq!(view.get(&hx(1)).unwrap(), vec![0, 1, 2]);
    drop(view);
    assert!(!exists("hist-1.seg") && !exists("hist-2.seg") && !exists("hist-3.seg"));
}

#[test]
fn long_histories_span_consecutive_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = HistorySet::open(dir.path(), &[]).unwrap();
    let mut want = Vec::new();
    for t in 0..100_000u64 {
        let t = t * 3 + t % 2;
        set.append(hx(5), t);
        want.push(t);
        if t % 10 == 0 {
            set.append(hx(4), t);
            set.append(hx(6), t);
        }
    }
    set.flush(&mut alloc).unwrap();
    assert!(set.segs[0].seg.has_filter());
    let view = set.view();
    assert_eq!(view.get(&hx(5)).unwrap(), want);
    assert_eq!(view.get(&hx(4)).unwrap().len(), 20_000);
    assert_eq!(view.get(&hx(6)).unwrap().len(), 20_000);
    let all = everything(&view);
    assert_eq!(all.len(), 3);
    assert_eq!(all[1].1, want);
    set.truncate(150_000);
    assert_eq!(set.view().get(&hx(5)).unwrap().len(), 50_000);
}

#[test]
fn tails_of_long_histories_skip_older_blocks_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = HistorySet::open(dir.path(), &[]).unwrap();
    let mut want = Vec::new();
    for t in 0..100_000u64 {
        let t = t * 20_000 + t % 3; // deltas of 3 bytes, as in a real chain
        set.append(hx(5), t);
        want.push(t);
        if t % 7 == 0 {
            set.append(hx(4), t);
            set.append(hx(6), t);
        }
    }
    set.flush(&mut alloc).unwrap();
    let blocks_read = |f: &dyn Fn()| {
        let before = segment::BLOCKS_READ.with(|n| n.get());
        f();
        segment::BLOCKS_READ.with(|n| n.get()) - before
    };
    let view = set.view();
    let whole = blocks_read(&|| assert_eq!(view.get(&hx(5)).unwrap(), want));
    assert!(whole > 20, "the history spans {whole} blocks");
    let last = *want.last().unwrap();
    for from in [0, 1, 20_001, want[50_000], last - 100_000, last, last + 1] {
        let tail: Vec<u64> = want.iter().copied().filter(|&t| t >= from).collect();
        let read = blocks_read(&|| assert_eq!(view.get_since(&hx(5), from).unwrap(), tail));
        // A binary search over the key's blocks, then the blocks holding the tail.
        let probes = (whole as f64).log2().ceil() as usize + 1;
        let tail_blocks = tail.len() * whole / want.len() + 2;
        assert!(
            read <= probes + tail_blocks,
            "read {read} of {whole} from {from}"
        );
    }
    let read = blocks_read(&|| view.get_since(&hx(5), last).map(drop).unwrap());
    assert!(
        read * 4 < whole,
        "the last entry alone: read {read} of {whole}"
    );
    // Keys around the long one are unaffected.
    let sixes: Vec<u64> = view.get(&hx(6)).unwrap();
    assert_eq!(view.get_since(&hx(6), sixes[100]).unwrap(), sixes[100..]);

    // A new segment: a tail past the old one's numbers reads the new one only.
    set.append(hx(5), last + 7);
    set.flush(&mut alloc).unwrap();
    let view = set.view();
    let read = blocks_read(&|| assert_eq!(view.get_since(&hx(5), last + 1).unwrap(), [last + 7]));
    assert_eq!(read, 1, "the old segment is skipped");
    let (cut, from) = (want[60_000], want[59_000] + 1);
    set.truncate(cut);
    let view = set.view();
    assert_eq!(view.get_since(&hx(5), from).unwrap(), want[59_001..60_000]);
    assert!(view.get_since(&hx(5), cut).unwrap().is_empty());
}

#[test]
fn extreme_numbers_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = HistorySet::open(dir.path(), &[]).unwrap();
    let nums = [0, 1, 1 << 35, u64::MAX - 1, u64::MAX];
    for t in nums {
        set.append([0xff; 11], t);
        set.append([0; 11], t);
    }
    set.flush(&mut alloc).unwrap();
    assert_eq!(set.view().get(&[0xff; 11]).unwrap(), nums);
    assert_eq!(set.view().get(&[0; 11]).unwrap(), nums);
    set.truncate(u64::MAX);
    assert_eq!(set.view().get(&[0; 11]).unwrap(), nums[..4]);
}

/// Start offsets of the frames of a segment, and where its footer starts.
fn frame_starts(data: &[u8], path: &Path) -> (Vec<usize>, usize) {
    let footer = data.len() - footer_len(4);
    let mut starts = Vec::new();
    let mut pos = 0;
    while pos < footer {
        starts.push(pos);
        pos = decode_frame(data, pos, path).unwrap().1;
    }
    (starts, footer)
}

fn read_all(dir: &Path, state: &[u8]) -> Result<()> {
    let set = HistorySet::open(dir, state)?;
    let view = set.view();
    for h in 0..8 {
        view.get(&hx(h))?;
    }
    view.for_each(&mut |_, _| {})
}

#[test]
fn corruption_is_reported_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = HistorySet::open(dir.path(), &[]).unwrap();
    let mut x: u64 = 3;
    for t in 0..40_000u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        set.append(hx((x >> 61) as u8), t);
    }
    set.flush(&mut alloc).unwrap();
    let state = set.state();
    drop(set);
    read_all(dir.path(), &state).unwrap();
    let path = dir.path().join("hist-1.seg");
    let good = fs::read(&path).unwrap();
    let (starts, footer) = frame_starts(&good, &path);
    assert!(
        starts.len() >= 4,
        "want several blocks, got {}",
        starts.len()
    );
    let expected_at = |p: usize| {
        if p >= footer {
            footer
        } else {
            *starts.iter().rev().find(|&&s| s <= p).unwrap()
        }
    };
    let headers = starts.iter().flat_map(|&s| s..s + 5);
    for p in (0..good.len())
        .step_by(23)
        .chain(headers)
        .chain(footer..good.len())
    {
        let mut bad = good.clone();
        bad[p] ^= 0x04;
        fs::write(&path, &bad).unwrap();
        let err = read_all(dir.path(), &state).expect_err("flip not detected");
        let prefix = format!(
            "corrupt store file {} at offset {}: ",
            path.display(),
            expected_at(p)
        );
        assert!(err.to_string().starts_with(&prefix), "flip at {p}: {err}");
    }
    for len in (0..good.len()).step_by(37) {
        fs::write(&path, &good[..len]).unwrap();
        let err = read_all(dir.path(), &state).expect_err("truncation");
        let at = if len < footer_len(4) {
            0
        } else {
            len - footer_len(4)
        };
        let prefix = format!("corrupt store file {} at offset {at}: ", path.display());
        assert!(err.to_string().starts_with(&prefix), "cut at {len}: {err}");
    }
}

#[test]
fn bad_contents_under_valid_checksums_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = HistorySet::open(dir.path(), &[]).unwrap();
    for t in 0..6000u64 {
        set.append(hx((t % 7) as u8), t * 5);
        if t % 3 == 0 {
            set.append(hx(7 + (t % 200) as u8), t * 5);
        }
    }
    set.flush(&mut alloc).unwrap();
    let state = set.state();
    drop(set);
    let path = dir.path().join("hist-1.seg");
    let good = fs::read(&path).unwrap();
    let (frames, _) = frame_starts(&good, &path);
    let mut seed = 2;
    let prefix = format!("corrupt store file {} at offset ", path.display());
    for _ in 0..400 {
        let mut bad = good.clone();
        crate::utxo::sorted_file::mutate_with_valid_checksums(&mut bad, &frames, 4, &mut seed);
        fs::write(&path, &bad).unwrap();
        if let Err(e) = read_all(dir.path(), &state) {
            assert!(e.to_string().starts_with(&prefix), "{e}");
        }
    }
    for i in 0..200u64 {
        let mut bad = good.clone();
        for j in 0..1 + i % 4 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(j);
            let at = (seed >> 20) as usize % bad.len();
            bad[at] ^= (seed >> 8) as u8 | 1;
        }
        crate::utxo::reseal_checksums(&mut bad);
        fs::write(&path, &bad).unwrap();
        if let Err(e) = read_all(dir.path(), &state) {
            assert!(e.to_string().starts_with(&prefix), "{e}");
        }
    }
}

#[test]
fn numbers_going_back_across_blocks_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = HistorySet::open(dir.path(), &[]).unwrap();
    for t in 0..40_000u64 {
        set.append(hx(5), 100_000 + t * 3);
    }
    set.flush(&mut alloc).unwrap();
    let state = set.state();
    drop(set);
    let path = dir.path().join("hist-1.seg");
    let mut data = fs::read(&path).unwrap();
    let (frames, _) = frame_starts(&data, &path);
    assert!(frames.len() > 3, "{} frames", frames.len());
    // The second block: codec, first key, one group, then its base (3 varint bytes), here
    // made 0 without changing its length.
    let base = frames[1] + 4 + 1 + 11 + 1;
    assert_eq!(data[base + 2] & 0x80, 0, "a 3-byte base");
    data[base..base + 3].copy_from_slice(&[0x80, 0x80, 0]);
    crate::utxo::reseal_checksums(&mut data);
    fs::write(&path, &data).unwrap();
    let set = HistorySet::open(dir.path(), &state).unwrap();
    let want = format!(
        "corrupt store file {} at offset {}: blocks out of order",
        path.display(),
        frames[1]
    );
    assert_eq!(set.view().get(&hx(5)).unwrap_err().to_string(), want);
    let err = set.view().for_each(&mut |_, _| {}).unwrap_err();
    assert_eq!(err.to_string(), want);
}

#[test]
fn compressed_blocks_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = HistorySet::open(dir.path(), &[]).unwrap();
    set.append(hx(1), 5);
    set.flush(&mut alloc).unwrap();
    let state = set.state();
    drop(set);
    let path = dir.path().join("hist-1.seg");
    let good = fs::read(&path).unwrap();
    let (frames, footer) = frame_starts(&good, &path);
    // The one block's body, now zstd-compressed (codec 1), then the index and footer anew.
    let (payload, _) = decode_frame(&good, frames[0], &path).unwrap();
    let mut zstd_payload = vec![1];
    crate::varint::put(&mut zstd_payload, payload.len() as u64 - 1);
    zstd_payload.extend(zstd::bulk::compress(&payload[1..], 3).unwrap());
    let mut bad = Vec::new();
    crate::frame::encode_frame(&mut bad, &zstd_payload);
    let idx = bad.len() as u64;
    let mut index = hx(1).to_vec();
    index.extend_from_slice(&0u64.to_le_bytes());
    crate::frame::encode_frame(&mut bad, &index);
    let fields = [1, 5, 5, idx];
    crate::utxo::sorted_file::encode_footer(&mut bad, segment::MAGIC, &fields);
    assert_eq!(bad[bad.len() - footer_len(4)..][..8], good[footer..][..8]);
    fs::write(&path, &bad).unwrap();
    let err = HistorySet::open(dir.path(), &state).err().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "corrupt store file {} at offset 0: compressed history block",
            path.display()
        )
    );
}

#[test]
fn arbitrary_bytes_as_a_segment_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hist-1.seg");
    let mut x: u64 = 5;
    for len in [0usize, 1, 43, 44, 45, 100, 5000] {
        for _ in 0..20 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (x >> 56) as u8
                })
                .collect();
            fs::write(&path, &bytes).unwrap();
            assert!(HistorySet::open(dir.path(), &[1, 1, 1, 0]).is_err());
        }
    }
}

/// Bytes per history entry of a compacted segment on the synthetic chain: each tx touches
/// the scripts it pays and the scripts whose outputs it spends.
#[test]
fn space_per_entry_on_synthetic_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = HistorySet::open(dir.path(), &[]).unwrap();
    let mut chain = crate::utxo::synthetic::Chain::new(7);
    let mut entries = 0u64;
    for _ in 0..120_000 {
        let (txnum, tx) = chain.next_tx();
        let mut touched: BTreeSet<HashX> = tx.spends.iter().map(|s| s.2).collect();
        touched.extend(tx.outputs.iter().map(|o| o.0));
        for h in touched {
            set.append(h, txnum);
            entries += 1;
        }
        if txnum % 40_000 == 39_999 {
            set.flush(&mut alloc).unwrap();
            set.compact(&mut alloc, u64::MAX).unwrap();
        }
    }
    set.flush(&mut alloc).unwrap();
    set.merge_range(0..set.segs.len(), &mut alloc).unwrap();
    let bytes = set.segs[0].seg.size();
    let per = bytes as f64 / entries as f64;
    println!("history: {bytes} bytes for {entries} entries = {per:.2} B/entry");
    assert!(per < 8.0, "{per:.2} B/entry");
}

#[derive(Clone, Debug)]
enum Op {
    Append(u8),
    NextTx,
    Truncate(u64),
    Flush,
    Compact,
    CompactAll,
    /// Waits for a background merge and installs it.
    Settle,
    Commit,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..5).prop_map(Op::Append),
        4 => Just(Op::NextTx),
        1 => (0u64..6).prop_map(Op::Truncate),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::CompactAll),
        1 => Just(Op::Settle),
        1 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

fn check(set: &HistorySet, model: &BTreeMap<HashX, BTreeSet<u64>>) {
    let view = set.view();
    let want: Vec<(HashX, Vec<u64>)> = model
        .iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(h, s)| (*h, s.iter().copied().collect()))
        .collect();
    assert_eq!(everything(&view), want);
    for h in 0..5 {
        let nums: Vec<u64> = model
            .get(&hx(h))
            .map_or(vec![], |s| s.iter().copied().collect());
        assert_eq!(view.get(&hx(h)).unwrap(), nums);
        for from in 0..=nums.last().map_or(1, |&t| t + 1) {
            let tail: Vec<u64> = nums.iter().copied().filter(|&t| t >= from).collect();
            assert_eq!(view.get_since(&hx(h), from).unwrap(), tail, "from {from}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn matches_a_model(
        ops in proptest::collection::vec(op(), 1..80),
        background in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut alloc = ids();
        // In the background every merge runs on its own thread.
        let threshold = if background { 0 } else { u64::MAX };
        let mut set = HistorySet::open(dir.path(), &[]).unwrap();
        let mut model: BTreeMap<HashX, BTreeSet<u64>> = BTreeMap::new();
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Append(h) => {
                    set.append(hx(h), next);
                    model.entry(hx(h)).or_default().insert(next);
                }
                Op::NextTx => next += 1,
                Op::Truncate(back) => {
                    let from = next.saturating_sub(back);
                    set.truncate(from);
                    for nums in model.values_mut() {
                        nums.retain(|&t| t < from);
                    }
                    next = from;
                }
                Op::Flush => {
                    set.flush(&mut alloc).unwrap();
                    check(&set, &model);
                }
                Op::Compact => {
                    set.flush(&mut alloc).unwrap();
                    set.compact(&mut alloc, threshold).unwrap();
                    check(&set, &model);
                }
                Op::CompactAll => {
                    set.flush(&mut alloc).unwrap();
                    set.compact_all(&mut alloc).unwrap();
                    assert!(set.file_names().len() <= 1);
                    assert!(!set.compact_all(&mut alloc).unwrap(), "nothing left to merge");
                    check(&set, &model);
                }
                Op::Settle => {
                    set.flush(&mut alloc).unwrap();
                    set.finish_background(true).unwrap();
                    check(&set, &model);
                }
                Op::Commit => set.committed(),
                Op::Reopen => {
                    set.flush(&mut alloc).unwrap();
                    set.committed();
                    let state = set.state();
                    let named = set.file_names();
                    drop(set);
                    // Dropped mid-merge or not, no unnamed segment is left behind.
                    assert_eq!(segment_files(dir.path()), named);
                    set = HistorySet::open(dir.path(), &state).unwrap();
                    check(&set, &model);
                }
            }
        }
    }
}

#[test]
fn newer_segments_worth_a_quarter_of_the_oldest_are_merged_into_it() {
    assert_eq!(HistorySet::newer_heavy(&[]), None);
    assert_eq!(HistorySet::newer_heavy(&[100]), None);
    assert_eq!(HistorySet::newer_heavy(&[100, 10, 14]), None);
    assert_eq!(HistorySet::newer_heavy(&[100, 10, 15]), Some(0..3));
    // Through compact: one big segment, then small flushes that the size-tiered rule
    // leaves alone until they add up to a quarter of it.
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = HistorySet::open(dir.path(), &[]).unwrap();
    for t in 0..4000 {
        set.append(hx((t % 200) as u8), t);
    }
    set.flush(&mut alloc).unwrap();
    let mut t = 4000;
    let mut merged_all = false;
    for _ in 0..40 {
        for _ in 0..50 {
            set.append(hx((t % 200) as u8), t);
            t += 1;
        }
        set.flush(&mut alloc).unwrap();
        set.compact(&mut alloc, u64::MAX).unwrap();
        merged_all |= set.file_names().len() == 1;
        let view = set.view();
        assert_eq!(
            view.get(&hx(7)).unwrap(),
            (0..t).filter(|n| n % 200 == 7).collect::<Vec<_>>()
        );
    }
    assert!(merged_all, "{:?}", set.file_names());
}

/// The segment files in `dir`, oldest (lowest id) first.
fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<(u64, String)> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let id = name
                .strip_prefix("hist-")?
                .strip_suffix(".seg")?
                .parse()
                .ok()?;
            Some((id, name))
        })
        .collect();
    names.sort();
    names.into_iter().map(|(_, name)| name).collect()
}

/// A set holding `segments` flushed segments of 300 entries over 30 scripts.
fn flushed(dir: &Path, alloc: &mut dyn FnMut() -> u64, segments: u64) -> HistorySet {
    let mut set = HistorySet::open(dir, &[]).unwrap();
    for t in 0..segments * 300 {
        set.append(hx((t % 30) as u8), t);
        if t % 300 == 299 {
            set.flush(alloc).unwrap();
        }
    }
    set
}

fn model_of(tx_count: u64) -> BTreeMap<HashX, BTreeSet<u64>> {
    let mut model: BTreeMap<HashX, BTreeSet<u64>> = BTreeMap::new();
    for t in 0..tx_count {
        model.entry(hx((t % 30) as u8)).or_default().insert(t);
    }
    model
}

#[test]
fn a_background_merge_writes_what_an_inline_merge_writes() {
    let (inline_dir, bg_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = (ids(), ids());
    let mut inline = flushed(inline_dir.path(), &mut a, 4);
    let mut bg = flushed(bg_dir.path(), &mut b, 4);
    assert!(inline.compact(&mut a, u64::MAX).unwrap());
    // The first call only starts the merge; the segments stay as they are until it is done.
    assert!(!bg.compact(&mut b, 0).unwrap());
    assert!(bg.background.is_some());
    assert_eq!(bg.file_names().len(), 4);
    check(&bg, &model_of(1200));
    assert!(bg.finish_background(true).unwrap());
    assert_eq!(bg.file_names(), inline.file_names());
    let name = inline.file_names()[0].clone();
    assert_eq!(
        fs::read(inline_dir.path().join(&name)).unwrap(),
        fs::read(bg_dir.path().join(&name)).unwrap(),
        "byte for byte the same segment"
    );
    check(&bg, &model_of(1200));
}

#[test]
fn newer_segments_are_merged_while_a_background_merge_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = flushed(dir.path(), &mut alloc, 2);
    // A background merge of both segments that finishes only when the test says so.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let inputs = set.segs.clone();
    let id = alloc();
    let path = dir.path().join(segment_name(id));
    let keys = inputs.iter().map(SegRef::key).collect();
    set.background = Some(
        Background::start("test-merge", dir.path(), keys, move |cancel| {
            wait.recv().unwrap();
            merge_segments(&inputs, &path, id, cancel)
        })
        .unwrap(),
    );
    // Two small new segments merge in place, after its inputs, which stay as they are.
    for t in 600..700 {
        set.append(hx((t % 30) as u8), t);
        if t % 50 == 49 {
            set.flush(&mut alloc).unwrap();
        }
    }
    assert!(set.compact(&mut alloc, u64::MAX).unwrap());
    assert_eq!(set.segs.len(), 3, "{:?}", set.file_names());
    assert_eq!(set.background_range(), Some(0..2));
    check(&set, &model_of(700));
    go.send(()).unwrap();
    assert!(set.finish_background(true).unwrap());
    assert_eq!(set.segs.len(), 2);
    assert_eq!(set.segs[0].seg.id(), id);
    check(&set, &model_of(700));
}

#[test]
fn a_rollback_cancels_a_background_merge() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = flushed(dir.path(), &mut alloc, 4);
    set.compact(&mut alloc, 0).unwrap();
    set.truncate(1000);
    assert_eq!(set.background_range(), None, "cancelled");
    // Its output (if it got that far) is thrown away, never installed over the cut.
    assert!(!set.finish_background(true).unwrap());
    check(&set, &model_of(1000));
    set.committed();
    assert_eq!(segment_files(dir.path()), set.file_names());
    // The next compact merges the segments as they are now.
    set.compact(&mut alloc, 0).unwrap();
    set.finish_background(true).unwrap();
    check(&set, &model_of(1000));
}

#[test]
fn dropping_the_set_stops_a_background_merge_and_removes_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = flushed(dir.path(), &mut alloc, 4);
    let named = set.file_names();
    set.compact(&mut alloc, 0).unwrap();
    drop(set);
    assert_eq!(segment_files(dir.path()), named);
}
