//! Fuzz target: a small valid store is built once per index mode (full, lean); each input
//! replaces one of its files (the first byte picks the mode and the file) with the remaining
//! bytes, then the store is opened and everything is read, including a rollback through the
//! undo records. Errors are fine; panics are not.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use ferrum_storage::{BlockData, Options, Store, TxData, HASHX_LEN};
use libfuzzer_sys::fuzz_target;

const BLOCKS: u32 = 24;

fn options(lean: bool) -> Options {
    Options {
        undo_blocks: 4,
        compaction_memory: 1 << 16,
        store_txids: !lean,
        background_merge_bytes: u64::MAX,
    }
}

fn txid(n: u64) -> [u8; 32] {
    let mut t = [0u8; 32];
    t[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    t[8..16].copy_from_slice(&n.to_le_bytes());
    t
}

fn key(n: u64) -> [u8; HASHX_LEN] {
    [n as u8 % 5; HASHX_LEN]
}

/// Block `h`: a coinbase paying two keys, then a tx spending output 0 of the previous
/// block's coinbase (tx numbers are 2 per block).
fn block(h: u32) -> BlockData {
    let base = u64::from(h) * 2;
    let mut txs = vec![TxData {
        txid: txid(base),
        spends: vec![],
        outputs: vec![Some((key(base), 50)), Some((key(base + 1), 25)), None],
    }];
    let spends = if h == 0 {
        vec![]
    } else {
        vec![(txid(base - 2), 0)]
    };
    txs.push(TxData {
        txid: txid(base + 1),
        spends,
        outputs: vec![Some((key(base + 2), 49))],
    });
    let mut header = [h as u8; 80];
    header[..4].copy_from_slice(&h.to_le_bytes());
    BlockData { header, txs }
}

/// The pristine store's files in a mode: (name, bytes), sorted by name.
fn pristine(lean: bool) -> &'static Vec<(String, Vec<u8>)> {
    static FILES: [OnceLock<Vec<(String, Vec<u8>)>>; 2] = [OnceLock::new(), OnceLock::new()];
    FILES[usize::from(lean)].get_or_init(|| {
        let dir = scratch_root().join(if lean { "pristine-lean" } else { "pristine" });
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = Store::open(&dir, options(lean)).expect("open");
        for h in 0..BLOCKS {
            store.apply_block(&block(h)).expect("apply");
            if h % 3 == 2 {
                store.commit().expect("commit");
            }
            if h % 8 == 7 {
                store.compact().expect("compact");
            }
        }
        store.set_meta("tip", b"x");
        store.commit().expect("commit");
        drop(store);
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| {
                let e = e.expect("entry");
                let bytes = std::fs::read(e.path()).expect("read");
                (e.file_name().into_string().expect("utf-8"), bytes)
            })
            .collect();
        files.sort();
        files
    })
}

/// A tmpfs when there is one: every run fsyncs.
fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = Path::new("/dev/shm");
        if base.is_dir() {
            tempfile::tempdir_in(base).expect("tempdir")
        } else {
            tempfile::tempdir().expect("tempdir")
        }
    })
    .path()
}

fn read_everything(dir: &Path, lean: bool) -> ferrum_storage::Result<()> {
    let mut store = Store::open(dir, options(lean))?;
    let snap = store.snapshot();
    let blocks = snap.height().map_or(0, |h| h + 1);
    for h in 0..blocks.min(BLOCKS + 2) {
        snap.header(h)?;
        snap.block_txs(h)?;
    }
    for n in 0..snap.tx_count().min(u64::from(BLOCKS) * 2 + 4) {
        if !lean {
            snap.txid(n)?;
        }
        snap.tx_height(n)?;
        snap.utxo(n, 0)?;
        snap.unspent(&txid(n), 0)?;
    }
    for k in 0..6 {
        snap.history(&key(k))?;
        snap.utxos(&key(k))?;
    }
    snap.for_each_utxo(|_, _| {})?;
    snap.for_each_history(|_, _| {})?;
    snap.meta("tip");
    // A lean store is given the rolled-back blocks' spent txids, newest block first.
    let top = store.height().unwrap_or(0);
    let spent: Vec<_> = match lean {
        true => (0..3.min(top + 1))
            .map(|i| block(top - i).spent_txids())
            .collect(),
        false => Vec::new(),
    };
    store.rollback(3, &spent)?;
    let next = store.height().map_or(0, |h| h + 1);
    if next < BLOCKS * 2 {
        // Applying may fail (a spend the corrupted store cannot resolve); it must not panic.
        let _ = store.apply_block(&block(next));
    }
    store.compact()?;
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, content)) = data.split_first() else {
        return;
    };
    let lean = which & 1 == 1;
    let files = pristine(lean);
    let dir = scratch_root().join("work");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let target = usize::from(which >> 1) % files.len();
    for (i, (name, bytes)) in files.iter().enumerate() {
        let bytes = if i == target { content } else { &bytes[..] };
        std::fs::write(dir.join(name), bytes).expect("write");
    }
    let _ = read_everything(&dir, lean);
});
