//! Txid -> tx number lookup: immutable sorted runs of (32-bit txid prefix, tx number)
//! entries, candidates verified against the tx hash array; in a lean store (no hash array)
//! each entry also holds the rest of its txid, the 28-byte tail, and matches are exact.
//!
//! A run file is `entries | bucket table | footer frame`. The top `bits` bits of the prefix
//! pick a bucket and are not stored; an entry holds the remaining prefix bits (`pb` bytes) and
//! the tx number minus the run's base (`tb` bytes), so large runs cost 6 bytes per tx (a lean
//! run, magic `FTXL` instead of `FTXI`, appends the tail: 34 bytes). The
//! bucket table holds, per bucket, the index of its first entry (u32) and the crc32 of its
//! entries (u32), checked whenever the bucket is read. A run written by one commit covers the
//! tx numbers of that commit; the manifest gives each run a `cap`, and entries at or above it
//! are ignored (a rollback lowers caps instead of rewriting files; a merge drops them).
//!
//! Only transactions with unspent outputs need to be found (the index serves spends), so
//! runs leave the others out: a flush writes only the txs whose outputs are not all spent by
//! then, and a merge that includes the oldest run drops txs without an unspent output left
//! (`LiveTxs`). An entry for a spent tx may linger in a newer run until such a merge; that
//! costs space, never correctness, since the UTXO set has the last word.
//!
//! A rollback that makes an output unspent again `reinstate`s its tx, whose txid the store
//! reads from the hash array, or in a lean store is given by the caller (the rolled-back
//! blocks' spends), so both modes keep exactly the same entries.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::mem::size_of;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::background::{check_cancel, Background, Output};
use crate::error::{Error, Result};
use crate::file::ImmutableFile;
use crate::frame::{decode_frame, encode_frame, FRAME_OVERHEAD};
use crate::Hash32;

const MAGIC: &[u8; 4] = b"FTXI";
const LEAN_MAGIC: &[u8; 4] = b"FTXL";
/// The txid bytes after the 4-byte prefix, stored by lean runs.
const TAIL_LEN: usize = 28;
type Tail = [u8; TAIL_LEN];
/// An entry in run order: (prefix, tail, tx number). Full runs store no tail (all zero
/// here), so their order is (prefix, tx number) as it always was.
type Entry = (u32, Tail, u64);
const FOOTER_PAYLOAD: usize = 4 + 3 * 8 + 3;
const FOOTER_LEN: usize = FOOTER_PAYLOAD + FRAME_OVERHEAD;
/// Bucket count is chosen so an average bucket holds 128..256 entries.
const BUCKET_TARGET: u64 = 128;
const MAX_BITS: u32 = 24;

pub fn file_name(id: u64) -> String {
    format!("txi-{id}.run")
}

pub fn prefix(txid: &Hash32) -> u32 {
    u32::from_be_bytes(txid[..4].try_into().expect("4 bytes"))
}

fn tail(txid: &Hash32) -> Tail {
    txid[4..].try_into().expect("28 bytes")
}

fn offset_bytes(span: u64) -> usize {
    let max = span.saturating_sub(1);
    (((64 - max.leading_zeros()) as usize).div_ceil(8)).max(1)
}

fn read_le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// One immutable run file, opened and its footer checked.
pub struct Run {
    file: ImmutableFile,
    /// Entries carry their txid's tail (`FTXL`).
    lean: bool,
    bits: u32,
    pb: usize,
    tb: usize,
    base: u64,
    end: u64,
    count: u64,
}

impl Run {
    pub fn open(path: &Path) -> Result<Run> {
        let file = ImmutableFile::open(path)?;
        let data = file.bytes();
        if data.len() < FOOTER_LEN {
            return Err(Error::corrupt(path, 0, "index run shorter than its footer"));
        }
        let at = data.len() - FOOTER_LEN;
        let (p, _) = decode_frame(data, at, path)?;
        let bad = |reason: &str| Error::corrupt(path, at as u64, reason.to_string());
        if p.len() != FOOTER_PAYLOAD || (&p[..4] != MAGIC && &p[..4] != LEAN_MAGIC) {
            return Err(bad("bad index run footer"));
        }
        let lean = &p[..4] == LEAN_MAGIC;
        let tail_bytes = if lean { TAIL_LEN } else { 0 };
        let base = read_le(&p[4..12]);
        let end = read_le(&p[12..20]);
        let count = read_le(&p[20..28]);
        let (bits, pb, tb) = (u32::from(p[28]), p[29] as usize, p[30] as usize);
        let ok = bits <= MAX_BITS
            && pb == (32 - bits as usize).div_ceil(8)
            && base <= end
            && tb == offset_bytes(end - base)
            && count <= u64::from(u32::MAX)
            && count * (pb + tb + tail_bytes) as u64 + (8u64 << bits) == at as u64;
        if !ok {
            return Err(bad("index run footer does not match the file"));
        }
        Ok(Run {
            file,
            lean,
            bits,
            pb,
            tb,
            base,
            end,
            count,
        })
    }

    fn path(&self) -> &Path {
        self.file.path()
    }

    fn entry_size(&self) -> usize {
        self.pb + self.tb + if self.lean { TAIL_LEN } else { 0 }
    }

    fn buckets(&self) -> usize {
        1 << self.bits
    }

    fn bucket_of(&self, prefix: u32) -> usize {
        if self.bits == 0 {
            0
        } else {
            (prefix >> (32 - self.bits)) as usize
        }
    }

    fn residual(&self, prefix: u32) -> u32 {
        if self.bits == 0 {
            prefix
        } else {
            prefix & ((1u32 << (32 - self.bits)) - 1)
        }
    }

