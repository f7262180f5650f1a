//! The UTXO set: immutable sorted run files plus an in-memory write buffer. Spends are
//! tombstones, the newest run wins, and compaction merges runs with bounded memory.
//! Format and policy: docs/STORAGE.md ("UTXO runs and history segments").

pub(crate) mod filter;
mod run;
mod run_writer;
pub(crate) mod sorted_file;
mod sorter;
#[cfg(test)]
pub(crate) mod synthetic;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::size_of;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::background::{check_cancel, Background, Output};
use crate::error::{Error, Result};
use crate::varint;
use crate::HashX;
use run::{Record, Run};
use run_writer::RunWriter;
#[doc(hidden)]
pub use sorted_file::reseal_checksums;

/// An unspent output of a script, as listed by `UtxoView::list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utxo {
    pub txnum: u64,
    pub vout: u32,
    pub value: u64,
}

const STATE_VERSION: u8 = 1;

/// What the buffer knows about one outpoint. `live` is an output added since the last flush;
/// `tomb` hides the entry of older runs filed under that script key (the output was spent).
/// Both can be set when an output was spent and the outpoint re-added (rollback) under
/// another script key.
#[derive(Clone, Copy, Default)]
struct Slot {
    live: Option<(HashX, u64)>,
    tomb: Option<HashX>,
}

/// Outpoints are small integers; a multiply-rotate hash is far cheaper than SipHash and the
/// keys are not attacker-chosen in a way that matters (they are chain positions).
#[derive(Default)]
struct OutpointHasher(u64);

impl OutpointHasher {
    fn mix(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }
}

