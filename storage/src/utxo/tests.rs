//! Tests of the UTXO set: every path of buffer, runs and merges, against a model, under a
//! tiny memory budget, and on corrupted files.

use std::collections::BTreeMap;
use std::fs;

use proptest::prelude::*;

use super::*;
use crate::frame::decode_frame;

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

fn all_utxos(view: &UtxoView) -> Vec<(HashX, Utxo)> {
    let mut out = Vec::new();
    view.for_each(&mut |h, u| out.push((*h, *u))).unwrap();
    out
}

fn utxo(txnum: u64, vout: u32, value: u64) -> Utxo {
    Utxo { txnum, vout, value }
}

#[test]
fn add_get_spend_across_buffer_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = UtxoSet::open(dir.path(), &[]).unwrap();
    set.add(hx(1), 5, 0, 500);
    set.add(hx(1), 5, 1, 501);
    set.add(hx(2), 6, 0, 600);
    assert!(set.buffer_bytes() > 0);
    assert_eq!(set.get(5, 1).unwrap(), Some((hx(1), 501)));
    assert_eq!(
        set.view().list(&hx(1)).unwrap(),
        vec![],
        "views see runs only"
    );
    set.flush(&mut alloc).unwrap();
    assert_eq!(set.buffer_bytes(), 0);
    assert_eq!(set.get(5, 1).unwrap(), Some((hx(1), 501)));
    assert_eq!(set.get(5, 2).unwrap(), None);
    assert_eq!(set.spend(5, 0).unwrap(), Some((hx(1), 500)));
    assert_eq!(set.spend(5, 0).unwrap(), None, "already spent");
    assert_eq!(set.spend(9, 9).unwrap(), None, "never existed");
    assert_eq!(set.get(5, 0).unwrap(), None);
    let before = set.view();
    set.flush(&mut alloc).unwrap();
    let view = set.view();
    assert_eq!(view.get(5, 0).unwrap(), None);
    assert_eq!(view.list(&hx(1)).unwrap(), vec![utxo(5, 1, 501)]);
    assert_eq!(before.list(&hx(1)).unwrap().len(), 2, "old view unchanged");
    assert_eq!(
        all_utxos(&view),
        vec![(hx(1), utxo(5, 1, 501)), (hx(2), utxo(6, 0, 600))]
    );
}

#[test]
fn spend_of_buffered_add_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = UtxoSet::open(dir.path(), &[]).unwrap();
    set.add(hx(1), 1, 0, 10);
    set.add(hx(1), 2, 0, 20);
    assert_eq!(set.spend(1, 0).unwrap(), Some((hx(1), 10)));
    set.flush(&mut alloc).unwrap();
    assert_eq!(set.runs.len(), 1);
    assert_eq!(set.runs[0].counts(), (1, 0));
    // Everything spent before a flush: no run at all.
    set.add(hx(3), 3, 0, 30);
    set.spend(3, 0).unwrap();
    set.flush(&mut alloc).unwrap();
    assert_eq!(set.runs.len(), 1);
}

#[test]
fn tombstones_are_dropped_only_when_the_merge_includes_the_oldest_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = UtxoSet::open(dir.path(), &[]).unwrap();
    for i in 0..200 {
        set.add(hx(1), i, 0, i);
    }
    set.flush(&mut alloc).unwrap();
    set.add(hx(2), 1000, 0, 1);
    set.flush(&mut alloc).unwrap();
    set.spend(3, 0).unwrap();
    set.flush(&mut alloc).unwrap();
    assert_eq!(set.runs[2].counts(), (0, 1));
    // The small newer runs merge alone: the tombstone must survive.
    set.merge_range(1..3, &mut alloc, 1 << 20).unwrap();
    assert_eq!(set.runs.len(), 2);
    assert_eq!(set.runs[1].counts(), (1, 1));
    assert_eq!(set.get(3, 0).unwrap(), None);
    assert_eq!(set.view().list(&hx(1)).unwrap().len(), 199);
    set.merge_range(0..2, &mut alloc, 1 << 20).unwrap();
    assert_eq!(set.runs[0].counts(), (200, 0));
    assert_eq!(set.get(3, 0).unwrap(), None);
    assert_eq!(set.view().list(&hx(1)).unwrap().len(), 199);
}