    /// The entries of bucket `b`, after checking its crc.
    fn bucket(&self, b: usize) -> Result<&[u8]> {
        let data = self.file.bytes();
        let table = self.count as usize * self.entry_size();
        let slot = table + b * 8;
        let start = read_le(&data[slot..slot + 4]);
        let crc = read_le(&data[slot + 4..slot + 8]) as u32;
        let next = if b + 1 < self.buckets() {
            read_le(&data[slot + 8..slot + 12])
        } else {
            self.count
        };
        let bad = |reason: &str| Error::corrupt(self.path(), slot as u64, reason.to_string());
        if start > next || next > self.count {
            return Err(bad("index bucket bounds out of order"));
        }
        let es = self.entry_size() as u64;
        let body = &data[(start * es) as usize..(next * es) as usize];
        if crc32fast::hash(body) != crc {
            return Err(bad("index bucket checksum mismatch"));
        }
        Ok(body)
    }

    /// (residual prefix, tail (zero in a full run), tx number) of one entry.
    fn decode(&self, entry: &[u8]) -> (u32, Tail, u64) {
        let (residual, rest) = entry.split_at(self.pb);
        let (offset, tail) = rest.split_at(self.tb);
        (
            read_le(residual) as u32,
            tail.try_into().unwrap_or([0; TAIL_LEN]),
            self.base.saturating_add(read_le(offset)),
        )
    }

    /// Pushes to `out` the tx numbers below `cap` stored under `txid`'s prefix, or in a lean
    /// run under `txid` itself.
    fn find(&self, txid: &Hash32, cap: u64, out: &mut Vec<u64>) -> Result<()> {
        let prefix = prefix(txid);
        let tail = tail(txid);
        let body = self.bucket(self.bucket_of(prefix))?;
        let want = self.residual(prefix);
        let es = self.entry_size();
        let n = body.len() / es;
        let entry = |i: usize| self.decode(&body[i * es..(i + 1) * es]);
        let mut lo = 0;
        let mut hi = n;
        while lo < hi {
            let mid = (lo + hi) / 2;
            if entry(mid).0 < want {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        while lo < n {
            let (r, t, txnum) = entry(lo);
            if r != want {
                break;
            }
            if txnum < cap && (!self.lean || t == tail) {
                out.push(txnum);
            }
            lo += 1;
        }
        Ok(())
    }
}

/// Entries of a run in order, each bucket checked as it is reached.
struct RunIter<'a> {
    run: &'a Run,
    bucket: usize,
    body: &'a [u8],
}

impl<'a> RunIter<'a> {
    fn new(run: &'a Run) -> RunIter<'a> {
        RunIter {
            run,
            bucket: 0,
            body: &[],
        }
    }

    fn next(&mut self) -> Result<Option<Entry>> {
        let run = self.run;
        while self.body.is_empty() {
            if self.bucket == run.buckets() {
                return Ok(None);
            }
            self.body = run.bucket(self.bucket)?;
            self.bucket += 1;
        }
        let (entry, rest) = self.body.split_at(run.entry_size());
        self.body = rest;
        let (residual, tail, txnum) = run.decode(entry);
        let high = if run.bits == 0 {
            0
        } else {
            ((self.bucket - 1) as u32) << (32 - run.bits)
        };
        Ok(Some((high | residual, tail, txnum)))
    }
}

/// Writes a run holding `entries` (in `Entry` order; tx numbers in `base..end`; tails
/// stored only if `lean`), about `count_hint` of them (it sizes the bucket table). The file
/// is fsynced but not yet committed.
fn write_run(
    path: &Path,
    lean: bool,
    count_hint: u64,
    base: u64,
    end: u64,
    memory: usize,
    entries: &mut dyn FnMut() -> Result<Option<Entry>>,
) -> Result<()> {
    let mut bits = 0;
    while bits < MAX_BITS
        && (BUCKET_TARGET << (bits + 1)) <= count_hint
        && (16usize << (bits + 1)) <= memory
    {
        bits += 1;
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let out = BufWriter::with_capacity(1 << 16, file);
    let written = write_entries(out, path, lean, bits, base, end, entries);
    if written.is_err() {
        // Named by no manifest: nothing refers to it, and a later merge will want the id's
        // name only if it is free (the next open would remove it anyway).
        let _ = std::fs::remove_file(path);
    }
    written
}

/// The body of `write_run`, into the file it created.
fn write_entries(
    mut out: BufWriter<std::fs::File>,
    path: &Path,
    lean: bool,
    bits: u32,
    base: u64,
    end: u64,
    entries: &mut dyn FnMut() -> Result<Option<Entry>>,
) -> Result<()> {
    let pb = (32 - bits as usize).div_ceil(8);
    let tb = offset_bytes(end - base);
    let io = |e| Error::io(path, e);
    let mut table = vec![(0u32, 0u32); 1 << bits];
    let mut count = 0u64;
    let mut current = 0usize;
    let mut crc = crc32fast::Hasher::new();
    let tail_bytes = if lean { TAIL_LEN } else { 0 };
    let es = pb + tb + tail_bytes;
    let mut entry = [0u8; 12 + TAIL_LEN];
    while let Some((prefix, tail, txnum)) = entries()? {
        debug_assert!((base..end).contains(&txnum));
        if count == u64::from(u32::MAX) {
            return Err(Error::Invalid(format!(
                "index run of more than {count} entries is too large"
            )));
        }
        let bucket = if bits == 0 {
            0
        } else {
            (prefix >> (32 - bits)) as usize
        };
        if bucket != current {
            table[current].1 = std::mem::take(&mut crc).finalize();
            for slot in &mut table[current + 1..=bucket] {
                slot.0 = count as u32;
            }
            current = bucket;
        }
        let residual = if bits == 0 {
            prefix
        } else {
            prefix & ((1u32 << (32 - bits)) - 1)
        };
        entry[..pb].copy_from_slice(&residual.to_le_bytes()[..pb]);
        entry[pb..pb + tb].copy_from_slice(&(txnum - base).to_le_bytes()[..tb]);
        entry[pb + tb..es].copy_from_slice(&tail[..tail_bytes]);
        crc.update(&entry[..es]);
        out.write_all(&entry[..es]).map_err(io)?;
        count += 1;
    }
    table[current].1 = crc.finalize();
    for slot in &mut table[current + 1..] {
        slot.0 = count as u32;
    }
    for (start, crc) in &table {
        out.write_all(&start.to_le_bytes()).map_err(io)?;
        out.write_all(&crc.to_le_bytes()).map_err(io)?;
    }
    let mut footer = Vec::with_capacity(FOOTER_PAYLOAD);
    footer.extend_from_slice(if lean { LEAN_MAGIC } else { MAGIC });
    footer.extend_from_slice(&base.to_le_bytes());
    footer.extend_from_slice(&end.to_le_bytes());
    footer.extend_from_slice(&count.to_le_bytes());
    footer.extend_from_slice(&[bits as u8, pb as u8, tb as u8]);
    let mut framed = Vec::with_capacity(FOOTER_LEN);
    encode_frame(&mut framed, &footer);
    out.write_all(&framed).map_err(io)?;
    let file = out
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(io)
}

/// The committed runs, as a snapshot sees them.
#[derive(Clone, Default)]
pub struct TxIndexView {
    runs: Vec<(Arc<Run>, u64)>,
}

impl TxIndexView {
    /// Tx numbers whose txid may be `txid` (same 32-bit prefix); verify each against the hash
    /// array. In a lean store they are exactly the tx numbers whose txid is `txid`.
    pub fn candidates(&self, txid: &Hash32) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for (run, cap) in &self.runs {
            run.find(txid, *cap, &mut out)?;
        }
        Ok(out)
    }
}

struct RunRef {
    id: u64,
    cap: u64,
    run: Arc<Run>,
}

/// An uncommitted tx: its number, and how many of its outputs are unspent (a flush leaves
/// the tx out when none is).
struct Pending {
    txnum: u64,
    live: u32,
}

/// The tx numbers in `base..end` that have unspent outputs, one bit each: what a pruning merge
/// keeps. Numbers outside the range count as live (kept), since nothing is known of them.
pub struct LiveTxs {
    base: u64,
    end: u64,
    bits: Vec<u64>,
}

impl LiveTxs {
    /// The memory a set over `base..end` takes, in bytes.
    pub fn bytes(base: u64, end: u64) -> u64 {
        end.saturating_sub(base).div_ceil(64) * 8
    }

