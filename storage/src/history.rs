//! Script histories: immutable segments (one per flush, merged size-tiered) mapping a script
//! key to ascending tx numbers, plus an in-memory buffer. Rollback records a cut per segment.
//! Format and policy: docs/STORAGE.md ("UTXO runs and history segments").

mod bits;
mod block;
mod segment;
mod segment_writer;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::size_of;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::background::{check_cancel, Background, Output};
use crate::error::{Error, Result};
use crate::utxo::sorted_file::pick_merge;
use crate::varint;
use crate::HashX;
use segment::{Segment, SegmentCursor};
use segment_writer::SegmentWriter;

const STATE_VERSION: u8 = 1;

/// Script keys are hash prefixes already: their first 8 bytes are a good hash.
#[derive(Default)]
struct HashxHasher(u64);

impl Hasher for HashxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(17) ^ u64::from_le_bytes(b);
        }
    }

    fn write_usize(&mut self, _: usize) {} // the slice length, always HASHX_LEN

    fn finish(&self) -> u64 {
        self.0
    }
}

type Buffer = HashMap<HashX, Vec<u64>, BuildHasherDefault<HashxHasher>>;

/// A segment with the rollback cut that applies to it: entries >= cut are gone.
#[derive(Clone)]
struct SegRef {
    seg: Arc<Segment>,
    cut: Option<u64>,
}

/// What a merge reads of a segment: which one (its id), and up to where (its cut).
type SegKey = (u64, Option<u64>);

impl SegRef {
    fn key(&self) -> SegKey {
        (self.seg.id(), self.cut)
    }
}

/// The writer side: segments (oldest first) plus the buffer of appended entries.
pub struct HistorySet {
    dir: PathBuf,
    segs: Vec<SegRef>,
    buffer: Buffer,
    buffer_nums: usize, // capacity of all buffered vectors, in numbers
    /// Segments replaced or emptied, still named by the last committed manifest.
    pending_obsolete: Vec<Arc<Segment>>,
    /// A merge on its own thread (about 15M entries a second: minutes for mainnet's
    /// billions), of the segments it names by (id, cut).
    background: Option<Background<SegKey, Option<Segment>>>,
}

/// A consistent set of segments for readers. Holding it keeps the files alive.
#[derive(Clone)]
pub struct HistoryView {
    segs: Arc<[SegRef]>,
}

fn segment_name(id: u64) -> String {
    format!("hist-{id}.seg")
}

impl HistorySet {
    /// Opens the segments named by `state` (from a previous `state()`); empty = new set.
    pub fn open(dir: &Path, state: &[u8]) -> Result<HistorySet> {
        let mut segs = Vec::new();
        if !state.is_empty() {
            let bad = || Error::Invalid("history state is malformed".into());
            if state[0] != STATE_VERSION {
                return Err(Error::Invalid(format!(
                    "history state version {} is not supported",
                    state[0]
                )));
            }
            let mut pos = 1;
            let n = varint::get(state, &mut pos).ok_or_else(bad)?;
            for _ in 0..n {
                let id = varint::get(state, &mut pos).ok_or_else(bad)?;
                let cut = varint::get(state, &mut pos).ok_or_else(bad)?;
                let seg = Segment::open(&dir.join(segment_name(id)), id)?;
                segs.push(SegRef {
                    seg: Arc::new(seg),
                    cut: cut.checked_sub(1),
                });
            }
            if pos != state.len() {
                return Err(bad());
            }
        }
        Ok(HistorySet {
            dir: dir.to_path_buf(),
            segs,
            buffer: Buffer::default(),
            buffer_nums: 0,
            pending_obsolete: Vec::new(),
            background: None,
        })
    }

    /// Records that tx `txnum` touches `hashx`. Numbers normally arrive ascending; a repeat
    /// is ignored and an out-of-order one is put in its place.
    pub fn append(&mut self, hashx: HashX, txnum: u64) {
        let nums = self.buffer.entry(hashx).or_default();
        let cap = nums.capacity();
        match nums.last() {
            Some(&last) if last == txnum => return,
            Some(&last) if last > txnum => {
                if let Err(at) = nums.binary_search(&txnum) {
                    nums.insert(at, txnum);
                }
            }
            _ => nums.push(txnum),
        }
        self.buffer_nums += nums.capacity() - cap;
    }

    /// Forgets every entry with txnum >= `from`: buffered ones now, flushed ones through a
    /// cut on each existing segment (segments written later are not affected).
    pub fn truncate(&mut self, from: u64) {
        // A merge running in the background read the segments before this cut.
        if let Some(bg) = &self.background {
            bg.cancel();
        }
        self.buffer.retain(|_, nums| {
            nums.truncate(nums.partition_point(|&t| t < from));
            !nums.is_empty()
        });
        let mut kept = Vec::with_capacity(self.segs.len());
        for mut s in self.segs.drain(..) {
            let (min, max) = s.seg.range();
            if min >= from {
                self.pending_obsolete.push(s.seg); // nothing left visible
                continue;
            }
            if max >= from {
                s.cut = Some(s.cut.map_or(from, |c| c.min(from)));
            }
            kept.push(s);
        }
        self.segs = kept;
    }