impl Hasher for OutpointHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.mix(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

type Buffer = HashMap<(u64, u32), Slot, BuildHasherDefault<OutpointHasher>>;

/// The writer side: committed and flushed runs (oldest first) plus the write buffer.
pub struct UtxoSet {
    dir: PathBuf,
    runs: Vec<Arc<Run>>,
    buffer: Buffer,
    /// The buffer's bucket count, which its reported capacity understates after removals.
    buckets: usize,
    /// Runs replaced by compaction, still named by the last committed manifest.
    pending_obsolete: Vec<Arc<Run>>,
    /// A merge on its own thread, of the runs it names by id.
    background: Option<Background<u64, Option<Run>>>,
}

/// A consistent set of runs for readers. Holding it keeps the files alive.
#[derive(Clone)]
pub struct UtxoView {
    runs: Arc<[Arc<Run>]>,
}

fn run_name(id: u64) -> String {
    format!("utxo-{id}.run")
}

impl UtxoSet {
    /// Opens the runs named by `state` (from a previous `state()`); empty `state` = new set.
    pub fn open(dir: &Path, state: &[u8]) -> Result<UtxoSet> {
        let mut runs = Vec::new();
        if !state.is_empty() {
            let bad = || Error::Invalid("utxo state is malformed".into());
            let mut pos = 1;
            if state[0] != STATE_VERSION {
                return Err(Error::Invalid(format!(
                    "utxo state version {} is not supported",
                    state[0]
                )));
            }
            let n = varint::get(state, &mut pos).ok_or_else(bad)?;
            for _ in 0..n {
                let id = varint::get(state, &mut pos).ok_or_else(bad)?;
                runs.push(Arc::new(Run::open(&dir.join(run_name(id)), id)?));
            }
            if pos != state.len() {
                return Err(bad());
            }
        }
        Ok(UtxoSet {
            dir: dir.to_path_buf(),
            runs,
            buffer: Buffer::default(),
            buckets: 0,
            pending_obsolete: Vec::new(),
            background: None,
        })
    }

    /// Adds an unspent output. Adding an outpoint that is already unspent replaces it.
    pub fn add(&mut self, hashx: HashX, txnum: u64, vout: u32, value: u64) {
        self.buffer.entry((txnum, vout)).or_default().live = Some((hashx, value));
        self.note_growth();
    }

    /// Spends an output, returning what it held; `None` if it is not unspent.
    pub fn spend(&mut self, txnum: u64, vout: u32) -> Result<Option<(HashX, u64)>> {
        if let Some(slot) = self.buffer.get_mut(&(txnum, vout)) {
            let Some(live) = slot.live.take() else {
                return Ok(None);
            };
            // An output added since the last flush simply disappears, unless it re-added
            // a key whose tombstone must keep hiding an older run's entry.
            if slot.tomb.is_none() {
                self.buffer.remove(&(txnum, vout));
            }
            return Ok(Some(live));
        }
        let found = lookup(&self.runs, txnum, vout)?;
        if let Some((hashx, _)) = found {
            self.buffer.insert(
                (txnum, vout),
                Slot {
                    live: None,
                    tomb: Some(hashx),
                },
            );
            self.note_growth();
        }
        Ok(found)
    }

    /// Looks an outpoint up in the buffer, then in the runs newest first.
    pub fn get(&self, txnum: u64, vout: u32) -> Result<Option<(HashX, u64)>> {
        Ok(self.find(txnum, vout)?.map(|f| (f.hashx, f.value)))
    }

    /// `get`, also saying where the output was found, so that `spend_found` can place its
    /// tombstone without searching the runs a second time.
    pub fn find(&self, txnum: u64, vout: u32) -> Result<Option<Found>> {
        let (found, in_runs) = match self.buffer.get(&(txnum, vout)) {
            Some(slot) => (slot.live, false),
            None => (lookup(&self.runs, txnum, vout)?, true),
        };
        Ok(found.map(|(hashx, value)| Found {
            hashx,
            value,
            in_runs,
        }))
    }

    /// Spends an output that `find` returned, with no change to this outpoint in between:
    /// the same result as `spend`, but an output found in the runs is tombstoned from what
    /// `find` read instead of being looked up again.
    pub fn spend_found(
        &mut self,
        txnum: u64,
        vout: u32,
        found: Found,
    ) -> Result<Option<(HashX, u64)>> {
        if !found.in_runs {
            return self.spend(txnum, vout);
        }
        match self.buffer.entry((txnum, vout)) {
            // The buffer changed since `find`: it decides, as in `spend`.
            Entry::Occupied(_) => self.spend(txnum, vout),
            Entry::Vacant(slot) => {
                slot.insert(Slot {
                    live: None,
                    tomb: Some(found.hashx),
                });
                self.note_growth();
                Ok(Some((found.hashx, found.value)))
            }
        }
    }

    /// Memory held by the write buffer: the hash table's buckets with one control byte each.
    pub fn buffer_bytes(&self) -> usize {
        bucket_bytes(self.buckets, size_of::<((u64, u32), Slot)>())
    }

    /// What the buffer's next growth will allocate, if it is near (see `table_growth`).
    pub fn buffer_growth(&self) -> usize {
        let entry = size_of::<((u64, u32), Slot)>();
        table_growth(
            self.buffer.len(),
            self.buffer.capacity(),
            self.buckets,
            entry,
        )
    }

    /// After an insert: the table may have grown, and then its capacity is exact.
    fn note_growth(&mut self) {
        self.buckets = self.buckets.max(buckets_for(self.buffer.capacity()));
    }

    /// Writes the buffer as a new run (fsynced) and empties it. Durable only once the caller
    /// commits a manifest holding the new `state()`.
    pub fn flush(&mut self, alloc_id: &mut dyn FnMut() -> u64) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(self.buffer.len() + self.buffer.len() / 8);
        for (&(txnum, vout), slot) in &self.buffer {
            if let Some((hashx, value)) = slot.live {
                records.push(Record {
                    hashx,
                    txnum,
                    vout,
                    value: Some(value),
                });
            }
            // A tombstone under the live entry's own key is superseded by that entry.
            if let Some(hashx) = slot.tomb.filter(|t| slot.live.is_none_or(|(h, _)| h != *t)) {
                records.push(Record {
                    hashx,
                    txnum,
                    vout,
                    value: None,
                });
            }
        }
        records.sort_unstable_by_key(Record::key);
        let id = alloc_id();
        // The records are in memory already; sorting their outpoints in memory adds 1/2 more.
        let mut writer = RunWriter::create(&self.dir.join(run_name(id)), usize::MAX)?;
        for r in &records {
            writer.push(r)?;
        }
        if writer.finish(&AtomicBool::new(false))?.is_some() {
            let run = Run::open(&self.dir.join(run_name(id)), id)?;
            self.runs.push(Arc::new(run));
        }
        self.buffer = Buffer::default();
        self.buckets = 0;
        Ok(())
    }

    /// Merges runs per the size-tiered policy until it asks for nothing more, with at most
    /// about `memory` bytes of sort buffers. Replaced runs become pending obsolete.
    ///
    /// A merge of at least `background_from` bytes runs on its own thread instead, one at a
    /// time: later calls merge only newer runs and install it once it is done. A rollback
    /// need not stop it: rollbacks add records (outputs made unspent again, tombstones)
    /// rather than change runs. Returns whether the runs changed.
    pub fn compact(
        &mut self,
        alloc_id: &mut dyn FnMut() -> u64,
        memory: usize,
        background_from: u64,
    ) -> Result<bool> {
        let mut worked = self.finish_background(false)?;
        loop {
            // Runs up to the background merge's last input are its own.
            let floor = self.background_range().map_or(0, |r| r.end);
            let sizes: Vec<u64> = self.runs[floor..].iter().map(|r| r.size()).collect();
            let range = sorted_file::pick_merge(&sizes).or_else(|| {
                self.background
                    .is_none()
                    .then(|| self.tombstone_heavy())
                    .flatten()
            });
            let Some(range) = range else {
                return Ok(worked);
            };
            let bytes: u64 = sizes[range.clone()].iter().sum();
            let range = range.start + floor..range.end + floor;
            if bytes >= background_from {
                if self.background.is_none() {
                    self.start_background(range, alloc_id, memory)?;
                }
                return Ok(worked);
            }
            self.merge_range(range, alloc_id, memory)?;
            worked = true;
        }
    }

    /// Merges every run into one, dropping all tombstones and the records they hide (for the
    /// end of an initial sync, whose flushes leave several). Returns whether there was work.
    pub fn compact_all(
        &mut self,
        alloc_id: &mut dyn FnMut() -> u64,
        memory: usize,
    ) -> Result<bool> {
        Background::stop(&mut self.background);
        if self.runs.len() < 2 {
            return Ok(false);
        }
        self.merge_range(0..self.runs.len(), alloc_id, memory)?;
        Ok(true)
    }

    /// Tombstones live until a merge includes the oldest run, which the size-tiered rule
    /// rarely does. Once the newer runs hold tombstones amounting to 1/8 of the oldest run's
    /// live entries, merge everything: that bounds their space at 1/8 of the set, for a
    /// rewrite cost of 8 records per spend.
    fn tombstone_heavy(&self) -> Option<Range<usize>> {
        let (oldest, newer) = self.runs.split_first()?;
        let dead: u64 = newer.iter().map(|r| r.counts().1).sum();
        (dead > 0 && dead.saturating_mul(8) >= oldest.counts().0).then_some(0..self.runs.len())
    }

    /// Merges `runs[range]` into one run; returns the peak bytes of its outpoint sort.
    fn merge_range(
        &mut self,
        range: Range<usize>,
        alloc_id: &mut dyn FnMut() -> u64,
        memory: usize,
    ) -> Result<usize> {
        let (id, path) = self.new_run(alloc_id);
        let inputs = &self.runs[range.clone()];
        let no_cancel = AtomicBool::new(false);
        let (merged, sort_peak) =
            merge_runs(inputs, range.start == 0, &path, id, memory, &no_cancel)?;
        self.install(range, merged);
        Ok(sort_peak)
    }

    /// An id for a run about to be written, and its path.
    fn new_run(&self, alloc_id: &mut dyn FnMut() -> u64) -> (u64, PathBuf) {
        let id = alloc_id();
        (id, self.dir.join(run_name(id)))
    }

    /// Puts `merged` (None: nothing was left) in place of the runs in `range`.
    fn install(&mut self, range: Range<usize>, merged: Option<Run>) {
        let old = self.runs.splice(range, merged.map(Arc::new));
        self.pending_obsolete.extend(old);
    }

    fn start_background(
        &mut self,
        range: Range<usize>,
        alloc_id: &mut dyn FnMut() -> u64,
        memory: usize,
    ) -> Result<()> {
        let (id, path) = self.new_run(alloc_id);
        let inputs = self.runs[range.clone()].to_vec();
        let keys = inputs.iter().map(|r| r.id()).collect();
        let drop_tombs = range.start == 0;
        self.background = Some(Background::start(
            "utxo-merge",
            &self.dir,
            keys,
            move |cancel| {
                merge_runs(&inputs, drop_tombs, &path, id, memory, cancel).map(|(run, _)| run)
            },
        )?);
        Ok(())
    }

    /// Where the background merge's inputs are now, if they are all still there, side by
    /// side, and it was not cancelled.
    fn background_range(&self) -> Option<Range<usize>> {
        self.background.as_ref()?.range_in(&self.ids())
    }

    fn ids(&self) -> Vec<u64> {
        self.runs.iter().map(|r| r.id()).collect()
    }

    /// Whether a background merge is done and waits for the next compaction.
    pub fn merge_done(&self) -> bool {
        Background::done(&self.background)
    }

    /// Whether a merge runs in the background (or waits to be installed).
    #[cfg(test)]
    pub(crate) fn merging(&self) -> bool {
        self.background.is_some()
    }

    /// Installs the background merge if it is done (or, with `wait`, once it is); one whose
    /// inputs changed meanwhile is thrown away. Returns whether the runs changed.
    fn finish_background(&mut self, wait: bool) -> Result<bool> {
        let ids = self.ids();
        let Some((range, merged)) = Background::finish(&mut self.background, wait, &ids)? else {
            return Ok(false);
        };
        self.install(range, merged);
        Ok(true)
    }

    /// The run ids, for the manifest.
    pub fn state(&self) -> Vec<u8> {
        let mut out = vec![STATE_VERSION];
        varint::put(&mut out, self.runs.len() as u64);
        for r in &self.runs {
            varint::put(&mut out, r.id());
        }
        out
    }

    /// The manifest holding `state()` is durable: files it no longer names go away once
    /// their last reader lets go.
    pub fn committed(&mut self) {
        for r in self.pending_obsolete.drain(..) {
            r.file().mark_obsolete();
        }
    }

    /// Names (in the store directory) of the files `state()` references.
    pub fn file_names(&self) -> Vec<String> {
        self.runs.iter().map(|r| run_name(r.id())).collect()
    }

    /// The current runs (not the buffer) as a read-only view.
    pub fn view(&self) -> UtxoView {
        UtxoView {
            runs: self.runs.clone().into(),
        }
    }
}