#[test]
fn tombstone_heavy_runs_are_merged_into_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = UtxoSet::open(dir.path(), &[]).unwrap();
    for i in 0..8000 {
        set.add(hx((i % 7) as u8), i, 0, 1 << 40);
    }
    set.flush(&mut alloc).unwrap();
    // Few spends: the small run stays apart.
    for i in 0..100 {
        set.spend(i, 0).unwrap();
    }
    set.flush(&mut alloc).unwrap();
    assert!(!set.compact(&mut alloc, 1 << 20, u64::MAX).unwrap());
    // A run of tombstones for 1/8 of the oldest run's entries triggers a full merge.
    for i in 100..1000 {
        set.spend(i, 0).unwrap();
    }
    set.flush(&mut alloc).unwrap();
    assert!(set.compact(&mut alloc, 1 << 20, u64::MAX).unwrap());
    assert_eq!(set.runs.len(), 1);
    assert_eq!(set.runs[0].counts(), (7000, 0));
}

#[test]
fn outpoint_readded_under_another_script_after_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = UtxoSet::open(dir.path(), &[]).unwrap();
    set.add(hx(1), 7, 0, 70);
    set.flush(&mut alloc).unwrap();
    // Rollback spends the output, then a new tx with the same number pays another script.
    assert_eq!(set.spend(7, 0).unwrap(), Some((hx(1), 70)));
    set.add(hx(2), 7, 0, 71);
    assert_eq!(set.get(7, 0).unwrap(), Some((hx(2), 71)));
    set.flush(&mut alloc).unwrap();
    assert_eq!(set.runs[1].counts(), (1, 1));
    let view = set.view();
    assert_eq!(view.get(7, 0).unwrap(), Some((hx(2), 71)));
    assert_eq!(view.list(&hx(1)).unwrap(), vec![]);
    assert_eq!(view.list(&hx(2)).unwrap(), vec![utxo(7, 0, 71)]);
    // Spend the new one and re-add the original in one buffer: the buffered add sits on its
    // own tombstone, so spending it again must keep hiding the run's entry.
    assert_eq!(set.spend(7, 0).unwrap(), Some((hx(2), 71)));
    set.add(hx(2), 7, 0, 72);
    assert_eq!(set.spend(7, 0).unwrap(), Some((hx(2), 72)));
    assert_eq!(set.get(7, 0).unwrap(), None);
    set.flush(&mut alloc).unwrap();
    assert_eq!(set.get(7, 0).unwrap(), None);
    assert!(all_utxos(&set.view()).is_empty());
    assert!(set.compact(&mut alloc, 1 << 20, u64::MAX).unwrap());
    assert!(set.runs.is_empty(), "all entries cancel out");
}

#[test]
fn state_reopens_the_same_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = UtxoSet::open(dir.path(), &[]).unwrap();
    set.add(hx(1), 1, 0, 10);
    set.flush(&mut alloc).unwrap();
    set.add(hx(2), 2, 0, 20);
    set.flush(&mut alloc).unwrap();
    assert_eq!(set.file_names(), vec!["utxo-1.run", "utxo-2.run"]);
    let state = set.state();
    drop(set);
    let set = UtxoSet::open(dir.path(), &state).unwrap();
    assert_eq!(set.get(2, 0).unwrap(), Some((hx(2), 20)));
    assert_eq!(set.state(), state);
    let err = UtxoSet::open(dir.path(), &[9]).err().unwrap();
    assert_eq!(err.to_string(), "utxo state version 9 is not supported");
    let err = UtxoSet::open(dir.path(), &[1, 2, 1]).err().unwrap();
    assert_eq!(err.to_string(), "utxo state is malformed");
    let err = UtxoSet::open(dir.path(), &[1, 1, 5]).err().unwrap();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn replaced_runs_are_deleted_after_commit_and_last_view() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = UtxoSet::open(dir.path(), &[]).unwrap();
    for i in 0..3 {
        set.add(hx(i), u64::from(i), 0, 1);
        set.flush(&mut alloc).unwrap();
    }
    let view = set.view();
    assert!(set.compact(&mut alloc, 1 << 20, u64::MAX).unwrap());
    assert!(!set.compact(&mut alloc, 1 << 20, u64::MAX).unwrap());
    assert_eq!(set.file_names(), vec!["utxo-4.run"]);
    let exists = |n: &str| dir.path().join(n).exists();
    assert!(
        exists("utxo-1.run"),
        "pending until the manifest is committed"
    );
    set.committed();
    assert!(exists("utxo-1.run"), "a view still reads it");
    assert_eq!(all_utxos(&view).len(), 3);
    drop(view);
    assert!(!exists("utxo-1.run") && !exists("utxo-3.run"));
    assert_eq!(all_utxos(&set.view()).len(), 3);
}