    pub fn new(base: u64, end: u64) -> LiveTxs {
        let words = Self::bytes(base, end) / 8;
        LiveTxs {
            base,
            end,
            bits: vec![0; words as usize],
        }
    }

    pub fn insert(&mut self, txnum: u64) {
        if (self.base..self.end).contains(&txnum) {
            let i = txnum - self.base;
            self.bits[(i / 64) as usize] |= 1 << (i % 64);
        }
    }

    fn contains(&self, txnum: u64) -> bool {
        if !(self.base..self.end).contains(&txnum) {
            return true;
        }
        let i = txnum - self.base;
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn len(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// The writer side: committed runs plus the txids of uncommitted blocks.
pub struct TxIndexWriter {
    dir: PathBuf,
    /// Runs hold whole txids (the store keeps no hash array).
    lean: bool,
    runs: Vec<RunRef>,
    pending: HashMap<Hash32, Pending>,
    dropped: Vec<Arc<Run>>,
    /// A merge on its own thread, of the runs it names by (id, cap).
    background: Option<Background<(u64, u64), RunRef>>,
}

/// How a merge that includes the oldest run learns which txs still have unspent outputs.
pub struct Pruning {
    /// The bytes it reads to find out, counted toward a background merge's size.
    pub cost: u64,
    /// Called with the merge's `base` and `end`, and the merge's cancel flag; `None` keeps
    /// every tx (the set would not fit in memory).
    pub live: LiveFn,
}

pub type LiveFn = Box<dyn FnOnce(u64, u64, &AtomicBool) -> Result<Option<LiveTxs>> + Send>;

impl Pruning {
    /// Keeps every tx.
    pub fn none() -> Pruning {
        Pruning {
            cost: 0,
            live: Box::new(|_, _, _| Ok(None)),
        }
    }
}

impl Output for RunRef {
    fn discard(self) {
        self.run.file.mark_obsolete();
    }
}

impl Drop for TxIndexWriter {
    fn drop(&mut self) {
        Background::stop(&mut self.background);
    }
}

impl TxIndexWriter {
    /// `state` is the manifest's list of (file id, cap); `lean` says whether the runs hold
    /// whole txids.
    pub fn open(dir: &Path, state: &[(u64, u64)], lean: bool) -> Result<TxIndexWriter> {
        let mut runs = Vec::with_capacity(state.len());
        for &(id, cap) in state {
            let path = dir.join(file_name(id));
            let run = Run::open(&path)?;
            if run.lean != lean {
                let (found, store) = if lean {
                    ("full", "lean")
                } else {
                    ("lean", "full")
                };
                return Err(Error::corrupt(
                    &path,
                    0,
                    format!("a {found} index run in a {store} store"),
                ));
            }
            runs.push(RunRef {
                id,
                cap,
                run: Arc::new(run),
            });
        }
        Ok(TxIndexWriter {
            dir: dir.to_path_buf(),
            lean,
            runs,
            pending: HashMap::new(),
            dropped: Vec::new(),
            background: None,
        })
    }

    pub fn state(&self) -> Vec<(u64, u64)> {
        self.runs.iter().map(|r| (r.id, r.cap)).collect()
    }

    pub fn file_names(&self) -> Vec<String> {
        self.runs.iter().map(|r| file_name(r.id)).collect()
    }

    pub fn view(&self) -> TxIndexView {
        TxIndexView {
            runs: self
                .runs
                .iter()
                .map(|r| (Arc::clone(&r.run), r.cap))
                .collect(),
        }
    }

    /// A new tx with `outputs` unspent outputs.
    pub fn add(&mut self, txid: Hash32, txnum: u64, outputs: u32) {
        self.pending.insert(
            txid,
            Pending {
                txnum,
                live: outputs,
            },
        );
    }

    /// An output of `txid` (tx `txnum`) was spent: one fewer unspent if the tx is uncommitted.
    pub fn spent(&mut self, txid: &Hash32, txnum: u64) {
        if let Some(p) = self.pending.get_mut(txid) {
            if p.txnum == txnum {
                p.live = p.live.saturating_sub(1);
            }
        }
    }

    /// A rollback made an output of committed tx `txnum` unspent again: the tx must be
    /// findable even if a merge has dropped it.
    pub fn reinstate(&mut self, txid: Hash32, txnum: u64) {
        let p = self
            .pending
            .entry(txid)
            .or_insert(Pending { txnum, live: 0 });
        if p.txnum == txnum {
            p.live += 1;
        }
    }

    /// The tx number of an uncommitted txid (the latest, should a txid repeat).
    pub fn find_pending(&self, txid: &Hash32) -> Option<u64> {
        self.pending.get(txid).map(|p| p.txnum)
    }

    pub fn pending_bytes(&self) -> usize {
        crate::utxo::table_bytes(self.pending.capacity(), size_of::<(Hash32, Pending)>())
    }

    /// What the uncommitted txids' table will allocate when it next grows, if that is near
    /// (nothing is removed from it, so its capacity gives its buckets).
    pub fn pending_growth(&self) -> usize {
        let (len, capacity) = (self.pending.len(), self.pending.capacity());
        let buckets = crate::utxo::buckets_for(capacity);
        crate::utxo::table_growth(len, capacity, buckets, size_of::<(Hash32, Pending)>())
    }

    /// Writes the uncommitted txids that still have unspent outputs as a new run (fsynced).
    /// Returns whether a file was made.
    pub fn flush(&mut self, alloc_id: &mut dyn FnMut() -> u64) -> Result<bool> {
        let lean = self.lean;
        // Full runs sort 12-byte (prefix, tx number) pairs; lean ones need the whole txid.
        let mut full: Vec<(u32, u64)> = Vec::new();
        let mut whole: Vec<(Hash32, u64)> = Vec::new();
        for (txid, p) in self.pending.drain().filter(|(_, p)| p.live > 0) {
            if lean {
                whole.push((txid, p.txnum));
            } else {
                full.push((prefix(&txid), p.txnum));
            }
        }
        self.pending.shrink_to_fit();
        let count = full.len() + whole.len();
        if count == 0 {
            return Ok(false);
        }
        full.sort_unstable();
        whole.sort_unstable();
        let txnums = full.iter().map(|e| e.1).chain(whole.iter().map(|e| e.1));
        let base = txnums.clone().min().expect("not empty");
        let end = txnums.max().expect("not empty") + 1;
        let id = alloc_id();
        let mut it = full
            .iter()
            .map(|&(p, txnum)| (p, [0; TAIL_LEN], txnum))
            .chain(
                whole
                    .iter()
                    .map(|(txid, txnum)| (prefix(txid), tail(txid), *txnum)),
            );
        write_run(
            &self.dir.join(file_name(id)),
            lean,
            count as u64,
            base,
            end,
            usize::MAX,
            &mut || Ok(it.next()),
        )?;
        let run = Run::open(&self.dir.join(file_name(id)))?;
        self.runs.push(RunRef {
            id,
            cap: end,
            run: Arc::new(run),
        });
        Ok(true)
    }

    /// Forgets tx numbers `>= tx_count` (rollback; nothing may be pending): runs that start
    /// there are dropped, others get their cap lowered.
    pub fn truncate(&mut self, tx_count: u64) {
        assert!(self.pending.is_empty());
        // A merge running in the background read the runs before these caps: its output is
        // thrown away by the next compaction.
        if let Some(bg) = &self.background {
            bg.cancel();
        }
        let (keep, drop): (Vec<RunRef>, Vec<RunRef>) = std::mem::take(&mut self.runs)
            .into_iter()
            .partition(|r| r.run.base < tx_count && r.cap > r.run.base);
        self.dropped.extend(drop.into_iter().map(|r| r.run));
        self.runs = keep;
        for r in &mut self.runs {
            r.cap = r.cap.min(tx_count);
        }
    }

    /// Which runs to merge, as the index of the oldest one, among those from `floor` on: all
    /// of them (`all`, or when the newer runs reach a quarter of the oldest's entries, so
    /// that spent txs do not pile up beside it), else the newest while the older neighbour is
    /// at most twice their combined size (so run sizes grow geometrically and lookups touch
    /// O(log n) runs). Runs below `floor` belong to a background merge, and the rule of the
    /// quarter waits for it.
    fn plan(&self, all: bool, floor: usize) -> Option<usize> {
        let n = self.runs.len();
        if n < floor + 2 {
            return None;
        }
        let mut start = n - 1;
        let mut total = self.runs[start].run.count;
        while start > floor && self.runs[start - 1].run.count <= total * 2 {
            start -= 1;
            total += self.runs[start].run.count;
        }
        let newer: u64 = self.runs[1..].iter().map(|r| r.run.count).sum();
        if floor == 0 && (all || newer * 4 >= self.runs[0].run.count) {
            Some(0)
        } else {
            (start < n - 1).then_some(start)
        }
    }

    /// Merges runs per `plan`, streaming entries; memory is the bucket table, bounded by
    /// `memory`. A merge that includes the oldest run keeps only the txs `pruning` reports
    /// unspent outputs for (asked once, and only then).
    ///
    /// A merge reading at least `background_from` bytes (its runs, plus `pruning.cost` when
    /// it prunes) runs on its own thread instead, one at a time: later calls merge only newer
    /// runs and install it once it is done, unless a `truncate` came in between. `all` stops
    /// it first. Returns whether the runs changed.
    pub fn compact(
        &mut self,
        alloc_id: &mut dyn FnMut() -> u64,
        memory: usize,
        all: bool,
        pruning: Pruning,
        background_from: u64,
    ) -> Result<bool> {
        if all {
            Background::stop(&mut self.background);
        }
        let worked = self.finish_background(false)?;
        let floor = self.background_range().map_or(0, |r| r.end);
        let Some(start) = self.plan(all, floor) else {
            return Ok(worked);
        };
        let inputs: Vec<(Arc<Run>, u64)> = self.runs[start..]
            .iter()
            .map(|r| (Arc::clone(&r.run), r.cap))
            .collect();
        let prune = start == 0;
        let mut bytes: u64 = inputs
            .iter()
            .map(|(r, _)| r.file.bytes().len() as u64)
            .sum();
        if prune {
            bytes = bytes.saturating_add(pruning.cost);
        }
        let background = bytes >= background_from;
        if background && self.background.is_some() {
            // One at a time: this merge waits for the running one, as in the other sets.
            return Ok(worked);
        }
        let id = alloc_id();
        let path = self.dir.join(file_name(id));
        let lean = self.lean;
        let merge = move |cancel: &AtomicBool| {
            let live = if prune {
                pruning.live
            } else {
                Pruning::none().live
            };
            merge_runs(&inputs, lean, live, &path, id, memory, cancel)
        };
        if background {
            let keys = self.keys()[start..].to_vec();
            self.background = Some(Background::start("txindex-merge", &self.dir, keys, merge)?);
            return Ok(worked);
        }
        let merged = merge(&AtomicBool::new(false))?;
        self.install(start..self.runs.len(), merged);
        Ok(true)
    }

    fn keys(&self) -> Vec<(u64, u64)> {
        self.runs.iter().map(|r| (r.id, r.cap)).collect()
    }

    /// Puts `merged` in place of the runs in `range`.
    fn install(&mut self, range: Range<usize>, merged: RunRef) {
        let old = self.runs.splice(range, [merged]);
        self.dropped.extend(old.map(|r| r.run));
    }

    /// Where the background merge's inputs are now, if they are all still there with the caps
    /// it read, and it was not cancelled.
    fn background_range(&self) -> Option<Range<usize>> {
        self.background.as_ref()?.range_in(&self.keys())
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
        let keys = self.keys();
        let Some((range, merged)) = Background::finish(&mut self.background, wait, &keys)? else {
            return Ok(false);
        };
        self.install(range, merged);
        Ok(true)
    }

    /// The manifest without the dropped runs is durable: let their files go.
    pub fn committed(&mut self) {
        for run in self.dropped.drain(..) {
            run.file.mark_obsolete();
        }
    }
}

/// Merges `inputs` (runs with their caps) into a new run at `path`, keeping only the txs
/// `live(base, end)` reports unspent outputs for (every tx when it answers `None`). Stops
/// with an error once `cancel` is set; the unfinished file is removed.
fn merge_runs(
    inputs: &[(Arc<Run>, u64)],
    lean: bool,
    live: LiveFn,
    path: &Path,
    id: u64,
    memory: usize,
    cancel: &AtomicBool,
) -> Result<RunRef> {
    let total: u64 = inputs.iter().map(|(r, _)| r.count).sum();
    let base = inputs.iter().map(|(r, _)| r.base).min().expect("inputs");
    let end = inputs
        .iter()
        .map(|(r, cap)| (*cap).min(r.end))
        .max()
        .expect("inputs")
        .max(base);
    let keep = live(base, end, cancel)?;
    let estimate = keep.as_ref().map_or(total, |k| k.len().min(total));
    let mut iters: Vec<(RunIter, u64)> = inputs
        .iter()
        .map(|(r, cap)| (RunIter::new(r), *cap))
        .collect();
    let mut heap = BinaryHeap::new();
    for (n, (it, cap)) in iters.iter_mut().enumerate() {
        if let Some(e) = next_below(it, *cap)? {
            heap.push(Reverse((e, n)));
        }
    }
    let mut last = None;
    write_run(path, lean, estimate, base, end, memory, &mut || loop {
        check_cancel(cancel, "txid index")?;
        let Some(Reverse((e, n))) = heap.pop() else {
            return Ok(None);
        };
        let (it, cap) = &mut iters[n];
        if let Some(next) = next_below(it, *cap)? {
            heap.push(Reverse((next, n)));
        }
        // A tx reinstated by a rollback can have an entry in two runs.
        let fresh = last.replace(e) != Some(e);
        if fresh && keep.as_ref().is_none_or(|k| k.contains(e.2)) {
            return Ok(Some(e));
        }
    })?;
    Ok(RunRef {
        id,
        cap: end,
        run: Arc::new(Run::open(path)?),
    })
}

fn next_below(it: &mut RunIter, cap: u64) -> Result<Option<Entry>> {
    while let Some(e) = it.next()? {
        if e.2 < cap {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txid(n: u64) -> Hash32 {
        let mut h = [0u8; 32];
        // Spread prefixes, and give every fourth txid the same prefix as its neighbour.
        let p = (n / 2).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h[..8].copy_from_slice(&p.to_be_bytes());
        h[8..16].copy_from_slice(&n.to_le_bytes());
        h
    }

    fn lookup(view: &TxIndexView, n: u64) -> Vec<u64> {
        let mut c = view.candidates(&txid(n)).unwrap();
        c.sort();
        c
    }

    #[test]
    fn flush_merge_truncate_and_reopen() {
        for lean in [false, true] {
            flush_merge_truncate_and_reopen_in(lean);
        }
    }

    fn flush_merge_truncate_and_reopen_in(lean: bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TxIndexWriter::open(dir.path(), &[], lean).unwrap();
        let mut id = 0;
        let mut alloc = || {
            id += 1;
            id
        };
        let mut n = 0;
        for batch in [5000u64, 10, 1, 300, 400] {
            for _ in 0..batch {
                w.add(txid(n), n, 1);
                n += 1;
            }
            w.flush(&mut alloc).unwrap();
        }
        let check = |view: &TxIndexView, upto: u64| {
            for k in 0..upto {
                let c = lookup(view, k);
                if lean {
                    // Txids sharing a prefix are told apart by their tails.
                    assert_eq!(c, vec![k]);
                } else {
                    assert!(c.contains(&k), "{k}: {c:?}");
                    assert!(
                        c.len() <= 2 && c.iter().all(|&t| t / 2 == k / 2),
                        "{k}: {c:?}"
                    );
                }
            }
        };
        check(&w.view(), n);
        w.truncate(5200);
        assert_eq!(
            w.state().len(),
            4,
            "the run starting past the cut is dropped"
        );
        assert!(lookup(&w.view(), 5250).is_empty());
        let compact = |w: &mut TxIndexWriter, alloc: &mut dyn FnMut() -> u64| {
            w.compact(alloc, 1 << 20, false, Pruning::none(), u64::MAX)
                .unwrap()
        };
        assert!(compact(&mut w, &mut alloc));
        assert_eq!(w.state().len(), 2);
        assert!(!compact(&mut w, &mut alloc));
        w.committed();
        check(&w.view(), 5200);
        assert!(lookup(&w.view(), 5250).is_empty());
        let state = w.state();
        drop(w);
        let w = TxIndexWriter::open(dir.path(), &state, lean).unwrap();
        check(&w.view(), 5200);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        let err = TxIndexWriter::open(dir.path(), &state, !lean)
            .err()
            .unwrap();
        let (found, store) = if lean {
            ("lean", "full")
        } else {
            ("full", "lean")
        };
        let want = format!("a {found} index run in a {store} store");
        assert!(err.to_string().ends_with(&want), "{err}");
    }

    /// Fills a writer as the golden test's earlier build did: txs `7..7 + n`, every
    /// `live_mod`th with an unspent output.
    fn golden_batch(w: &mut TxIndexWriter, txs: std::ops::Range<u64>, live_mod: u64) {
        for n in txs {
            w.add(txid(n), n + 7, u32::from(n % live_mod == 0));
        }
    }

    #[test]
    fn full_runs_are_the_bytes_earlier_builds_wrote() {
        // (file length, crc32 of the file) as the build before lean mode wrote them.
        let golden = [
            (1000, 1, (6071, 0xbe0f_5394), (1855, 0x5c8c_c493)),
            (70000, 3, (164_401, 0xa83d_32b6), (82732, 0x3e31_553c)),
        ];
        for (n, live_mod, flushed, merged) in golden {
            let dir = tempfile::tempdir().unwrap();
            let mut w = TxIndexWriter::open(dir.path(), &[], false).unwrap();
            let digest = |id| {
                let bytes = std::fs::read(dir.path().join(file_name(id))).unwrap();
                (bytes.len(), crc32fast::hash(&bytes))
            };
            golden_batch(&mut w, 0..n, live_mod);
            w.flush(&mut || 1).unwrap();
            assert_eq!(digest(1), flushed);
            golden_batch(&mut w, n..n + n / 2, 1);
            w.flush(&mut || 2).unwrap();
            let live = Pruning {
                cost: 0,
                live: Box::new(move |base, end, _| {
                    let mut l = LiveTxs::new(base, end);
                    for t in (0..n * 2).step_by(5) {
                        l.insert(t);
                    }
                    Ok(Some(l))
                }),
            };
            assert!(w
                .compact(&mut || 3, 1 << 12, false, live, u64::MAX)
                .unwrap());
            assert_eq!(digest(3), merged);
        }
    }

    #[test]
    fn lean_run_layout_byte_by_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TxIndexWriter::open(dir.path(), &[], true).unwrap();
        let a: Hash32 = [[1, 2, 3, 4].as_slice(), &[0xaa; 28]]
            .concat()
            .try_into()
            .unwrap();
        let b: Hash32 = [[1, 2, 3, 4].as_slice(), &[0x55; 28]]
            .concat()
            .try_into()
            .unwrap();
        w.add(a, 10, 1);
        w.add(b, 12, 1);
        w.flush(&mut || 1).unwrap();
        // Two entries: no bucket bits, so a 4-byte residual prefix (LE), a 1-byte offset
        // from base 10 (the span is 3), the tail; sorted by (prefix, tail, tx number).
        let mut entries = Vec::new();
        entries.extend_from_slice(&[4, 3, 2, 1, 2]);
        entries.extend_from_slice(&[0x55; 28]);
        entries.extend_from_slice(&[4, 3, 2, 1, 0]);
        entries.extend_from_slice(&[0xaa; 28]);
        let mut want = entries.clone();
        want.extend_from_slice(&0u32.to_le_bytes()); // the bucket's first entry
        want.extend_from_slice(&crc32fast::hash(&entries).to_le_bytes());
        let mut footer = b"FTXL".to_vec();
        for v in [10u64, 13, 2] {
            footer.extend_from_slice(&v.to_le_bytes()); // base, end, count
        }
        footer.extend_from_slice(&[0, 4, 1]); // bits, pb, tb
        encode_frame(&mut want, &footer);
        assert_eq!(std::fs::read(dir.path().join(file_name(1))).unwrap(), want);
        assert_eq!(w.view().candidates(&a).unwrap(), vec![10]);
        let mut c = a;
        c[31] ^= 1;
        assert!(w.view().candidates(&c).unwrap().is_empty());
    }

    #[test]
    fn spent_txs_are_left_out_by_flushes_and_pruning_merges() {
        for lean in [false, true] {
            spent_txs_are_left_out_by_flushes_and_pruning_merges_in(lean);
        }
    }

    fn spent_txs_are_left_out_by_flushes_and_pruning_merges_in(lean: bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TxIndexWriter::open(dir.path(), &[], lean).unwrap();
        let mut id = 0;
        let mut alloc = || {
            id += 1;
            id
        };
        // 0..100: tx n has n % 3 outputs (0: nothing to spend); odd txs spend one of theirs.
        for n in 0..100 {
            w.add(txid(n), n, (n % 3) as u32);
            if n % 2 == 1 {
                w.spent(&txid(n), n);
            }
        }
        w.spent(&txid(4), 5); // another tx number: not this tx
        assert!(w.flush(&mut alloc).unwrap());
        let kept = |n: u64| n % 3 == 2 || (n % 3 == 1 && n.is_multiple_of(2));
        for n in 0..100 {
            assert_eq!(lookup(&w.view(), n).contains(&n), kept(n), "tx {n}");
        }
        // A rollback makes an output of spent tx 3 unspent again.
        w.reinstate(txid(3), 3);
        for n in 100..140 {
            w.add(txid(n), n, 1);
        }
        assert!(w.flush(&mut alloc).unwrap());
        assert!(lookup(&w.view(), 3).contains(&3));
        // The newer run is over a quarter of the oldest: all merge, keeping what `live` says.
        let (tell, asked) = std::sync::mpsc::channel();
        let live = Pruning {
            cost: 0,
            live: Box::new(move |base, end, _| {
                tell.send((base, end)).unwrap();
                let mut l = LiveTxs::new(base, end);
                for n in [2, 3, 8, 100, 139] {
                    l.insert(n);
                }
                Ok(Some(l))
            }),
        };
        assert!(w
            .compact(&mut alloc, 1 << 20, false, live, u64::MAX)
            .unwrap());
        assert_eq!(asked.try_recv(), Ok((2, 140)));
        assert_eq!(w.state().len(), 1);
        let found: Vec<u64> = (0..140)
            .filter(|&n| lookup(&w.view(), n).contains(&n))
            .collect();
        assert_eq!(found, vec![2, 3, 8, 100, 139]);
    }

    #[test]
    fn corrupt_bucket_and_footer_are_reported() {
        for lean in [false, true] {
            corrupt_bucket_and_footer_are_reported_in(lean);
        }
    }

    fn corrupt_bucket_and_footer_are_reported_in(lean: bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TxIndexWriter::open(dir.path(), &[], lean).unwrap();
        for n in 0..1000 {
            w.add(txid(n), n, 1);
        }
        w.flush(&mut || 1).unwrap();
        let path = dir.path().join(file_name(1));
        let good = std::fs::read(&path).unwrap();
        let prefix = format!("corrupt store file {} at offset ", path.display());
        for at in [0, good.len() / 2, good.len() - 5] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::remove_file(&path).unwrap();
            std::fs::write(&path, &bad).unwrap();
            let result = Run::open(&path).and_then(|run| {
                let view = TxIndexView {
                    runs: vec![(Arc::new(run), u64::MAX)],
                };
                (0..1000).try_for_each(|n| view.candidates(&txid(n)).map(drop))
            });
            let err = result.unwrap_err().to_string();
            assert!(err.starts_with(&prefix), "{err}");
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(Run::open(&path).is_err());
    }

    /// A writer over `dir` with one run per batch of txs (numbered from 0), and the next
    /// alloc id.
    fn filled(dir: &Path, lean: bool, batches: &[u64]) -> (TxIndexWriter, u64) {
        let mut w = TxIndexWriter::open(dir, &[], lean).unwrap();
        let (mut n, mut id) = (0, 0);
        for batch in batches {
            for _ in 0..*batch {
                w.add(txid(n), n, 1);
                n += 1;
            }
            id += 1;
            w.flush(&mut || id).unwrap();
        }
        (w, id + 1)
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn named(w: &TxIndexWriter) -> Vec<String> {
        let mut names = w.file_names();
        names.sort();
        names
    }

    /// Keeps the txs whose number is a multiple of 3, once `go` says so.
    fn held_pruning() -> (Pruning, std::sync::mpsc::Sender<()>) {
        let (go, wait) = std::sync::mpsc::channel();
        let pruning = Pruning {
            cost: 0,
            live: Box::new(move |base, end, _| {
                let _ = wait.recv();
                let mut l = LiveTxs::new(base, end);
                (base..end).step_by(3).for_each(|t| l.insert(t));
                Ok(Some(l))
            }),
        };
        (pruning, go)
    }

    /// Two runs of 1,000 txs merging in the background (held until `go`), then two newer
    /// runs of 10: the writer, the background merge's file id, the last id used and `go`.
    fn held_merge_and_two_small_runs(
        dir: &Path,
    ) -> (TxIndexWriter, u64, u64, std::sync::mpsc::Sender<()>) {
        let (mut w, mut id) = filled(dir, false, &[1000, 1000]);
        let (pruning, go) = held_pruning();
        let bg_id = id;
        assert!(!w
            .compact(&mut || bg_id, 1 << 20, false, pruning, 0)
            .unwrap());
        for n in 2000..2020 {
            w.add(txid(n), n, 1);
            if n % 10 == 9 {
                id += 1;
                w.flush(&mut || id).unwrap();
            }
        }
        (w, bg_id, id, go)
    }

    #[test]
    fn a_background_merge_writes_what_an_inline_merge_writes() {
        for lean in [false, true] {
            let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (mut inline, id) = filled(a.path(), lean, &[1000, 1000]);
            let (mut bg, _) = filled(b.path(), lean, &[1000, 1000]);
            let (pruning, go) = held_pruning();
            go.send(()).unwrap();
            assert!(inline
                .compact(&mut || id, 1 << 20, false, pruning, u64::MAX)
                .unwrap());
            let (pruning, go) = held_pruning();
            go.send(()).unwrap();
            // The first call only starts the merge, which then prunes as an inline one does.
            assert!(!bg.compact(&mut || id, 1 << 20, false, pruning, 0).unwrap());
            assert_eq!(bg.state().len(), 2);
            assert!(bg.finish_background(true).unwrap());
            assert_eq!(bg.state(), inline.state());
            let name = file_name(id);
            assert_eq!(
                std::fs::read(a.path().join(&name)).unwrap(),
                std::fs::read(b.path().join(&name)).unwrap(),
                "byte for byte the same run"
            );
            assert!(lookup(&bg.view(), 999).contains(&999));
            assert!(!lookup(&bg.view(), 998).contains(&998), "pruned");
        }
    }

    #[test]
    fn newer_runs_are_merged_while_a_background_merge_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, bg_id, id, go) = held_merge_and_two_small_runs(dir.path());
        // The two small runs merge in place, after the background merge's inputs.
        let id = id + 1;
        assert!(w
            .compact(&mut || id, 1 << 20, false, Pruning::none(), u64::MAX)
            .unwrap());
        assert_eq!(w.state().len(), 3);
        assert_eq!(w.background_range(), Some(0..2));
        assert!(lookup(&w.view(), 998).contains(&998), "not pruned yet");
        go.send(()).unwrap();
        assert!(w.finish_background(true).unwrap());
        assert_eq!(w.state(), vec![(bg_id, 2000), (id, 2020)]);
        assert!(!lookup(&w.view(), 998).contains(&998), "pruned");
        for n in (0..2000).step_by(3).chain(2000..2020) {
            assert!(lookup(&w.view(), n).contains(&n), "{n}");
        }
        w.committed();
        drop(w);
        assert_eq!(files(dir.path()), [file_name(bg_id), file_name(id)]);
    }

    #[test]
    fn a_big_merge_waits_for_the_running_background_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, bg_id, id, go) = held_merge_and_two_small_runs(dir.path());
        // Big enough for the background too (threshold 0): it waits, nothing is merged.
        let next = id + 1;
        assert!(!w
            .compact(&mut || next, 1 << 20, false, Pruning::none(), 0)
            .unwrap());
        assert_eq!(w.state().len(), 4);
        go.send(()).unwrap();
        assert!(w.finish_background(true).unwrap());
        // The next call starts it.
        assert!(!w
            .compact(&mut || next, 1 << 20, false, Pruning::none(), 0)
            .unwrap());
        assert!(w.finish_background(true).unwrap());
        assert_eq!(w.state(), vec![(bg_id, 2000), (next, 2020)]);
    }

    #[test]
    fn a_rollback_or_merging_everything_cancels_a_background_merge() {
        for rollback in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (mut w, id) = filled(dir.path(), false, &[1000, 1000]);
            let (pruning, go) = held_pruning();
            assert!(!w.compact(&mut || id, 1 << 20, false, pruning, 0).unwrap());
            drop(go); // its pruning goes on at once; the cancel decides
            if rollback {
                w.truncate(1500);
                assert_eq!(w.background_range(), None, "cancelled");
                assert!(!w.finish_background(true).unwrap(), "thrown away");
                assert_eq!(
                    w.state(),
                    vec![(1, 1000), (2, 1500)],
                    "caps as the rollback left"
                );
            } else {
                assert!(w
                    .compact(&mut || id + 1, 1 << 20, true, Pruning::none(), u64::MAX)
                    .unwrap());
                assert_eq!(w.state(), vec![(id + 1, 2000)], "merged in the caller");
            }
            w.committed();
            drop(w);
            let left = files(dir.path());
            assert!(!left.contains(&file_name(id)), "{left:?}");
        }
    }

    #[test]
    fn dropping_the_writer_stops_a_background_merge_and_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, id) = filled(dir.path(), false, &[1000, 1000]);
        let before = named(&w);
        let (pruning, go) = held_pruning();
        w.compact(&mut || id, 1 << 20, false, pruning, 0).unwrap();
        drop(go);
        drop(w);
        assert_eq!(files(dir.path()), before);
    }

    #[test]
    fn a_cancelled_merge_stops_with_an_error_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (w, id) = filled(dir.path(), false, &[1000, 1000]);
        let inputs: Vec<(Arc<Run>, u64)> =
            w.runs.iter().map(|r| (Arc::clone(&r.run), r.cap)).collect();
        let path = dir.path().join(file_name(id));
        let err = merge_runs(
            &inputs,
            false,
            Pruning::none().live,
            &path,
            id,
            1 << 20,
            &AtomicBool::new(true),
        )
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "txid index merge cancelled");
        assert_eq!(files(dir.path()), named(&w));
    }
}