/// Merges `inputs` (dropping tombstones, with the records they hide, when `drop_tombs`)
/// into a new run at `path`, with at most about `memory` bytes of sort buffers; None when
/// nothing is left. Also returns the sort's peak bytes. Stops with an error once `cancel` is
/// set; the unfinished file is removed.
fn merge_runs(
    inputs: &[Arc<Run>],
    drop_tombs: bool,
    path: &Path,
    id: u64,
    memory: usize,
    cancel: &AtomicBool,
) -> Result<(Option<Run>, usize)> {
    let mut writer = RunWriter::create(path, memory)?;
    run::merge(inputs, drop_tombs, &mut |r| {
        check_cancel(cancel, "UTXO")?;
        writer.push(r)
    })?;
    Ok(match writer.finish(cancel)? {
        Some(written) => (Some(Run::open(path, id)?), written.sort_peak),
        None => (None, 0),
    })
}

impl Output for Run {
    fn discard(self) {
        self.file().mark_obsolete();
    }
}

impl Drop for UtxoSet {
    fn drop(&mut self) {
        Background::stop(&mut self.background);
    }
}

/// Where `UtxoSet::find` found an unspent output, for `UtxoSet::spend_found`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub hashx: HashX,
    pub value: u64,
    /// Found in the runs (the buffer knew nothing of the outpoint), not in the buffer.
    in_runs: bool,
}