#[test]
fn big_groups_span_blocks_and_list_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = UtxoSet::open(dir.path(), &[]).unwrap();
    let mut expected = Vec::new();
    for i in 0..20_000u64 {
        let vout = (i % 3) as u32;
        set.add(hx(5), i, vout, i * 1000);
        set.add(hx(4), i, 7, 1);
        set.add(hx(6), i, 8, 2);
        expected.push(utxo(i, vout, i * 1000));
    }
    set.flush(&mut alloc).unwrap();
    assert!(set.runs[0].has_filter());
    let view = set.view();
    assert_eq!(view.list(&hx(5)).unwrap(), expected);
    assert_eq!(view.list(&hx(4)).unwrap().len(), 20_000);
    assert_eq!(view.list(&hx(3)).unwrap(), vec![]);
    for i in (0..20_000u64).step_by(37) {
        assert_eq!(
            view.get(i, (i % 3) as u32).unwrap(),
            Some((hx(5), i * 1000))
        );
        assert_eq!(view.get(i, 8).unwrap(), Some((hx(6), 2)));
        assert_eq!(view.get(i, 9).unwrap(), None);
    }
    assert_eq!(all_utxos(&view).len(), 60_000);
}

#[test]
fn extreme_numbers_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = UtxoSet::open(dir.path(), &[]).unwrap();
    let cases = [
        (0, 0, 0),
        (0, u32::MAX, u64::MAX),
        (u64::MAX, 0, 1),
        (u64::MAX, u32::MAX, u64::MAX),
        (1 << 40, 128, 1 << 63),
    ];
    for (t, v, val) in cases {
        set.add([0xff; 11], t, v, val);
        set.add([0; 11], t, v ^ 1, val);
    }
    set.flush(&mut alloc).unwrap();
    let view = set.view();
    for (t, v, val) in cases {
        assert_eq!(view.get(t, v).unwrap(), Some(([0xff; 11], val)));
        assert_eq!(view.get(t, v ^ 1).unwrap(), Some(([0; 11], val)));
    }
    let mut listed = view.list(&[0xff; 11]).unwrap();
    let mut want: Vec<Utxo> = cases.iter().map(|&(t, v, val)| utxo(t, v, val)).collect();
    want.sort_by_key(|u| (u.txnum, u.vout));
    assert_eq!(listed, want);
    listed = view.list(&[0; 11]).unwrap();
    assert_eq!(listed.len(), cases.len());
}

/// Builds the same runs in two directories so merges with different budgets can be compared.
fn populated(dir: &Path) -> UtxoSet {
    let mut alloc = ids();
    let mut set = UtxoSet::open(dir, &[]).unwrap();
    let mut x: u64 = 1;
    for round in 0..4u64 {
        for i in 0..3000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            set.add(
                hx((x >> 59) as u8),
                round * 10_000 + i,
                (x >> 40) as u32 % 3,
                x >> 20,
            );
            if i % 3 == 0 && round > 0 {
                let t = (round - 1) * 10_000 + i;
                for v in 0..3 {
                    set.spend(t, v).unwrap();
                }
            }
        }
        set.flush(&mut alloc).unwrap();
    }
    set
}

#[test]
fn merge_with_tiny_memory_budget_gives_identical_run() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut small, mut large) = (populated(a.path()), populated(b.path()));
    let mut alloc = || 100;
    let peak = small.merge_range(0..4, &mut alloc, 4096).unwrap();
    assert!(peak <= 4096, "outpoint sort held {peak} bytes");
    large.merge_range(0..4, &mut alloc, 64 << 20).unwrap();
    let read = |d: &Path| fs::read(d.join("utxo-100.run")).unwrap();
    assert_eq!(
        read(a.path()),
        read(b.path()),
        "merge output depends on the budget"
    );
    let leftovers: Vec<_> = fs::read_dir(a.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".sort"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let view = small.view();
    assert_eq!(
        all_utxos(&view),
        all_utxos(&populated(tempfile::tempdir().unwrap().path()).view())
    );
}

