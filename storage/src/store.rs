//! The single writer: applies blocks to in-memory buffers, commits them atomically, rolls
//! back through undo records, compacts, and publishes snapshots to readers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use crate::array::{ArrayWriter, COUNTS, HEADERS, TXHASHES};
use crate::background::check_cancel;
use crate::block::BlockData;
use crate::error::{Error, Result};
use crate::file::sync_dir;
use crate::history::HistorySet;
use crate::manifest::{Manifest, MANIFEST, MANIFEST_TMP};
use crate::options::Options;
use crate::snapshot::{Reader, Snapshot, SnapshotParts};
use crate::txindex::{LiveTxs, Pruning, TxIndexWriter};
use crate::undo::{BlockUndo, UndoLog};
use crate::utxo::{Found, UtxoSet, UtxoView};
use crate::{Hash32, HashX};

/// Bytes allocated for `len` pending bytes of `width`-byte array records: the array appends
/// records to a vector that starts empty after each commit and doubles, so its capacity is
/// `width` times the next power of two records.
fn array_capacity(len: usize, width: usize) -> usize {
    match len {
        0 => 0,
        _ => (len / width).next_power_of_two() * width,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The store's single writer. Blocks are applied to memory, made durable by `commit`, and
/// published to readers as a new `Snapshot`; see docs/STORAGE.md for the files it keeps.
pub struct Store {
    dir: PathBuf,
    opts: Options,
    /// No txids stored (`Options::store_txids` false): `txhashes` stays empty.
    lean: bool,
    next_id: u64,
    tx_count: u64,
    headers: ArrayWriter,
    counts: ArrayWriter,
    txhashes: ArrayWriter,
    txindex: TxIndexWriter,
    undo: UndoLog,
    utxo: UtxoSet,
    history: HistorySet,
    meta: BTreeMap<String, Vec<u8>>,
    /// Something changed since the last commit.
    dirty: bool,
    /// A write failed half-way; only reopening (recovery) makes the store usable again.
    failed: bool,
    latest: Snapshot,
    published: Arc<RwLock<Snapshot>>,
    /// Held for the store's lifetime: a second writer on the same directory would corrupt it.
    _lock: fs::File,
}

/// The lock file that marks a directory as open by a writer.
const LOCK: &str = "LOCK";

/// Takes the directory's writer lock, or says who holds it.
fn lock_dir(dir: &Path) -> Result<fs::File> {
    let path = dir.join(LOCK);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Invalid(format!(
            "the store in {} is open in another process (it holds {}); stop that process first",
            dir.display(),
            path.display()
        ))),
        Err(fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// Names the store writes: `MANIFEST.tmp`, `<kind>-<id>.<ext>` for its own kinds, and a
/// merge's spill files `<that name>.<n>.sort`.
fn is_store_file_name(name: &str) -> bool {
    if name == MANIFEST_TMP {
        return true;
    }
    let Some((stem, ext)) = name.rsplit_once('.') else {
        return false;
    };
    if ext == "sort" {
        return stem.rsplit_once('.').is_some_and(|(file, n)| {
            n.bytes().all(|b| b.is_ascii_digit()) && is_store_file_name(file)
        });
    }
    let Some((kind, id)) = stem.split_once('-') else {
        return false;
    };
    let known = matches!(
        (kind, ext),
        ("hdr" | "cnt" | "txh", "arr")
            | ("txi" | "utxo", "run")
            | ("hist", "seg")
            | ("undo", "log")
    );
    known && !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
}

/// The mode the store in `dir` was built in: whether it keeps txids (`Options::store_txids`),
/// or None while it holds no blocks (a new or empty store takes the mode it is opened in).
/// Reads the committed manifest only, without the writer lock, so a caller can open a store
/// in its own mode, or refuse the other mode in its own terms, before [`Store::open`].
pub fn built_with_txids(dir: &Path) -> Result<Option<bool>> {
    Ok(Manifest::read(dir)?
        .filter(|m| m.headers.len > 0)
        .map(|m| !m.lean))
}

impl Store {
    /// Opens the store in `dir` (created if missing), recovering to the last committed
    /// manifest: array bytes past it are truncated and files it does not name are deleted.
    /// A store holding blocks opens only in the mode it was built in (`store_txids`; see
    /// [`built_with_txids`]).
    pub fn open(dir: &Path, opts: Options) -> Result<Store> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = lock_dir(dir)?;
        let mut m = Manifest::read(dir)?.unwrap_or_default();
        let lean = !opts.store_txids;
        if m.headers.len > 0 && m.lean != lean {
            let built = if m.lean {
                "without txids (lean)"
            } else {
                "with txids stored"
            };
            return Err(Error::Invalid(format!(
                "the store in {} was built {built}; open it in the same mode or delete the \
                 directory and resync",
                dir.display()
            )));
        }
        // A store without blocks takes the mode it is opened in (its next commit records it).
        m.lean = lean;
        let headers = ArrayWriter::open(dir, &HEADERS, m.headers)?;
        let counts = ArrayWriter::open(dir, &COUNTS, m.counts)?;
        let txhashes = ArrayWriter::open(dir, &TXHASHES, m.txhashes)?;
        let txindex = TxIndexWriter::open(dir, &m.txindex, lean)?;
        let undo = UndoLog::open(dir, opts.undo_blocks, &m.undo, lean)?;
        let utxo = UtxoSet::open(dir, &m.utxo)?;
        let history = HistorySet::open(dir, &m.history)?;
        let blocks = headers.len();
        if blocks > 0 {
            let last = counts.view().get(blocks - 1)?;
            if u64::from_le_bytes(last.try_into().expect("8 bytes")) != m.tx_count {
                return Err(Error::corrupt(
                    dir.join(MANIFEST),
                    0,
                    "tx count disagrees with the count array",
                ));
            }
        }
        let latest = Snapshot::new(SnapshotParts {
            blocks,
            tx_count: m.tx_count,
            headers: headers.view().clone(),
            counts: counts.view().clone(),
            txhashes: txhashes.view().clone(),
            txindex: txindex.view(),
            utxo: utxo.view(),
            history: history.view(),
            meta: Arc::new(m.meta.clone()),
            stores_txids: !lean,
        });
        let store = Store {
            dir: dir.to_path_buf(),
            opts,
            lean,
            next_id: m.next_id,
            tx_count: m.tx_count,
            headers,
            counts,
            txhashes,
            txindex,
            undo,
            utxo,
            history,
            meta: m.meta,
            dirty: false,
            failed: false,
            published: Arc::new(RwLock::new(latest.clone())),
            latest,
            _lock: lock,
        };
        store.remove_unreferenced()?;
        Ok(store)
    }

    /// Deletes crash leftovers: every store-named file in the directory that no part of the
    /// manifest names. Files the store could not have written are left alone, so a
    /// DB_DIRECTORY pointed at the wrong place never loses anyone's data.
    fn remove_unreferenced(&self) -> Result<()> {
        let mut keep: HashSet<String> = [MANIFEST.to_string(), LOCK.to_string()].into();
        keep.extend(self.headers.file_names());
        keep.extend(self.counts.file_names());
        keep.extend(self.txhashes.file_names());
        keep.extend(self.txindex.file_names());
        keep.extend(self.undo.file_names());
        keep.extend(self.utxo.file_names());
        keep.extend(self.history.file_names());
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut removed = false;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let is_file = entry
                .file_type()
                .map_err(|e| Error::io(entry.path(), e))?
                .is_file();
            let name = entry.file_name();
            let ours = name.to_str().is_some_and(is_store_file_name);
            let referenced = name.to_str().is_some_and(|n| keep.contains(n));
            if is_file && ours && !referenced {
                fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Height of the last applied block, committed or not (None = empty).
    pub fn height(&self) -> Option<u32> {
        self.headers.len().checked_sub(1).map(|h| h as u32)
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(Error::Invalid(
                "store is unusable after a failed write: reopen it to recover the last commit"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Runs a step that may leave buffers half-changed if it fails; a failure poisons the
    /// store until it is reopened.
    fn guarded<T>(&mut self, step: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        self.check_usable()?;
        let result = step(self);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Tx number of `txid` among committed and uncommitted transactions.
    fn find_txnum(&self, txid: &Hash32) -> Result<Option<u64>> {
        if let Some(n) = self.txindex.find_pending(txid) {
            return Ok(Some(n));
        }
        self.latest.find_tx(txid)
    }

    /// Buffers one block at `height() + 1`. An invalid spend is `Error::Invalid` and leaves the
    /// store as it was.
    pub fn apply_block(&mut self, block: &BlockData) -> Result<()> {
        self.check_usable()?;
        let height = u32::try_from(self.headers.len())
            .map_err(|_| Error::Invalid("block height out of range".into()))?;
        let first = self.tx_count;
        // Resolve every spend before changing anything.
        let mut local_txids: HashMap<Hash32, u64> = HashMap::new();
        let mut created: HashMap<(u64, u32), (HashX, u64)> = HashMap::new();
        let mut spent_here: HashSet<(u64, u32)> = HashSet::new();
        let mut spent = Vec::new();
        // Where each spent output was found (None: created earlier in this block), so that
        // spending it does not search the runs again.
        let mut found = Vec::new();
        for (i, tx) in block.txs.iter().enumerate() {
            let txnum = first + i as u64;
            for &(prev, vout) in &tx.spends {
                let missing = || {
                    Error::Invalid(format!(
                        "block {height} tx {} spends missing output {}:{vout}",
                        hex(&tx.txid),
                        hex(&prev)
                    ))
                };
                let prev_num = match local_txids.get(&prev) {
                    Some(&n) => n,
                    None => self.find_txnum(&prev)?.ok_or_else(missing)?,
                };
                let outpoint = (prev_num, vout);
                if !spent_here.insert(outpoint) {
                    return Err(missing());
                }
                let (hashx, value) = match created.get(&outpoint) {
                    Some(&out) => {
                        found.push(None);
                        out
                    }
                    None => {
                        let f = self.utxo.find(prev_num, vout)?.ok_or_else(missing)?;
                        found.push(Some(f));
                        (f.hashx, f.value)
                    }
                };
                spent.push((hashx, prev_num, vout, value));
            }
            local_txids.insert(tx.txid, txnum);
            for (vout, out) in tx.outputs.iter().enumerate() {
                if let Some(out) = out {
                    let vout = u32::try_from(vout)
                        .map_err(|_| Error::Invalid("output index out of range".into()))?;
                    created.insert((txnum, vout), *out);
                }
            }
        }
        self.guarded(|s| s.apply_resolved(block, height, spent, found))
    }

    /// Second half of `apply_block`: every spend is known to be valid.
    fn apply_resolved(
        &mut self,
        block: &BlockData,
        height: u32,
        spent: Vec<(HashX, u64, u32, u64)>,
        found: Vec<Option<Found>>,
    ) -> Result<()> {
        let first = self.tx_count;
        let mut undo = BlockUndo {
            height,
            first_txnum: first,
            created: Vec::new(),
            spent,
        };
        let mut next_spend = 0;
        let mut touched: Vec<HashX> = Vec::new();
        for (i, tx) in block.txs.iter().enumerate() {
            let txnum = first + i as u64;
            touched.clear();
            for (prev_txid, _) in &tx.spends {
                let (hashx, prev, vout, _) = undo.spent[next_spend];
                self.txindex.spent(prev_txid, prev);
                let gone = match found[next_spend] {
                    Some(f) => self.utxo.spend_found(prev, vout, f)?,
                    None => self.utxo.spend(prev, vout)?,
                };
                next_spend += 1;
                if gone.is_none() {
                    return Err(Error::Invalid(format!(
                        "UTXO {prev}:{vout} vanished while applying block {height}"
                    )));
                }
                touched.push(hashx);
            }
            let mut outputs = 0;
            for (vout, out) in tx.outputs.iter().enumerate() {
                if let Some((hashx, value)) = *out {
                    self.utxo.add(hashx, txnum, vout as u32, value);
                    undo.created.push((txnum, vout as u32));
                    touched.push(hashx);
                    outputs += 1;
                }
            }
            touched.sort_unstable();
            touched.dedup();
            for hashx in &touched {
                self.history.append(*hashx, txnum);
            }
            if !self.lean {
                self.txhashes.push(&tx.txid);
            }
            self.txindex.add(tx.txid, txnum, outputs);
        }
        self.tx_count = first + block.txs.len() as u64;
        self.headers.push(&block.header);
        self.counts.push(&self.tx_count.to_le_bytes());
        self.undo.push(&undo);
        self.dirty = true;
        Ok(())
    }

    /// Memory held by uncommitted work, in bytes: what the buffers have allocated (hash
    /// tables by their buckets, vectors by their capacity), not just what they hold, plus
    /// what the UTXO or txid table's next doubling will take when one is nearly full (the new
    /// table is allocated before the old one is freed), so that flushing at a bound flushes
    /// before a doubling crosses it.
    pub fn pending_bytes(&self) -> usize {
        self.utxo.buffer_growth().max(self.txindex.pending_growth()) + self.pending_held()
    }

    fn pending_held(&self) -> usize {
        array_capacity(self.headers.pending_bytes(), HEADERS.width)
            + array_capacity(self.counts.pending_bytes(), COUNTS.width)
            + array_capacity(self.txhashes.pending_bytes(), TXHASHES.width)
            + self.txindex.pending_bytes()
            + self.undo.pending_bytes()
            + self.utxo.buffer_bytes()
            + self.history.buffer_bytes()
    }

    pub fn set_meta(&mut self, key: &str, value: &[u8]) {
        self.meta.insert(key.to_string(), value.to_vec());
        self.dirty = true;
    }

    /// Makes every applied block durable atomically and publishes a new snapshot.
    pub fn commit(&mut self) -> Result<()> {
        self.check_usable()?;
        if !self.dirty {
            return Ok(());
        }
        self.guarded(Store::write_commit)
    }

    fn write_commit(&mut self) -> Result<()> {
        let mut next = self.next_id;
        let mut alloc = || {
            next += 1;
            next - 1
        };
        // Data first, each file fsynced as it is written...
        self.headers.write_pending(&mut alloc)?;
        self.counts.write_pending(&mut alloc)?;
        self.txhashes.write_pending(&mut alloc)?;
        self.txindex.flush(&mut alloc)?;
        self.undo.flush(&mut alloc, self.height())?;
        self.utxo.flush(&mut alloc)?;
        self.history.flush(&mut alloc)?;
        // ...their directory entries durable before the manifest can name them...
        sync_dir(&self.dir)?;
        let manifest = Manifest {
            next_id: next,
            tx_count: self.tx_count,
            headers: self.headers.state().clone(),
            counts: self.counts.state().clone(),
            txhashes: self.txhashes.state().clone(),
            txindex: self.txindex.state(),
            undo: self.undo.refs(),
            utxo: self.utxo.state(),
            history: self.history.state(),
            meta: self.meta.clone(),
            lean: self.lean,
        };
        // ...then the manifest (tmp, fsync, rename, directory fsync): the commit point.
        manifest.write(&self.dir)?;
        self.next_id = next;
        self.headers.committed()?;
        self.counts.committed()?;
        self.txhashes.committed()?;
        self.txindex.committed();
        self.undo.committed();
        self.utxo.committed();
        self.history.committed();
        self.latest = Snapshot::new(SnapshotParts {
            blocks: self.headers.len(),
            tx_count: self.tx_count,
            headers: self.headers.view().clone(),
            counts: self.counts.view().clone(),
            txhashes: self.txhashes.view().clone(),
            txindex: self.txindex.view(),
            utxo: self.utxo.view(),
            history: self.history.view(),
            meta: Arc::new(self.meta.clone()),
            stores_txids: !self.lean,
        });
        match self.published.write() {
            Ok(mut s) => *s = self.latest.clone(),
            Err(poisoned) => *poisoned.into_inner() = self.latest.clone(),
        }
        self.dirty = false;
        Ok(())
    }

    /// How many of the newest blocks have undo records. Files are dropped whole, so this may
    /// pass `undo_blocks` (a rollback goes no further); a store written with a lower
    /// `undo_blocks` covers fewer until it has gone as many blocks further.
    pub fn undo_covered(&self) -> u64 {
        self.undo.first_height().map_or(0, |first| {
            self.headers.len().saturating_sub(u64::from(first))
        })
    }

    /// Undoes the last `n` blocks (committing pending work first) and commits the result.
    ///
    /// The txs whose outputs become unspent again must be findable by txid again. A full
    /// store reads their txids itself and ignores `spent_txids` (pass `&[]`). A lean store
    /// has none: `spent_txids` gives, newest block first, each rolled-back block's spent
    /// prevout txids in input order (the order of its `BlockData` txs' `spends`). Counts that
    /// disagree with the undo records are refused before anything changes.
    pub fn rollback(&mut self, n: u32, spent_txids: &[Vec<Hash32>]) -> Result<()> {
        self.commit()?;
        if n == 0 {
            return Ok(());
        }
        let blocks = self.headers.len();
        let covered = self.undo_covered().min(u64::from(self.undo.keep()));
        if u64::from(n) > covered {
            return Err(Error::Invalid(format!(
                "cannot roll back {n} blocks: undo records cover only the last {covered}"
            )));
        }
        let keep = blocks - u64::from(n);
        // The rolled-back blocks' undo records, newest first, read once: checked, then undone.
        let undos = (keep..blocks)
            .rev()
            .map(|height| self.undo.read(height as u32))
            .collect::<Result<Vec<_>>>()?;
        if self.lean {
            check_spent_txids(&undos, spent_txids)?;
        }
        self.guarded(|s| s.undo_blocks(keep, &undos, spent_txids))?;
        self.commit()
    }

    /// Rolls the buffers back to the first `keep` blocks using their undo records `undos`,
    /// newest first (and, in a lean store, the checked `spent_txids`).
    fn undo_blocks(
        &mut self,
        keep: u64,
        undos: &[BlockUndo],
        spent_txids: &[Vec<Hash32>],
    ) -> Result<()> {
        let mut new_tx_count = self.tx_count;
        // (tx number, its txid if given) of each output made unspent again.
        let mut unspent_again: Vec<(u64, Option<Hash32>)> = Vec::new();
        for (i, undo) in undos.iter().enumerate() {
            let given = if self.lean { spent_txids.get(i) } else { None };
            for &(txnum, vout) in &undo.created {
                self.utxo.spend(txnum, vout)?;
            }
            for (j, &(hashx, txnum, vout, value)) in undo.spent.iter().enumerate() {
                // Outputs created by this same block are gone with it.
                if txnum < undo.first_txnum {
                    self.utxo.add(hashx, txnum, vout, value);
                    unspent_again.push((txnum, given.and_then(|t| t.get(j).copied())));
                }
            }
            new_tx_count = undo.first_txnum;
        }
        let expected = match keep {
            0 => 0,
            k => {
                let c = self.counts.view().get(k - 1)?;
                u64::from_le_bytes(c.try_into().expect("8 bytes"))
            }
        };
        if expected != new_tx_count {
            return Err(Error::Invalid(format!(
                "undo records disagree with the tx count array at block {keep}"
            )));
        }
        self.history.truncate(new_tx_count);
        self.txindex.truncate(new_tx_count);
        // Their txs may have left the txid index since they were spent.
        for (txnum, txid) in unspent_again {
            if txnum < new_tx_count {
                let txid = match txid {
                    Some(txid) => txid,
                    None => self.latest.txid(txnum)?,
                };
                self.txindex.reinstate(txid, txnum);
            }
        }
        self.undo.truncate(keep as u32);
        self.headers.truncate(keep)?;
        self.counts.truncate(keep)?;
        if !self.lean {
            self.txhashes.truncate(new_tx_count)?;
        }
        self.tx_count = new_tx_count;
        self.dirty = true;
        Ok(())
    }

    /// Merges UTXO runs, history segments, txid index runs and undo files per their
    /// policies, with bounded memory, and commits. Big history merges run in the
    /// background: a call starts one and a later call installs it (see
    /// `Options::background_merge_bytes`). Returns whether any merge happened.
    pub fn compact(&mut self) -> Result<bool> {
        self.merge(Merging::Sync)
    }

    /// `compact` when following the tip, with nothing buffered between blocks: big UTXO
    /// and txid index merges run in the background too, their sort memory being free.
    pub fn compact_at_tip(&mut self) -> Result<bool> {
        self.merge(Merging::Tip)
    }

    /// Whether a background merge is done: `compact_at_tip` would install it now rather than
    /// with the next block, freeing its inputs' disk space.
    pub fn merge_done(&self) -> bool {
        self.utxo.merge_done() || self.history.merge_done() || self.txindex.merge_done()
    }

    /// Merges all UTXO runs into one and all history segments into one (the txid index and
    /// undo files follow their usual policies), with bounded memory, and commits. Meant for
    /// the end of an initial sync: the size-tiered policy of `compact` leaves O(log n) files,
    /// which repeat keys and keep tombstones. Stops any background merge first.
    /// Returns whether any merge happened.
    pub fn compact_all(&mut self) -> Result<bool> {
        self.merge(Merging::All)
    }

    fn merge(&mut self, how: Merging) -> Result<bool> {
        // Pruning the txid index reads the committed UTXO set: nothing may be buffered.
        self.commit()?;
        let did = self.guarded(|s| {
            let memory = s.opts.compaction_memory;
            // History merges stream, so they may run beside a sync's buffers; UTXO and txid
            // index merges sort, in memory that is free only at the tip.
            let (history_from, sorting_from) = match how {
                Merging::Sync => (s.opts.background_merge_bytes, u64::MAX),
                Merging::Tip => (s.opts.background_merge_bytes, s.opts.background_merge_bytes),
                Merging::All => (u64::MAX, u64::MAX),
            };
            let mut next = s.next_id;
            let mut alloc = || {
                next += 1;
                next - 1
            };
            let (a, b) = if how == Merging::All {
                (
                    s.utxo.compact_all(&mut alloc, memory)?,
                    s.history.compact_all(&mut alloc)?,
                )
            } else {
                (
                    s.utxo.compact(&mut alloc, memory, sorting_from)?,
                    s.history.compact(&mut alloc, history_from)?,
                )
            };
            let utxos = s.utxo.view();
            let pruning = Pruning {
                cost: utxos.bytes(),
                live: Box::new(move |base, end, cancel| {
                    live_txs(&utxos, base, end, memory, cancel)
                }),
            };
            let all = how == Merging::All;
            let c = s
                .txindex
                .compact(&mut alloc, memory, all, pruning, sorting_from)?;
            let d = s.undo.compact(&mut alloc)?;
            s.next_id = next;
            Ok(a || b || c || d)
        })?;
        if did {
            self.dirty = true;
        }
        self.commit()?;
        Ok(did)
    }

    /// A cheap, clonable handle for other threads; it always yields the latest commit.
    pub fn reader(&self) -> Reader {
        Reader(Arc::clone(&self.published))
    }

    /// The latest committed state.
    pub fn snapshot(&self) -> Snapshot {
        self.latest.clone()
    }
}

/// Which merges `Store::merge` may run in the background.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Merging {
    /// During a sync: big history merges.
    Sync,
    /// At the tip: big merges of every kind.
    Tip,
    /// None: everything is merged into one file per kind, in the caller.
    All,
}

/// The txs in `base..end` that have unspent outputs, read from the whole UTXO set, or `None`
/// when the set (a bit per tx) would not fit in `memory`. Stops with an error once `cancel`
/// is set.
fn live_txs(
    utxos: &UtxoView,
    base: u64,
    end: u64,
    memory: usize,
    cancel: &AtomicBool,
) -> Result<Option<LiveTxs>> {
    if LiveTxs::bytes(base, end) > memory as u64 {
        return Ok(None);
    }
    let mut live = LiveTxs::new(base, end);
    utxos.try_for_each(&mut |_, u| {
        check_cancel(cancel, "txid index")?;
        live.insert(u.txnum);
        Ok(())
    })?;
    Ok(Some(live))
}

/// Refuses a lean rollback unless `spent_txids` lists, for each rolled-back block (`undos`,
/// newest first), as many spends as its undo record.
fn check_spent_txids(undos: &[BlockUndo], spent_txids: &[Vec<Hash32>]) -> Result<()> {
    if spent_txids.len() != undos.len() {
        return Err(Error::Invalid(format!(
            "rolling back {} blocks of a lean store needs each block's spent txids: given for \
             {} blocks",
            undos.len(),
            spent_txids.len()
        )));
    }
    for (undo, txids) in undos.iter().zip(spent_txids) {
        let listed = undo.spent.len();
        if txids.len() != listed {
            return Err(Error::Invalid(format!(
                "block {}: {} spent txids given, its undo records list {listed} spends",
                undo.height,
                txids.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::TxData;
    use crate::utxo::Utxo;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn txid(n: u64) -> Hash32 {
        let mut t = [0u8; 32];
        t[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
        t[8..16].copy_from_slice(&n.to_le_bytes());
        t
    }

    /// Block `h`: tx numbers 3h..3h+3, each paying key 0; the last spends the previous
    /// block's first output.
    fn block(h: u64) -> BlockData {
        let txs = (0..3)
            .map(|i| TxData {
                txid: txid(3 * h + i),
                spends: if i == 2 && h > 0 {
                    vec![(txid(3 * h - 3), 0)]
                } else {
                    vec![]
                },
                outputs: vec![Some(([0; 11], 3 * h + i))],
            })
            .collect();
        BlockData {
            header: [h as u8; 80],
            txs,
        }
    }

    fn opts() -> Options {
        Options {
            undo_blocks: 3,
            compaction_memory: 1 << 16,
            store_txids: true,
            background_merge_bytes: u64::MAX,
        }
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Snapshot>();
        send_sync::<Reader>();
    }

    #[test]
    fn readers_see_whole_commits_while_the_writer_works() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), opts()).unwrap();
        let reader = store.reader();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut snapshots = 0;
                while !stop.load(Ordering::Relaxed) {
                    let snap = reader.snapshot();
                    let Some(h) = snap.height() else { continue };
                    assert_eq!(snap.block_txs(h).unwrap().end, snap.tx_count());
                    assert_eq!(snap.tx_count(), 3 * (u64::from(h) + 1));
                    for n in (0..snap.tx_count()).step_by(5) {
                        // The next block's last tx spends each block's first.
                        let spent = n % 3 == 0 && n + 3 < snap.tx_count();
                        let utxo = Utxo {
                            txnum: n,
                            vout: 0,
                            value: n,
                        };
                        let want = (!spent).then_some(([0; 11], utxo));
                        assert_eq!(snap.unspent(&txid(n), 0).unwrap(), want);
                    }
                    let history = snap.history(&[0; 11]).unwrap();
                    assert_eq!(history, (0..snap.tx_count()).collect::<Vec<_>>());
                    let utxos = snap.utxos(&[0; 11]).unwrap();
                    assert_eq!(utxos.len() as u64, snap.tx_count() - u64::from(h));
                    snapshots += 1;
                }
                snapshots
            })
        };
        let mut h = 0;
        for round in 0..60u64 {
            store.apply_block(&block(h)).unwrap();
            h += 1;
            match round % 7 {
                3 => {
                    store.rollback(2, &[]).unwrap();
                    h -= 2;
                }
                5 => {
                    store.compact().unwrap();
                }
                6 => {
                    store.compact_all().unwrap();
                }
                _ => store.commit().unwrap(),
            }
        }
        stop.store(true, Ordering::Relaxed);
        assert!(seen.join().unwrap() > 0);
        assert_eq!(store.height(), Some(h as u32 - 1));
    }

    #[test]
    fn rollback_is_bounded_by_the_horizon_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), opts()).unwrap();
        for h in 0..6 {
            store.apply_block(&block(h)).unwrap();
        }
        store.commit().unwrap();
        let err = store.rollback(4, &[]).unwrap_err().to_string();
        assert_eq!(
            err,
            "cannot roll back 4 blocks: undo records cover only the last 3"
        );
        drop(store);
        let mut store = Store::open(dir.path(), opts()).unwrap();
        store.rollback(3, &[]).unwrap();
        assert_eq!(store.height(), Some(2));
        drop(store);
        let store = Store::open(dir.path(), opts()).unwrap();
        let snap = store.snapshot();
        assert_eq!(snap.tx_count(), 9);
        assert_eq!(snap.unspent(&txid(9), 0).unwrap(), None);
        // Tx 6, spent by a rolled-back block in the commit that made it, is found again.
        let utxo = Utxo {
            txnum: 6,
            vout: 0,
            value: 6,
        };
        assert_eq!(snap.unspent(&txid(6), 0).unwrap(), Some(([0; 11], utxo)));
        assert_eq!(snap.utxo(6, 0).unwrap(), Some(([0; 11], 6)));
    }

    #[test]
    fn merges_at_the_tip_run_in_the_background_until_a_compaction_installs_them() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            background_merge_bytes: 0,
            ..opts()
        };
        let mut store = Store::open(dir.path(), opts.clone()).unwrap();
        // A sync's compaction keeps UTXO and txid index merges in the caller.
        for h in 0..20 {
            store.apply_block(&block(h)).unwrap();
            store.commit().unwrap();
            store.compact().unwrap();
            assert!(!store.utxo.merging() && !store.txindex.merging());
        }
        // At the tip they run beside it.
        let (mut utxo, mut txindex) = (false, false);
        for h in 20..40 {
            store.apply_block(&block(h)).unwrap();
            store.commit().unwrap();
            store.compact_at_tip().unwrap();
            utxo |= store.utxo.merging();
            txindex |= store.txindex.merging();
        }
        assert!(utxo && txindex);
        let started = std::time::Instant::now();
        while !store.merge_done() {
            let waited = started.elapsed();
            assert!(waited.as_secs() < 30, "no merge finished");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let names = |s: &Store| {
            [
                s.utxo.file_names(),
                s.history.file_names(),
                s.txindex.file_names(),
            ]
        };
        let before = names(&store);
        assert!(
            store.compact_at_tip().unwrap(),
            "installed with no new block"
        );
        assert_ne!(names(&store), before);
        let snap = store.snapshot();
        assert_eq!(
            snap.history(&[0; 11]).unwrap(),
            (0..120).collect::<Vec<_>>()
        );
        drop(store);
        let store = Store::open(dir.path(), opts).unwrap();
        assert_eq!(
            store.snapshot().history(&[0; 11]).unwrap(),
            (0..120).collect::<Vec<_>>()
        );
    }

    #[test]
    fn rollback_reads_undo_records_from_merged_files() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            undo_blocks: 20,
            compaction_memory: 1 << 16,
            store_txids: true,
            background_merge_bytes: u64::MAX,
        };
        let mut store = Store::open(dir.path(), opts.clone()).unwrap();
        for h in 0..40 {
            store.apply_block(&block(h)).unwrap();
            store.commit().unwrap();
            store.compact().unwrap();
        }
        let undo_files = store.undo.refs();
        assert!(undo_files.len() < 10, "{undo_files:?}");
        assert!(
            undo_files.iter().any(|r| r.last > r.first),
            "{undo_files:?}"
        );
        let before = store.snapshot();
        drop(store);
        let mut store = Store::open(dir.path(), opts).unwrap();
        store.rollback(20, &[]).unwrap();
        let snap = store.snapshot();
        assert_eq!(snap.height(), Some(19));
        assert_eq!(snap.tx_count(), 60);
        assert_eq!(snap.history(&[0; 11]).unwrap(), (0..60).collect::<Vec<_>>());
        // Block h's last tx spends the previous block's first output.
        let want: Vec<u64> = (0..60).filter(|n| n % 3 != 0 || *n == 57).collect();
        let got: Vec<u64> = snap
            .utxos(&[0; 11])
            .unwrap()
            .iter()
            .map(|u| u.txnum)
            .collect();
        assert_eq!(got, want);
        assert_eq!(before.tx_count(), 120, "an older snapshot is unchanged");
    }

    /// A lean rollback's `spent_txids` for the `n` blocks `block(top + 1 - n..=top)`.
    fn spends(top: u64, n: u64) -> Vec<Vec<Hash32>> {
        (top + 1 - n..=top)
            .rev()
            .map(|h| block(h).spent_txids())
            .collect()
    }

    fn lean(opts: Options) -> Options {
        Options {
            store_txids: false,
            ..opts
        }
    }

    /// Everything but txids, as a snapshot answers it for the blocks of `block(0..blocks)`,
    /// and which txs have txid index entries (the same in both modes).
    fn answers(snap: &Snapshot, blocks: u64) -> Vec<String> {
        let mut out = vec![format!("{:?}", snap.history(&[0; 11]).unwrap())];
        out.push(format!("{:?}", snap.utxos(&[0; 11]).unwrap()));
        for n in 0..3 * blocks {
            out.push(format!("{n}: {:?}", snap.unspent(&txid(n), 0).unwrap()));
            out.push(format!(
                "{n} indexed: {:?}",
                snap.find_tx(&txid(n)).unwrap()
            ));
        }
        let all: Vec<u64> = (0..snap.tx_count()).collect();
        out.push(format!("{:?}", snap.tx_heights(&all).unwrap()));
        for h in 0..snap.height().map_or(0, |h| h + 1) {
            out.push(format!("{h}: {:?}", snap.block_txs(h).unwrap()));
        }
        out
    }

    #[test]
    fn lean_store_answers_as_a_full_one_through_pruning_merges_and_rollbacks() {
        let (full_dir, lean_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut full = Store::open(full_dir.path(), opts()).unwrap();
        let mut lean = Store::open(lean_dir.path(), lean(opts())).unwrap();
        let mut h = 0;
        for round in 0..40u64 {
            for store in [&mut full, &mut lean] {
                store.apply_block(&block(h)).unwrap();
                match round % 5 {
                    // A pruning merge drops spent txs a rollback could not revive, then
                    // the rollback revives those spent within the horizon.
                    1 if round > 5 => {
                        store.commit().unwrap();
                        store.compact_all().unwrap();
                        let spent = match store.snapshot().stores_txids() {
                            true => Vec::new(),
                            false => spends(h, 3),
                        };
                        store.rollback(3, &spent).unwrap();
                    }
                    3 => {
                        store.compact().unwrap();
                    }
                    _ => store.commit().unwrap(),
                }
            }
            h = full.height().map_or(0, |t| u64::from(t) + 1);
            let (f, l) = (full.snapshot(), lean.snapshot());
            assert_eq!(answers(&f, h + 3), answers(&l, h + 3), "round {round}");
            assert!(f.stores_txids() && !l.stores_txids());
        }
        let err = lean.snapshot().txid(0).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        assert_eq!(err.to_string(), "txids are not stored (lean index)");
        let err = lean.snapshot().txids(&[0, 1]).unwrap_err();
        assert_eq!(err.to_string(), "txids are not stored (lean index)");
        assert!(lean_dir.path().read_dir().unwrap().all(|e| {
            let name = e.unwrap().file_name();
            !name.to_string_lossy().starts_with("txh-")
        }));
    }

    #[test]
    fn a_lean_rollback_without_the_right_spent_txids_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), lean(opts())).unwrap();
        for h in 0..6 {
            store.apply_block(&block(h)).unwrap();
        }
        store.commit().unwrap();
        // Blocks 5 and 4 each spend one output (their last tx spends the block before's).
        let refused = [
            (
                vec![],
                "rolling back 2 blocks of a lean store needs each block's spent txids: given \
                 for 0 blocks",
            ),
            (
                spends(5, 1),
                "rolling back 2 blocks of a lean store needs each block's spent txids: given \
                 for 1 blocks",
            ),
            (
                spends(5, 3),
                "rolling back 2 blocks of a lean store needs each block's spent txids: given \
                 for 3 blocks",
            ),
            (
                vec![vec![txid(12)], vec![]],
                "block 4: 0 spent txids given, its undo records list 1 spends",
            ),
            (
                vec![vec![txid(12), txid(9)], vec![txid(9)]],
                "block 5: 2 spent txids given, its undo records list 1 spends",
            ),
        ];
        for (spent, want) in refused {
            let err = store.rollback(2, &spent).unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{err:?}");
            assert_eq!(err.to_string(), want);
            assert_eq!(store.height(), Some(5));
        }
        // The store was left as it was, usable: the right txids roll back and revive tx 9.
        store.rollback(2, &spends(5, 2)).unwrap();
        store.compact_all().unwrap();
        let snap = store.snapshot();
        assert_eq!(snap.height(), Some(3));
        let utxo = Utxo {
            txnum: 9,
            vout: 0,
            value: 9,
        };
        assert_eq!(snap.unspent(&txid(9), 0).unwrap(), Some(([0; 11], utxo)));
        assert_eq!(snap.unspent(&txid(12), 0).unwrap(), None);
        drop(store);
        let store = Store::open(dir.path(), lean(opts())).unwrap();
        assert_eq!(
            store.snapshot().unspent(&txid(9), 0).unwrap(),
            Some(([0; 11], utxo))
        );
    }

    #[test]
    fn a_repeated_txid_resolves_to_the_later_tx_in_both_modes() {
        for store_txids in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let opts = Options {
                store_txids,
                ..opts()
            };
            let mut store = Store::open(dir.path(), opts).unwrap();
            // Blocks 0..3 (txs 0..9), then block 3 repeats tx 1's txid (as BIP30's coinbases).
            for h in 0..3 {
                store.apply_block(&block(h)).unwrap();
                store.commit().unwrap();
            }
            let mut again = block(3);
            again.txs[0].txid = txid(1);
            store.apply_block(&again).unwrap();
            store.commit().unwrap();
            store.compact_all().unwrap();
            let found = store.snapshot().unspent(&txid(1), 0).unwrap();
            assert_eq!(
                found.map(|(_, u)| u.txnum),
                Some(9),
                "store_txids {store_txids}"
            );
        }
    }

    #[test]
    fn a_store_with_blocks_opens_only_in_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(built_with_txids(&dir.path().join("none")).unwrap(), None);
        // Without blocks, a store takes the mode it is opened in.
        let mut store = Store::open(dir.path(), Options::default()).unwrap();
        store.set_meta("k", b"v");
        store.commit().unwrap();
        assert_eq!(built_with_txids(dir.path()).unwrap(), None);
        drop(store);
        let mut store = Store::open(dir.path(), lean(Options::default())).unwrap();
        store.apply_block(&block(0)).unwrap();
        assert_eq!(built_with_txids(dir.path()).unwrap(), None, "not committed");
        store.commit().unwrap();
        // Read while the writer holds its lock.
        assert_eq!(built_with_txids(dir.path()).unwrap(), Some(false));
        drop(store);
        let err = Store::open(dir.path(), Options::default()).err().unwrap();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        let msg = |built: &str| {
            format!(
                "the store in {} was built {built}; open it in the same mode or delete the \
                 directory and resync",
                dir.path().display()
            )
        };
        assert_eq!(err.to_string(), msg("without txids (lean)"));
        let store = Store::open(dir.path(), lean(Options::default())).unwrap();
        assert!(!store.snapshot().stores_txids());
        assert_eq!(
            store
                .snapshot()
                .unspent(&txid(0), 0)
                .unwrap()
                .unwrap()
                .1
                .txnum,
            0
        );
        drop(store);
        let full_dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(full_dir.path(), Options::default()).unwrap();
        store.apply_block(&block(0)).unwrap();
        store.commit().unwrap();
        drop(store);
        assert_eq!(built_with_txids(full_dir.path()).unwrap(), Some(true));
        let err = Store::open(full_dir.path(), lean(Options::default()))
            .err()
            .unwrap();
        let want = msg("with txids stored").replace(
            &dir.path().display().to_string(),
            &full_dir.path().display().to_string(),
        );
        assert_eq!(err.to_string(), want);
    }

    #[test]
    fn a_mode_read_from_a_bad_manifest_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MANIFEST), b"not a manifest").unwrap();
        let err = built_with_txids(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "corrupt store file {} at offset 0: not a ferrum store manifest",
                dir.path().join(MANIFEST).display()
            )
        );
    }

    #[test]
    fn second_writer_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path(), Options::default()).unwrap();
        let err = Store::open(dir.path(), Options::default()).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "the store in {} is open in another process (it holds {}/LOCK); stop that \
                 process first",
                dir.path().display(),
                dir.path().display()
            )
        );
        drop(first);
        Store::open(dir.path(), Options::default()).unwrap();
    }

    #[test]
    fn recovery_deletes_only_files_the_store_could_have_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), Options::default()).unwrap();
        store.apply_block(&block(0)).unwrap();
        store.commit().unwrap();
        drop(store);
        let leftovers = [
            "utxo-999.run",
            "hist-998.seg",
            "MANIFEST.tmp",
            "utxo-5.run.2.sort",
        ];
        let foreign = [
            "notes.txt",
            "utxo-backup.run",
            "hdr-1.arr.bak",
            "wallet.dat",
        ];
        for name in leftovers.iter().chain(&foreign) {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        Store::open(dir.path(), Options::default()).unwrap();
        for name in leftovers {
            assert!(!dir.path().join(name).exists(), "{name} should be removed");
        }
        for name in foreign {
            assert!(dir.path().join(name).exists(), "{name} must be kept");
        }
    }
}