/// Buckets of a std `HashMap` reporting `capacity` right after it grew: hashbrown allocates
/// a power of two of them, at most 7/8 usable (all but one below 8). Later, removals lower
/// the reported capacity (tombstones use up room) but never the buckets.
pub(crate) fn buckets_for(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        1..=7 => capacity + 1,
        _ => (capacity * 8 / 7).next_power_of_two(),
    }
}

/// Bytes of a table of `buckets` with `entry`-byte entries, one control byte each.
fn bucket_bytes(buckets: usize, entry: usize) -> usize {
    buckets * (entry + 1)
}

/// Bytes of a std `HashMap` of `entry`-byte entries that has never had an entry removed.
pub fn table_bytes(capacity: usize, entry: usize) -> usize {
    bucket_bytes(buckets_for(capacity), entry)
}

/// What a table's next growth allocates, if it is near: a table of `buckets` with `len`
/// entries and room left for `capacity − len` more doubles once that room is gone, unless it
/// is at most half full (then it rehashes in place); the new table (twice the bytes) is
/// allocated while the old one is still held. Counting it once less than 1/8 of the room is
/// left makes a caller that flushes at a bound flush before the doubling, not just after.
pub fn table_growth(len: usize, capacity: usize, buckets: usize, entry: usize) -> usize {
    let usable = match buckets {
        0..=7 => buckets.saturating_sub(1),
        _ => buckets / 8 * 7,
    };
    let near = len > usable / 2 && capacity.saturating_sub(len) <= usable / 8;
    match near && buckets > 0 {
        true => 2 * bucket_bytes(buckets, entry),
        false => 0,
    }
}