/// Start offsets of the frames of a run file, and where its footer starts.
fn frame_starts(data: &[u8], path: &Path) -> (Vec<usize>, usize) {
    let footer = data.len() - sorted_file::footer_len(4);
    let mut starts = Vec::new();
    let mut pos = 0;
    while pos < footer {
        starts.push(pos);
        pos = decode_frame(data, pos, path).unwrap().1;
    }
    (starts, footer)
}

/// Reads everything a set holds: any corruption must surface as an error.
fn read_all(dir: &Path, state: &[u8], outpoints: &[(u64, u32)]) -> Result<()> {
    let set = UtxoSet::open(dir, state)?;
    let view = set.view();
    // Every 50th outpoint still touches every by-outpoint block (about 250 entries each).
    for &(t, v) in outpoints.iter().step_by(50) {
        view.get(t, v)?;
    }
    for h in 0..6 {
        view.list(&hx(h))?;
    }
    view.for_each(&mut |_, _| {})
}

#[test]
fn corruption_is_reported_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = UtxoSet::open(dir.path(), &[]).unwrap();
    let mut outpoints = Vec::new();
    for i in 0..1500u64 {
        set.add(hx((i % 5) as u8), i, (i % 2) as u32, i * 3);
        outpoints.push((i, (i % 2) as u32));
    }
    set.flush(&mut alloc).unwrap();
    for i in 0..40 {
        set.spend(i * 7, ((i * 7) % 2) as u32).unwrap();
    }
    set.flush(&mut alloc).unwrap();
    let state = set.state();
    drop(set);
    read_all(dir.path(), &state, &outpoints).unwrap();
    for name in ["utxo-1.run", "utxo-2.run"] {
        let path = dir.path().join(name);
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
        // Every byte of small files; in big ones every 29th plus every frame header & footer.
        let step = if good.len() > 4000 { 29 } else { 1 };
        let headers = starts.iter().flat_map(|&s| s..s + 5);
        let positions = (0..good.len())
            .step_by(step)
            .chain(headers)
            .chain(footer..good.len());
        for p in positions {
            let mut bad = good.clone();
            bad[p] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            let err = read_all(dir.path(), &state, &outpoints).expect_err("flip not detected");
            let prefix = format!(
                "corrupt store file {} at offset {}: ",
                path.display(),
                expected_at(p)
            );
            assert!(err.to_string().starts_with(&prefix), "flip at {p}: {err}");
        }
        for len in (0..good.len()).step_by(61) {
            fs::write(&path, &good[..len]).unwrap();
            let err = read_all(dir.path(), &state, &outpoints).expect_err("truncation");
            let at = len.saturating_sub(sorted_file::footer_len(4));
            let at = if len < sorted_file::footer_len(4) {
                0
            } else {
                at
            };
            let prefix = format!("corrupt store file {} at offset {at}: ", path.display());
            assert!(err.to_string().starts_with(&prefix), "cut at {len}: {err}");
        }
        fs::write(&path, &good).unwrap();
    }
}

#[test]
fn bad_contents_under_valid_checksums_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = UtxoSet::open(dir.path(), &[]).unwrap();
    let mut outpoints = Vec::new();
    for i in 0..600u64 {
        set.add(hx((i % 5) as u8), i * 3, (i % 9) as u32, i << 20);
        outpoints.push((i * 3, (i % 9) as u32));
    }
    for i in 0..60 {
        set.spend(i * 30, 0).unwrap();
    }
    set.flush(&mut alloc).unwrap();
    let state = set.state();
    drop(set);
    let path = dir.path().join("utxo-1.run");
    let good = fs::read(&path).unwrap();
    let (frames, _) = frame_starts(&good, &path);
    let mut seed = 1;
    let prefix = format!("corrupt store file {} at offset ", path.display());
    for _ in 0..400 {
        let mut bad = good.clone();
        sorted_file::mutate_with_valid_checksums(&mut bad, &frames, 4, &mut seed);
        fs::write(&path, &bad).unwrap();
        // Some mutations are still well-formed (a changed value); the rest must be reported.
        if let Err(e) = read_all(dir.path(), &state, &outpoints) {
            assert!(e.to_string().starts_with(&prefix), "{e}");
        }
    }
    // The public fuzzing aid: mutate anywhere, then reseal every checksum.
    for i in 0..200u64 {
        let mut bad = good.clone();
        for j in 0..1 + i % 4 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(j);
            let at = (seed >> 20) as usize % bad.len();
            bad[at] ^= (seed >> 8) as u8 | 1;
        }
        super::reseal_checksums(&mut bad);
        fs::write(&path, &bad).unwrap();
        if let Err(e) = read_all(dir.path(), &state, &outpoints) {
            assert!(e.to_string().starts_with(&prefix), "{e}");
        }
    }
}

