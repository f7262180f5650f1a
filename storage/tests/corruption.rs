//! Corruption test: in a small committed store, flip bytes of and truncate each kind of file
//! (manifest, each array, txid index run, undo log, UTXO run, history segment). Opening and
//! reading everything (and rolling back through the undo records) must either give the right
//! answers or `Error::Corrupt` naming that file and an offset — never a panic or a wrong answer.
//! Run for a full store and for a lean one (no tx hash array; txid index runs with whole
//! txids).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::{check, Chain};
use ferrum_storage::{Error, Options, Store};

const BLOCKS: u32 = 40;
const UNDO: u32 = 5;

fn options(lean: bool) -> Options {
    Options {
        undo_blocks: UNDO,
        compaction_memory: 1 << 16,
        store_txids: !lean,
        background_merge_bytes: u64::MAX,
    }
}

/// Builds the pristine store: commits of a few blocks each, some compactions, a rollback.
fn build(dir: &Path, chain: &mut Chain, lean: bool) {
    let mut store = Store::open(dir, options(lean)).unwrap();
    for h in 0..BLOCKS {
        store.apply_block(chain.block(h)).unwrap();
        if h % 3 == 2 {
            store.commit().unwrap();
        }
        if h % 10 == 9 {
            store.compact().unwrap();
        }
    }
    let spent = chain.rollback_txids(BLOCKS, 2, lean);
    store.rollback(2, &spent).unwrap();
    for h in BLOCKS - 2..BLOCKS {
        store.apply_block(chain.block(h)).unwrap();
    }
    store.commit().unwrap();
}

/// Kind of a store file: its name up to the first '-' (or the whole name).
fn kind(name: &str) -> String {
    name.split('-').next().unwrap_or(name).to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Opens the store in `dir` and reads everything, then rolls back as far as the undo
/// records allow and reads everything again. `Ok(())` = every answer was right.
fn exercise(dir: &Path, chain: &mut Chain, lean: bool) -> ferrum_storage::Result<()> {
    let mut store = Store::open(dir, options(lean))?;
    check(&store.snapshot(), chain.state(BLOCKS as usize), &[])?;
    let spent = chain.rollback_txids(BLOCKS, UNDO, lean);
    store.rollback(UNDO, &spent)?;
    check(
        &store.snapshot(),
        chain.state((BLOCKS - UNDO) as usize),
        &[],
    )
}

/// Asserts `err` is `Error::Corrupt` about `path`, with the exact message prefix.
fn assert_names(err: &Error, path: &Path, what: &str) {
    let msg = err.to_string();
    let prefix = format!("corrupt store file {} at offset ", path.display());
    let rest = msg
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{what}: expected an error about {path:?}, got: {msg}"));
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    assert!(
        digits > 0 && rest[digits..].starts_with(": "),
        "{what}: bad offset in: {msg}"
    );
    assert!(matches!(err, Error::Corrupt { .. }), "{what}: {err:?}");
}

#[test]
fn every_kind_of_file_reports_corruption() {
    every_kind_of_file_reports_corruption_in(false);
}

#[test]
fn every_kind_of_file_of_a_lean_store_reports_corruption() {
    every_kind_of_file_reports_corruption_in(true);
}

fn every_kind_of_file_reports_corruption_in(lean: bool) {
    let root = tempfile::tempdir().unwrap();
    let pristine = root.path().join("pristine");
    let work = root.path().join("work");
    let mut chain = Chain::new(0xc0_44_u64);
    build(&pristine, &mut chain, lean);
    copy_dir(&pristine, &work);
    exercise(&work, &mut chain, lean).expect("pristine store reads back");

    // The largest file of each kind.
    let mut files: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for entry in fs::read_dir(&pristine).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name == "LOCK" {
            continue; // empty, holds no data: only its flock matters
        }
        let len = entry.metadata().unwrap().len();
        let slot = files.entry(kind(&name)).or_insert((0, String::new()));
        if len >= slot.0 {
            *slot = (len, name);
        }
    }
    let kinds: Vec<&String> = files.keys().collect();
    for want in ["MANIFEST", "hdr", "cnt", "txh", "txi", "undo", "utxo"] {
        let expected = want != "txh" || !lean;
        assert_eq!(files.contains_key(want), expected, "{want} in {kinds:?}");
    }
    assert!(
        files.len() >= if lean { 7 } else { 8 },
        "expected a history segment kind too: {kinds:?}"
    );

    for (kind, (len, name)) in &files {
        let path = work.join(name);
        let original = fs::read(pristine.join(name)).unwrap();
        // Every flip of a file the reads cover fully must be caught.
        let must_catch = ["MANIFEST", "hdr", "cnt", "txh"].contains(&kind.as_str());
        let step = (*len as usize / 60).max(1);
        let mut positions: Vec<usize> = (0..original.len()).step_by(step).collect();
        positions.extend(original.len().saturating_sub(24)..original.len());
        let mut caught = 0;
        for &at in &positions {
            copy_dir(&pristine, &work);
            let mut bad = original.clone();
            bad[at] ^= 0x20;
            fs::write(&path, &bad).unwrap();
            match exercise(&work, &mut chain, lean) {
                Ok(()) => assert!(!must_catch, "{name}: flip at {at} went unnoticed"),
                Err(e) => {
                    assert_names(&e, &path, &format!("{name} flip at {at}"));
                    caught += 1;
                }
            }
        }
        assert!(caught > 0, "{name}: no flip was caught");
        for cut in [0, original.len() / 2, original.len() - 1] {
            copy_dir(&pristine, &work);
            fs::write(&path, &original[..cut]).unwrap();
            match exercise(&work, &mut chain, lean) {
                // A rollback lowers an undo file's last height without rewriting it, so its
                // last record may be dead bytes that nothing reads: cutting them is harmless
                // (the answers were checked right).
                Ok(()) if kind == "undo" && cut == original.len() - 1 => {}
                Ok(()) => panic!("{name}: truncation to {cut} went unnoticed"),
                Err(err) => assert_names(&err, &path, &format!("{name} cut at {cut}")),
            }
        }
        eprintln!("{name}: {caught} of {} flips caught", positions.len());
    }
}