/// Newest run first: the first run that knows the outpoint decides.
fn lookup(runs: &[Arc<Run>], txnum: u64, vout: u32) -> Result<Option<(HashX, u64)>> {
    for run in runs.iter().rev() {
        if let Some(found) = run.lookup(txnum, vout)? {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Merges two sorted entry lists; `newer` wins on equal outpoints.
fn merge_newer(
    older: Vec<(u64, u32, Option<u64>)>,
    newer: Vec<(u64, u32, Option<u64>)>,
) -> Vec<(u64, u32, Option<u64>)> {
    let mut out = Vec::with_capacity(older.len() + newer.len());
    let mut a = older.into_iter().peekable();
    let mut b = newer.into_iter().peekable();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => (x.0, x.1) < (y.0, y.1),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return out,
        };
        if take_a {
            out.extend(a.next());
        } else {
            let y = b.next().unwrap();
            if a.peek().is_some_and(|x| (x.0, x.1) == (y.0, y.1)) {
                a.next();
            }
            out.push(y);
        }
    }
}

impl UtxoView {
    /// The size of its run files, in bytes.
    pub fn bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.size()).sum()
    }

    pub fn get(&self, txnum: u64, vout: u32) -> Result<Option<(HashX, u64)>> {
        lookup(&self.runs, txnum, vout)
    }

    /// The unspent outputs of `hashx`, sorted by (txnum, vout).
    pub fn list(&self, hashx: &HashX) -> Result<Vec<Utxo>> {
        let mut merged = Vec::new();
        for run in self.runs.iter() {
            let mut entries = Vec::new();
            run.list(hashx, &mut entries)?;
            if !entries.is_empty() {
                merged = if merged.is_empty() {
                    entries
                } else {
                    merge_newer(merged, entries)
                };
            }
        }
        Ok(merged
            .into_iter()
            .filter_map(|(txnum, vout, value)| {
                Some(Utxo {
                    txnum,
                    vout,
                    value: value?,
                })
            })
            .collect())
    }

    /// Every unspent output in (hashx, txnum, vout) order, streaming one block per run.
    pub fn for_each(&self, f: &mut dyn FnMut(&HashX, &Utxo)) -> Result<()> {
        self.try_for_each(&mut |h, u| {
            f(h, u);
            Ok(())
        })
    }

    /// `for_each`, stopping at the first error `f` returns.
    pub fn try_for_each(&self, f: &mut dyn FnMut(&HashX, &Utxo) -> Result<()>) -> Result<()> {
        run::merge(&self.runs, true, &mut |r| {
            let value = r.value.expect("merge dropped tombstones");
            f(
                &r.hashx,
                &Utxo {
                    txnum: r.txnum,
                    vout: r.vout,
                    value,
                },
            )
        })
    }
}

#[cfg(test)]
mod tests;