#[test]
fn arbitrary_bytes_as_a_run_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("utxo-1.run");
    let mut x: u64 = 99;
    for len in [0usize, 1, 43, 44, 45, 100, 5000] {
        for _ in 0..20 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (x >> 56) as u8
                })
                .collect();
            fs::write(&path, &bytes).unwrap();
            assert!(UtxoSet::open(dir.path(), &[1, 1, 1]).is_err());
        }
    }
}

/// Bytes per unspent output of a compacted run on the synthetic chain.
#[test]
fn space_per_utxo_on_synthetic_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = UtxoSet::open(dir.path(), &[]).unwrap();
    let mut chain = super::synthetic::Chain::new(7);
    for _ in 0..120_000 {
        let (txnum, tx) = chain.next_tx();
        for (t, v, h) in tx.spends {
            assert_eq!(set.spend(t, v).unwrap().map(|x| x.0), Some(h));
        }
        for (vout, (h, value)) in tx.outputs.into_iter().enumerate() {
            set.add(h, txnum, vout as u32, value);
        }
        if txnum % 40_000 == 39_999 {
            set.flush(&mut alloc).unwrap();
            set.compact(&mut alloc, 1 << 20, u64::MAX).unwrap();
        }
    }
    set.flush(&mut alloc).unwrap();
    set.merge_range(0..set.runs.len(), &mut alloc, 1 << 20)
        .unwrap();
    let (live, dead) = set.runs[0].counts();
    assert_eq!(dead, 0);
    let bytes = set.runs[0].size();
    let per = bytes as f64 / live as f64;
    println!("utxo run: {bytes} bytes for {live} outputs = {per:.2} B/utxo");
    assert!(per < 20.0, "{per:.2} B/utxo");
}

#[derive(Clone, Debug)]
enum Op {
    Add(u8, u64, u32, u64),
    Spend(u64, u32),
    /// `find` then `spend_found`, as `Store::apply_block` spends.
    SpendFound(u64, u32),
    Flush,
    Compact(usize),
    CompactAll,
    /// Waits for a background merge and installs it.
    Settle,
    Commit,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..5, 0u64..12, 0u32..3, any::<u64>()).prop_map(|(h, t, v, x)| Op::Add(h, t, v, x)),
        2 => (0u64..12, 0u32..3).prop_map(|(t, v)| Op::Spend(t, v)),
        2 => (0u64..12, 0u32..3).prop_map(|(t, v)| Op::SpendFound(t, v)),
        2 => Just(Op::Flush),
        1 => prop_oneof![Just(0usize), Just(300), Just(1 << 20)].prop_map(Op::Compact),
        1 => Just(Op::CompactAll),
        1 => Just(Op::Settle),
        1 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

/// The run files in `dir`, oldest (lowest id) first.
fn run_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<(u64, String)> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let id = name
                .strip_prefix("utxo-")?
                .strip_suffix(".run")?
                .parse()
                .ok()?;
            Some((id, name))
        })
        .collect();
    names.sort();
    names.into_iter().map(|(_, name)| name).collect()
}