    pub fn buffer_bytes(&self) -> usize {
        self.buffer.capacity() * (size_of::<(HashX, Vec<u64>)>() + 1)
            + self.buffer_nums * size_of::<u64>()
    }

    /// Writes the buffer as a new segment (fsynced) and empties it.
    pub fn flush(&mut self, alloc_id: &mut dyn FnMut() -> u64) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<&HashX> = self.buffer.keys().collect();
        keys.sort_unstable();
        let (id, path) = self.new_segment(alloc_id);
        let mut writer = SegmentWriter::create(&path)?;
        for hashx in keys {
            for &t in &self.buffer[hashx] {
                writer.push(hashx, t)?;
            }
        }
        if writer.finish()? {
            self.segs.push(SegRef {
                seg: Arc::new(Segment::open(&path, id)?),
                cut: None,
            });
        }
        self.buffer = Buffer::default();
        self.buffer_nums = 0;
        Ok(())
    }

    /// Merges segments per the size-tiered policy, folding their cuts in; then, if the
    /// newer segments together reach 1/4 of the oldest's size, merges everything. A merge
    /// streams one block per input segment, so `memory` is not needed beyond that.
    ///
    /// A merge of at least `background_from` bytes runs on its own thread instead, one at a
    /// time: later calls leave its inputs alone (merging only newer segments) and install
    /// its output once it is done, unless a `truncate` came in between. Returns whether the
    /// segments changed.
    pub fn compact(
        &mut self,
        alloc_id: &mut dyn FnMut() -> u64,
        background_from: u64,
    ) -> Result<bool> {
        let mut worked = self.finish_background(false)?;
        loop {
            // Segments up to the background merge's last input are its own.
            let floor = self.background_range().map_or(0, |r| r.end);
            let sizes: Vec<u64> = self.segs[floor..].iter().map(|s| s.seg.size()).collect();
            let range = pick_merge(&sizes).or_else(|| {
                self.background
                    .is_none()
                    .then(|| Self::newer_heavy(&sizes))
                    .flatten()
            });
            let Some(range) = range else {
                return Ok(worked);
            };
            let bytes: u64 = sizes[range.clone()].iter().sum();
            let range = range.start + floor..range.end + floor;
            if bytes >= background_from {
                if self.background.is_none() {
                    self.start_background(range, alloc_id)?;
                }
                return Ok(worked);
            }
            self.merge_range(range, alloc_id)?;
            worked = true;
        }
    }

    /// Each segment repeats the keys of the scripts it holds, and the size-tiered rule rarely
    /// reaches the oldest segment: once the newer ones add up to 1/4 of it, merge them all.
    /// That bounds the repeated keys at a fraction of the newer quarter, for about four more
    /// rewrites of each entry over its life.
    fn newer_heavy(sizes: &[u64]) -> Option<Range<usize>> {
        let (oldest, newer) = sizes.split_first()?;
        let newer: u64 = newer.iter().sum();
        (newer > 0 && newer.saturating_mul(4) >= *oldest).then_some(0..sizes.len())
    }

    /// Merges every segment into one, folding in any cut, so each key is stored once (for
    /// the end of an initial sync, whose flushes leave several). Returns whether there was
    /// work.
    pub fn compact_all(&mut self, alloc_id: &mut dyn FnMut() -> u64) -> Result<bool> {
        Background::stop(&mut self.background);
        match self.segs.as_slice() {
            [] => Ok(false),
            [only] if only.cut.is_none() => Ok(false),
            _ => {
                self.merge_range(0..self.segs.len(), alloc_id)?;
                Ok(true)
            }
        }
    }

    fn merge_range(
        &mut self,
        range: Range<usize>,
        alloc_id: &mut dyn FnMut() -> u64,
    ) -> Result<()> {
        let (id, path) = self.new_segment(alloc_id);
        let merged = merge_segments(
            &self.segs[range.clone()],
            &path,
            id,
            &AtomicBool::new(false),
        )?;
        self.install(range, merged);
        Ok(())
    }

    /// An id for a segment about to be written, and its path.
    fn new_segment(&self, alloc_id: &mut dyn FnMut() -> u64) -> (u64, PathBuf) {
        let id = alloc_id();
        (id, self.dir.join(segment_name(id)))
    }

    /// Puts `merged` (None: every entry was cut) in place of the segments in `range`.
    fn install(&mut self, range: Range<usize>, merged: Option<Segment>) {
        let merged = merged.map(|seg| SegRef {
            seg: Arc::new(seg),
            cut: None,
        });
        let old = self.segs.splice(range, merged);
        self.pending_obsolete.extend(old.map(|s| s.seg));
    }

    fn start_background(
        &mut self,
        range: Range<usize>,
        alloc_id: &mut dyn FnMut() -> u64,
    ) -> Result<()> {
        let (id, path) = self.new_segment(alloc_id);
        let inputs: Vec<SegRef> = self.segs[range].to_vec();
        let keys = inputs.iter().map(SegRef::key).collect();
        self.background = Some(Background::start(
            "history-merge",
            &self.dir,
            keys,
            move |cancel| merge_segments(&inputs, &path, id, cancel),
        )?);
        Ok(())
    }

    /// Where the background merge's inputs are now, if they are all still there as it read
    /// them (same ids and cuts, side by side) and it was not cancelled.
    fn background_range(&self) -> Option<Range<usize>> {
        self.background.as_ref()?.range_in(&self.keys())
    }

    fn keys(&self) -> Vec<SegKey> {
        self.segs.iter().map(SegRef::key).collect()
    }

    /// Whether a background merge is done and waits for the next compaction.
    pub fn merge_done(&self) -> bool {
        Background::done(&self.background)
    }

    /// Installs the background merge if it is done (or, with `wait`, once it is); a merge
    /// whose inputs changed meanwhile is thrown away. Returns whether the segments changed.
    fn finish_background(&mut self, wait: bool) -> Result<bool> {
        let keys = self.keys();
        let Some((range, merged)) = Background::finish(&mut self.background, wait, &keys)? else {
            return Ok(false);
        };
        self.install(range, merged);
        Ok(true)
    }

    /// Segment ids and cuts, for the manifest.
    pub fn state(&self) -> Vec<u8> {
        let mut out = vec![STATE_VERSION];
        varint::put(&mut out, self.segs.len() as u64);
        for s in &self.segs {
            varint::put(&mut out, s.seg.id());
            varint::put(&mut out, s.cut.map_or(0, |c| c + 1));
        }
        out
    }

    /// The manifest holding `state()` is durable: files it no longer names go away once
    /// their last reader lets go.
    pub fn committed(&mut self) {
        for s in self.pending_obsolete.drain(..) {
            s.file().mark_obsolete();
        }
    }

    pub fn file_names(&self) -> Vec<String> {
        self.segs.iter().map(|s| segment_name(s.seg.id())).collect()
    }

    /// The current segments (not the buffer) as a read-only view.
    pub fn view(&self) -> HistoryView {
        HistoryView {
            segs: self.segs.clone().into(),
        }
    }
}