fn check_view(set: &UtxoSet, model: &BTreeMap<(u64, u32), (HashX, u64)>) {
    let view = set.view();
    let mut want: Vec<(HashX, Utxo)> = model
        .iter()
        .map(|(&(t, v), &(h, val))| (h, utxo(t, v, val)))
        .collect();
    want.sort_by_key(|(h, u)| (*h, u.txnum, u.vout));
    assert_eq!(all_utxos(&view), want);
    for h in 0..5 {
        let listed: Vec<Utxo> = want
            .iter()
            .filter(|(x, _)| *x == hx(h))
            .map(|(_, u)| *u)
            .collect();
        assert_eq!(view.list(&hx(h)).unwrap(), listed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn matches_a_model(
        ops in proptest::collection::vec(op(), 1..60),
        background in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        // In the background every merge runs on its own thread.
        let threshold = if background { 0 } else { u64::MAX };
        let mut alloc = ids();
        let mut set = UtxoSet::open(dir.path(), &[]).unwrap();
        let mut model: BTreeMap<(u64, u32), (HashX, u64)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Add(h, t, v, val) => {
                    if let std::collections::btree_map::Entry::Vacant(e) = model.entry((t, v)) {
                        set.add(hx(h), t, v, val);
                        e.insert((hx(h), val));
                    }
                }
                Op::Spend(t, v) => {
                    prop_assert_eq!(set.spend(t, v).unwrap(), model.remove(&(t, v)));
                }
                Op::SpendFound(t, v) => {
                    let spent = match set.find(t, v).unwrap() {
                        Some(found) => {
                            prop_assert_eq!(Some((found.hashx, found.value)), model.get(&(t, v)).copied());
                            set.spend_found(t, v, found).unwrap()
                        }
                        None => set.spend(t, v).unwrap(),
                    };
                    prop_assert_eq!(spent, model.remove(&(t, v)));
                }
                Op::Flush => {
                    set.flush(&mut alloc).unwrap();
                    check_view(&set, &model);
                }
                Op::Compact(memory) => {
                    set.flush(&mut alloc).unwrap();
                    set.compact(&mut alloc, memory, threshold).unwrap();
                    check_view(&set, &model);
                }
                Op::CompactAll => {
                    set.flush(&mut alloc).unwrap();
                    set.compact_all(&mut alloc, 300).unwrap();
                    assert!(set.file_names().len() <= 1);
                    assert!(!set.compact_all(&mut alloc, 300).unwrap(), "nothing left to merge");
                    check_view(&set, &model);
                }
                Op::Settle => {
                    set.flush(&mut alloc).unwrap();
                    set.finish_background(true).unwrap();
                    check_view(&set, &model);
                }
                Op::Commit => set.committed(),
                Op::Reopen => {
                    set.flush(&mut alloc).unwrap();
                    set.committed();
                    let state = set.state();
                    let named = set.file_names();
                    drop(set);
                    // Dropped mid-merge or not, no unnamed run is left behind.
                    assert_eq!(run_files(dir.path()), named);
                    set = UtxoSet::open(dir.path(), &state).unwrap();
                    check_view(&set, &model);
                }
            }
            for t in 0..12 {
                for v in 0..3 {
                    prop_assert_eq!(set.get(t, v).unwrap(), model.get(&(t, v)).copied());
                }
            }
        }
    }
}

#[test]
fn buffer_bytes_count_buckets_and_growth_comes_before_doubling() {
    let dir = tempfile::tempdir().unwrap();
    let mut set = UtxoSet::open(dir.path(), &[]).unwrap();
    assert_eq!((set.buffer_bytes(), set.buffer_growth()), (0, 0));
    let entry = size_of::<((u64, u32), Slot)>() + 1;
    for n in 0..3584 {
        set.add(hx(1), n, 0, 1);
    }
    // 3,584 entries need 4,096 buckets (7/8 full at most), so the table is full.
    assert_eq!(set.buffer_bytes(), 4096 * entry);
    assert_eq!(set.buffer_growth(), 2 * 4096 * entry);
    set.add(hx(1), 3584, 0, 1);
    assert_eq!(set.buffer_bytes(), 8192 * entry);
    assert_eq!(set.buffer_growth(), 0, "half full: room to grow");
    for n in 0..1000 {
        set.spend(n, 0).unwrap();
    }
    assert_eq!(set.buffer_bytes(), 8192 * entry, "removals free no buckets");
    assert_eq!(table_bytes(3, 10), 4 * 11);
    assert_eq!(table_bytes(7, 10), 8 * 11);
    assert_eq!(table_bytes(14, 10), 16 * 11);
}

#[test]
fn views_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<UtxoView>();
    shareable::<crate::history::HistoryView>();
}

/// A set holding `runs` flushed runs of 300 outputs each over 30 scripts, the later ones
/// spending a third of the earlier ones' outputs.
fn flushed(dir: &Path, alloc: &mut dyn FnMut() -> u64, runs: u64) -> UtxoSet {
    let mut set = UtxoSet::open(dir, &[]).unwrap();
    for t in 0..runs * 300 {
        set.add(hx((t % 30) as u8), t, 0, t * 10);
        if t >= 300 && t % 3 == 0 {
            set.spend(t - 300, 0).unwrap();
        }
        if t % 300 == 299 {
            set.flush(alloc).unwrap();
        }
    }
    set
}

/// The outputs `flushed(_, _, runs)` leaves unspent.
fn model_of(runs: u64) -> BTreeMap<(u64, u32), (HashX, u64)> {
    let n = runs * 300;
    (0..n)
        .filter(|&t| t + 300 >= n || (t + 300) % 3 != 0)
        .map(|t| ((t, 0), (hx((t % 30) as u8), t * 10)))
        .collect()
}

#[test]
fn a_background_merge_writes_what_an_inline_merge_writes() {
    let (inline_dir, bg_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = (ids(), ids());
    let mut inline = flushed(inline_dir.path(), &mut a, 4);
    let mut bg = flushed(bg_dir.path(), &mut b, 4);
    check_view(&inline, &model_of(4));
    assert!(inline.compact(&mut a, 1 << 20, u64::MAX).unwrap());
    // The first call only starts the merge; the runs stay as they are until it is done.
    assert!(!bg.compact(&mut b, 1 << 20, 0).unwrap());
    assert!(bg.background.is_some());
    assert_eq!(bg.file_names().len(), 4);
    check_view(&bg, &model_of(4));
    assert!(bg.finish_background(true).unwrap());
    assert_eq!(bg.file_names(), inline.file_names());
    let name = inline.file_names()[0].clone();
    assert_eq!(
        fs::read(inline_dir.path().join(&name)).unwrap(),
        fs::read(bg_dir.path().join(&name)).unwrap(),
        "byte for byte the same run"
    );
    check_view(&bg, &model_of(4));
}

#[test]
fn newer_runs_are_merged_while_a_background_merge_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = flushed(dir.path(), &mut alloc, 2);
    // A background merge of both runs that finishes only when the test says so.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let inputs = set.runs.clone();
    let (id, path) = set.new_run(&mut alloc);
    let keys = inputs.iter().map(|r| r.id()).collect();
    set.background = Some(
        Background::start("test-merge", dir.path(), keys, move |cancel| {
            wait.recv().unwrap();
            merge_runs(&inputs, true, &path, id, 1 << 20, cancel).map(|(run, _)| run)
        })
        .unwrap(),
    );
    // Newer runs spend outputs of the merging ones: their tombstones must keep hiding them.
    for t in 600..700 {
        set.add(hx((t % 30) as u8), t, 0, t * 10);
        set.spend(t - 600, 0).unwrap();
        if t % 50 == 49 {
            set.flush(&mut alloc).unwrap();
        }
    }
    let mut model = model_of(2);
    for t in 600..700 {
        model.remove(&(t - 600, 0));
        model.insert((t, 0), (hx((t % 30) as u8), t * 10));
    }
    assert!(set.compact(&mut alloc, 1 << 20, u64::MAX).unwrap());
    assert_eq!(set.runs.len(), 3, "{:?}", set.file_names());
    assert_eq!(set.background_range(), Some(0..2));
    check_view(&set, &model);
    go.send(()).unwrap();
    assert!(set.finish_background(true).unwrap());
    assert_eq!(set.runs.len(), 2);
    assert_eq!(set.runs[0].id(), id);
    check_view(&set, &model);
    set.committed();
    assert_eq!(run_files(dir.path()), set.file_names());
}

#[test]
fn merging_everything_stops_a_background_merge() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = flushed(dir.path(), &mut alloc, 4);
    set.compact(&mut alloc, 1 << 20, 0).unwrap();
    assert!(set.background.is_some());
    assert!(set.compact_all(&mut alloc, 1 << 20).unwrap());
    assert!(set.background.is_none());
    assert_eq!(set.file_names().len(), 1);
    check_view(&set, &model_of(4));
    set.committed();
    assert_eq!(run_files(dir.path()), set.file_names());
}

#[test]
fn dropping_the_set_stops_a_background_merge_and_removes_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let mut set = flushed(dir.path(), &mut alloc, 4);
    let named = set.file_names();
    set.compact(&mut alloc, 1 << 20, 0).unwrap();
    drop(set);
    assert_eq!(run_files(dir.path()), named);
}

#[test]
fn a_cancelled_merge_stops_with_an_error_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let set = flushed(dir.path(), &mut alloc, 4);
    let named = set.file_names();
    let (id, path) = set.new_run(&mut alloc);
    let err = merge_runs(&set.runs, true, &path, id, 1 << 20, &AtomicBool::new(true))
        .err()
        .unwrap();
    assert_eq!(err.to_string(), "UTXO merge cancelled");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), named.len());
}