impl HistoryView {
    /// Tx numbers touching `hashx`, ascending.
    pub fn get(&self, hashx: &HashX) -> Result<Vec<u64>> {
        self.get_since(hashx, 0)
    }

    /// Tx numbers >= `from` touching `hashx`, ascending. Segments holding only older numbers
    /// are not read, nor the blocks of a long history that end before `from`.
    pub fn get_since(&self, hashx: &HashX, from: u64) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let mut ascending = true;
        for s in self.segs.iter() {
            let at = out.len();
            s.seg.get_since(hashx, s.cut, from, &mut out)?;
            ascending &= at == 0 || out.len() == at || out[at - 1] < out[at];
        }
        // Each segment's numbers ascend (`Segment::get_since` checks), and segments normally
        // hold increasing numbers; after a rollback (or a caller that appended out of order
        // across flushes) restore the order.
        if !ascending {
            out.sort_unstable();
            out.dedup();
        }
        Ok(out)
    }

    /// Every script key with its history, in key order, streaming one block per segment.
    pub fn for_each(&self, f: &mut dyn FnMut(&HashX, &[u64])) -> Result<()> {
        let cursors = self
            .segs
            .iter()
            .map(|s| SegmentCursor::new(s.seg.clone(), s.cut))
            .collect();
        let mut current: Option<HashX> = None;
        let mut nums = Vec::new();
        segment::merge(cursors, &mut |h, t| {
            if current != Some(*h) {
                if let Some(prev) = current {
                    f(&prev, &nums);
                }
                current = Some(*h);
                nums.clear();
            }
            nums.push(t);
            Ok(())
        })?;
        if let Some(prev) = current {
            f(&prev, &nums);
        }
        Ok(())
    }
}

/// Merges `inputs` (their cuts folded in) into a new segment at `path`; None when nothing is
/// left. Stops with an error once `cancel` is set; the unfinished file is removed.
fn merge_segments(
    inputs: &[SegRef],
    path: &Path,
    id: u64,
    cancel: &AtomicBool,
) -> Result<Option<Segment>> {
    let mut writer = SegmentWriter::create(path)?;
    let cursors = inputs
        .iter()
        .map(|s| SegmentCursor::new(s.seg.clone(), s.cut))
        .collect();
    segment::merge(cursors, &mut |h, t| {
        check_cancel(cancel, "history")?;
        writer.push(h, t)
    })?;
    if writer.finish()? {
        Ok(Some(Segment::open(path, id)?))
    } else {
        Ok(None)
    }
}

impl Output for Segment {
    fn discard(self) {
        self.file().mark_obsolete();
    }
}

impl Drop for HistorySet {
    fn drop(&mut self) {
        Background::stop(&mut self.background);
    }
}

#[cfg(test)]
mod tests;
