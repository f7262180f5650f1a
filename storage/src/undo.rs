//! Undo records for the most recent blocks: what each block added to and removed from the UTXO
//! set, so a rollback can restore it. Immutable files of consecutive blocks (a commit's,
//! split at 1/16 of the horizon), records packed into crc-framed compressed chunks;
//! a record lists added outputs as per-tx counts and spent outputs grouped under front-coded
//! script keys, zstd-compressed when that is smaller (see docs/STORAGE.md). A lean store's
//! records also keep the spends' input order, in which its rollbacks are given their txids.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::decode::{put_blob, Cursor};
use crate::error::{Error, Result};
use crate::file::{write_new_file, ImmutableFile};
use crate::frame::{decode_frame, encode_frame};
use crate::utxo::sorted_file::{decode_block, encode_block, MAX_BLOCK_RAW};
use crate::{varint, HashX, HASHX_LEN};

pub fn file_name(id: u64) -> String {
    format!("undo-{id}.log")
}

/// Most added outputs a record may imply without listing them (`vout`s `0..k` of a tx cost
/// no bytes): bounds what a corrupt count under a valid crc can make a reader allocate. A
/// writer whose block exceeds it lists the rest explicitly.
const MAX_IMPLIED_OUTPUTS: u64 = 1 << 22;

/// One block's changes to the UTXO set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockUndo {
    pub height: u32,
    pub first_txnum: u64,
    /// Outpoints (tx number, vout) the block added, ascending.
    pub created: Vec<(u64, u32)>,
    /// Outputs the block spent: (key, tx number, vout, value). Any order on input; a decoded
    /// record has them sorted, or with `input_order` in the order they were given.
    pub spent: Vec<(HashX, u64, u32, u64)>,
}

impl BlockUndo {
    /// The record body (before compression): everything but the height. With `input_order`,
    /// the sorted spent outputs are followed by the index of each in `spent` as given.
    fn encode_body(&self, input_order: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.created.len() + self.spent.len() * 20);
        varint::put(&mut out, self.first_txnum);
        // Added outputs: per tx up to the last one that added any, `k << 1 | listed`.
        let txs = self
            .created
            .last()
            .map_or(0, |&(txnum, _)| txnum - self.first_txnum + 1);
        varint::put(&mut out, txs);
        let mut implied = 0;
        let mut rest = &self.created[..];
        for i in 0..txs {
            let txnum = self.first_txnum + i;
            let k = rest.iter().take_while(|&&(t, _)| t == txnum).count();
            let (vouts, after) = rest.split_at(k);
            rest = after;
            let regular = vouts.iter().enumerate().all(|(j, &(_, v))| v as usize == j);
            let listed = !regular || implied + k as u64 > MAX_IMPLIED_OUTPUTS;
            varint::put(&mut out, (k as u64) << 1 | u64::from(listed));
            if listed {
                for &(_, vout) in vouts {
                    varint::put(&mut out, u64::from(vout));
                }
            } else {
                implied += k as u64;
            }
        }
        // Spent outputs, grouped by key: `count << 4 | shared`, key suffix, entries.
        let mut order: Vec<usize> = (0..self.spent.len()).collect();
        order.sort_unstable_by_key(|&i| self.spent[i]);
        let spent: Vec<_> = order.iter().map(|&i| self.spent[i]).collect();
        let groups = spent.chunk_by(|a, b| a.0 == b.0);
        varint::put(&mut out, groups.clone().count() as u64);
        let mut prev: Option<&HashX> = None;
        for group in groups {
            let hashx = &group[0].0;
            let shared = prev.map_or(0, |p| {
                p.iter().zip(hashx).take_while(|(a, b)| a == b).count()
            });
            varint::put(&mut out, (group.len() as u64) << 4 | shared as u64);
            out.extend_from_slice(&hashx[shared..]);
            let mut last = 0;
            for &(_, txnum, vout, value) in group {
                varint::put(&mut out, txnum - last);
                varint::put(&mut out, u64::from(vout));
                varint::put(&mut out, value);
                last = txnum;
            }
            prev = Some(hashx);
        }
        if input_order {
            for i in order {
                varint::put(&mut out, i as u64);
            }
        }
        out
    }

    /// Decodes the body of block `height`'s record, found in the frame at `offset`; with
    /// `input_order`, one written so, its spent outputs in the order they were given.
    fn decode(
        body: &[u8],
        height: u32,
        path: &Path,
        offset: u64,
        input_order: bool,
    ) -> Result<BlockUndo> {
        let mut c = Cursor::new(body, path, offset);
        let first_txnum = c.varint()?;
        let txs = c.count(1)? as u64;
        let mut created = Vec::new();
        let mut implied = 0;
        for i in 0..txs {
            let txnum = first_txnum
                .checked_add(i)
                .ok_or_else(|| c.corrupt("tx number out of range"))?;
            let tag = c.varint()?;
            let k = tag >> 1;
            if tag & 1 == 1 {
                if k > (body.len() as u64) {
                    return Err(c.corrupt("count larger than the record"));
                }
                for _ in 0..k {
                    created.push((txnum, c.u32()?));
                }
            } else {
                implied += k;
                if implied > MAX_IMPLIED_OUTPUTS || k > u64::from(u32::MAX) {
                    return Err(c.corrupt("too many added outputs"));
                }
                created.extend((0..k as u32).map(|vout| (txnum, vout)));
            }
        }
        // Each group takes at least a header, a key byte and a 3-byte entry.
        let groups = c.count(5)?;
        let mut spent = Vec::new();
        let mut prev: Option<HashX> = None;
        for _ in 0..groups {
            let tag = c.varint()?;
            let (count, shared) = (tag >> 4, (tag & 15) as usize);
            if count == 0 || shared >= HASHX_LEN || (prev.is_none() && shared > 0) {
                return Err(c.corrupt("bad spent-output group header"));
            }
            let mut hashx = prev.unwrap_or_default();
            hashx[shared..].copy_from_slice(c.bytes(HASHX_LEN - shared)?);
            if prev.is_some_and(|p| p >= hashx) {
                return Err(c.corrupt("spent-output keys out of order"));
            }
            if count.saturating_mul(3) > body.len() as u64 {
                return Err(c.corrupt("count larger than the record"));
            }
            let mut txnum = 0u64;
            for _ in 0..count {
                txnum = txnum
                    .checked_add(c.varint()?)
                    .ok_or_else(|| c.corrupt("tx number out of range"))?;
                spent.push((hashx, txnum, c.u32()?, c.varint()?));
            }
            prev = Some(hashx);
        }
        if input_order {
            let mut given: Vec<Option<(HashX, u64, u32, u64)>> = vec![None; spent.len()];
            for entry in spent.drain(..) {
                let i = c.varint()?;
                match given.get_mut(i as usize) {
                    Some(slot @ None) => *slot = Some(entry),
                    _ => return Err(c.corrupt("bad spent-output input order")),
                }
            }
            spent = given.into_iter().flatten().collect();
        }
        c.finish()?;
        Ok(BlockUndo {
            height,
            first_txnum,
            created,
            spent,
        })
    }
}

/// Largest raw chunk of records compressed together: the bound on what a read decompresses.
const CHUNK_RAW: usize = MAX_BLOCK_RAW;

/// Appends one frame holding `records` consecutive records from height `first`.
fn write_chunk(out: &mut Vec<u8>, first: u32, records: u64, chunk: &[u8]) {
    let mut payload = Vec::with_capacity(chunk.len() / 2 + 16);
    varint::put(&mut payload, u64::from(first));
    varint::put(&mut payload, records);
    payload.extend_from_slice(&encode_block(chunk, true));
    encode_frame(out, &payload);
}

/// Files merged at once by `UndoLog::compact`, at the least.
const MERGE_FILES: usize = 4;

/// Called per chunk with its first height, its record bodies and its frame's offset; returns
/// whether to go on.
type ChunkVisitor<'v> = dyn FnMut(u32, &[&[u8]], u64) -> Result<bool> + 'v;

/// Walks the chunks of `f` from its start, checking each frame and that chunks follow on in
/// height, and calls `visit(first height, record bodies, frame offset)` while it returns true.
/// Chunks wholly below height `from` are only checked, not decompressed or visited.
fn for_each_chunk(f: &UndoFile, from: u32, visit: &mut ChunkVisitor) -> Result<()> {
    let data = f.file.bytes();
    let path = f.file.path();
    let mut offset = 0;
    let mut expect = f.r.first;
    loop {
        let (payload, next) = decode_frame(data, offset, path)?;
        let corrupt = |reason: String| Error::corrupt(path, offset as u64, reason);
        let mut pos = 0;
        let first = varint::get(payload, &mut pos).and_then(|h| u32::try_from(h).ok());
        let records = varint::get(payload, &mut pos);
        let (Some(first), Some(records)) = (first, records) else {
            return Err(corrupt("bad undo chunk header".into()));
        };
        if first != expect {
            return Err(corrupt(format!(
                "undo records from block {first} where {expect} belongs"
            )));
        }
        if records == 0 || records > u64::from(u32::MAX - first) {
            return Err(corrupt("bad undo record count".into()));
        }
        expect = first + records as u32;
        if expect > from {
            let chunk = decode_block(&payload[pos..], offset as u64, path)?;
            let bodies = split_chunk(&chunk, records, path, offset as u64)?;
            if !visit(first, &bodies, offset as u64)? {
                return Ok(());
            }
        }
        offset = next;
    }
}

/// The `records` length-prefixed record bodies of a decoded chunk, which must hold exactly
/// those.
fn split_chunk<'a>(
    chunk: &'a [u8],
    records: u64,
    path: &'a Path,
    offset: u64,
) -> Result<Vec<&'a [u8]>> {
    let mut c = Cursor::new(chunk, path, offset);
    let mut bodies = Vec::new();
    for _ in 0..records {
        bodies.push(c.blob()?);
    }
    c.finish()?;
    Ok(bodies)
}

/// A committed undo file covering blocks `first..=last` (`last` is lowered by rollbacks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UndoRef {
    pub id: u64,
    pub first: u32,
    pub last: u32,
}

struct UndoFile {
    r: UndoRef,
    file: Arc<ImmutableFile>,
}

/// Undo files plus the records of uncommitted blocks, keeping the last `keep` blocks.
pub struct UndoLog {
    dir: PathBuf,
    keep: u32,
    /// Records keep the spends' input order (a lean store's).
    input_order: bool,
    files: Vec<UndoFile>,
    pending: VecDeque<(u32, Vec<u8>)>,
    pending_bytes: usize,
    dropped: Vec<Arc<ImmutableFile>>,
}

impl UndoLog {
    /// `input_order`: records keep the spends' input order (a lean store's).
    pub fn open(dir: &Path, keep: u32, refs: &[UndoRef], input_order: bool) -> Result<UndoLog> {
        let mut files = Vec::with_capacity(refs.len());
        for r in refs {
            let file = ImmutableFile::open(&dir.join(file_name(r.id)))?;
            files.push(UndoFile {
                r: *r,
                file: Arc::new(file),
            });
        }
        Ok(UndoLog {
            dir: dir.to_path_buf(),
            keep,
            input_order,
            files,
            pending: VecDeque::new(),
            pending_bytes: 0,
            dropped: Vec::new(),
        })
    }

    pub fn refs(&self) -> Vec<UndoRef> {
        self.files.iter().map(|f| f.r).collect()
    }

    pub fn file_names(&self) -> Vec<String> {
        self.files.iter().map(|f| file_name(f.r.id)).collect()
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Records an applied, uncommitted block; only the newest `keep` are held.
    pub fn push(&mut self, undo: &BlockUndo) {
        if self.keep == 0 {
            return;
        }
        let bytes = undo.encode_body(self.input_order);
        self.pending_bytes += bytes.len();
        self.pending.push_back((undo.height, bytes));
        while self.pending.len() > self.keep as usize {
            let (_, old) = self.pending.pop_front().expect("not empty");
            self.pending_bytes -= old.len();
        }
    }

    /// Writes pending records as fsynced files spanning at most `span_bound()` blocks each,
    /// and forgets files that fell out of the horizon of a chain whose tip is `tip`. Returns
    /// whether a file was created.
    pub fn flush(&mut self, alloc_id: &mut dyn FnMut() -> u64, tip: Option<u32>) -> Result<bool> {
        let low = tip.map_or(0, |t| (t + 1).saturating_sub(self.keep));
        let (keep, drop): (Vec<UndoFile>, Vec<UndoFile>) = std::mem::take(&mut self.files)
            .into_iter()
            .partition(|f| f.r.last >= low);
        self.files = keep;
        self.dropped.extend(drop.into_iter().map(|f| f.file));
        if self.pending.is_empty() {
            return Ok(false);
        }
        // Compressed here rather than in `push`: records that fall out of the horizon before
        // the commit (most of them in an initial sync) are never compressed. Split so that
        // the files of a long commit (an initial sync's) leave the horizon one by one instead
        // of living, whole, until their last block leaves.
        let records: Vec<(u32, &[u8])> = self.pending.iter().map(|(h, b)| (*h, &b[..])).collect();
        for group in records.chunks(self.span_bound() as usize) {
            let file = self.write_file(alloc_id, group)?;
            self.files.push(file);
        }
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(true)
    }

    /// The most blocks a file spans: files outlive the horizon by at most 1/16 of it.
    fn span_bound(&self) -> u32 {
        (self.keep / 16).max(16)
    }

    /// Lowest height whose undo record is committed (records are contiguous up to the tip).
    pub fn first_height(&self) -> Option<u32> {
        self.files.first().map(|f| f.r.first)
    }

    pub fn keep(&self) -> u32 {
        self.keep
    }

    /// The committed undo record of block `height`.
    pub fn read(&self, height: u32) -> Result<BlockUndo> {
        let f = self
            .files
            .iter()
            .find(|f| f.r.first <= height && height <= f.r.last)
            .ok_or_else(|| Error::Invalid(format!("no undo record for block {height}")))?;
        let mut found = None;
        for_each_chunk(f, height, &mut |first, records, offset| {
            if height >= first + records.len() as u32 {
                return Ok(true);
            }
            let body = records[(height - first) as usize];
            found = Some(BlockUndo::decode(
                body,
                height,
                f.file.path(),
                offset,
                self.input_order,
            )?);
            Ok(false)
        })?;
        found.ok_or_else(|| Error::Invalid(format!("no undo record for block {height}")))
    }

    /// Merges the newest files, size-tiered by the blocks they span: take the newest file,
    /// then each older one while it spans at most twice what is taken and the total stays
    /// within `span_bound()`; merge when that takes `MERGE_FILES` or more, and repeat.
    /// Following the tip commits one block at a time, so without this the log would hold a
    /// file per block; the tiers rewrite each record O(log span) times. Returns whether any
    /// merge happened.
    pub fn compact(&mut self, alloc_id: &mut dyn FnMut() -> u64) -> Result<bool> {
        let cap = self.span_bound();
        let span = |r: &UndoRef| r.last - r.first + 1;
        let mut worked = false;
        loop {
            let Some(newest) = self.files.last() else {
                return Ok(worked);
            };
            let mut start = self.files.len() - 1;
            let mut taken = span(&newest.r);
            while start > 0 {
                let (older, newer) = (&self.files[start - 1].r, &self.files[start].r);
                let next = span(older);
                if older.last + 1 != newer.first || next > 2 * taken || taken + next > cap {
                    break;
                }
                start -= 1;
                taken += next;
            }
            if self.files.len() - start < MERGE_FILES {
                return Ok(worked);
            }
            self.merge(start..self.files.len(), alloc_id)?;
            worked = true;
        }
    }

    /// Rewrites the live records of `files[range]` as one file.
    fn merge(&mut self, range: Range<usize>, alloc_id: &mut dyn FnMut() -> u64) -> Result<()> {
        let mut bodies: Vec<(u32, Vec<u8>)> = Vec::new();
        for f in &self.files[range.clone()] {
            for_each_chunk(f, 0, &mut |first, records, _| {
                for (i, body) in records.iter().enumerate() {
                    let height = first + i as u32;
                    if height > f.r.last {
                        return Ok(false);
                    }
                    bodies.push((height, body.to_vec()));
                }
                Ok(first + (records.len() as u32) <= f.r.last)
            })?;
        }
        let records: Vec<(u32, &[u8])> = bodies.iter().map(|(h, b)| (*h, &b[..])).collect();
        let merged = self.write_file(alloc_id, &records)?;
        let old = self.files.splice(range, [merged]);
        self.dropped.extend(old.map(|f| f.file));
        Ok(())
    }

    /// Writes `records` (consecutive heights, raw bodies) as a new fsynced file of chunks.
    fn write_file(
        &self,
        alloc_id: &mut dyn FnMut() -> u64,
        records: &[(u32, &[u8])],
    ) -> Result<UndoFile> {
        let mut bytes = Vec::new();
        let mut chunk = Vec::new();
        let mut count = 0u64;
        let mut first = 0;
        for &(height, body) in records {
            if count > 0 && chunk.len() + body.len() + 10 > CHUNK_RAW {
                write_chunk(&mut bytes, first, count, &chunk);
                chunk.clear();
                count = 0;
            }
            if count == 0 {
                first = height;
            }
            put_blob(&mut chunk, body);
            count += 1;
        }
        write_chunk(&mut bytes, first, count, &chunk);
        let id = alloc_id();
        let path = self.dir.join(file_name(id));
        write_new_file(&path, &bytes)?;
        Ok(UndoFile {
            r: UndoRef {
                id,
                first: records.first().expect("records").0,
                last: records.last().expect("records").0,
            },
            file: Arc::new(ImmutableFile::open(&path)?),
        })
    }

    /// Forgets the records of blocks `>= blocks` (rollback; nothing may be pending).
    pub fn truncate(&mut self, blocks: u32) {
        assert!(self.pending.is_empty());
        let (keep, drop): (Vec<UndoFile>, Vec<UndoFile>) = std::mem::take(&mut self.files)
            .into_iter()
            .partition(|f| f.r.first < blocks);
        self.files = keep;
        self.dropped.extend(drop.into_iter().map(|f| f.file));
        for f in &mut self.files {
            f.r.last = f.r.last.min(blocks - 1);
        }
    }

    pub fn committed(&mut self) {
        for file in self.dropped.drain(..) {
            file.mark_obsolete();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn undo(height: u32) -> BlockUndo {
        let first = u64::from(height) * 10;
        let key = |b: u8| {
            let mut k = [b; HASHX_LEN];
            k[10] = 0;
            k
        };
        let mut shared_prefix = key(height as u8);
        shared_prefix[10] = 1;
        BlockUndo {
            height,
            first_txnum: first,
            // tx 0: vout 0; tx 1: none; tx 2: vouts 1 and 3 (listed); tx 3: vouts 0..3.
            created: vec![
                (first, 0),
                (first + 2, 1),
                (first + 2, 3),
                (first + 3, 0),
                (first + 3, 1),
                (first + 3, 2),
            ],
            // Sorted, as a decoded record is: two entries under one key, a key sharing ten
            // bytes with the previous one, a same-tx pair.
            spent: vec![
                (key(height as u8), 7, 1, 5000 + u64::from(height)),
                (key(height as u8), 7, 4, 1),
                (key(height as u8), 900_000, 0, u64::MAX),
                (shared_prefix, 3, 0, 0),
            ],
        }
    }

    /// A one-record chunk of `u`, as `flush` lays it out.
    fn chunk_of(u: &BlockUndo) -> Vec<u8> {
        let mut chunk = Vec::new();
        put_blob(&mut chunk, &u.encode_body(false));
        chunk
    }

    #[test]
    fn records_round_trip_in_any_spend_order() {
        let path = Path::new("undo-1.log");
        for h in [0, 5, 300] {
            let want = undo(h);
            let mut shuffled = want.clone();
            shuffled.spent.reverse();
            let body = shuffled.encode_body(false);
            assert_eq!(BlockUndo::decode(&body, h, path, 0, false).unwrap(), want);
            // Kept in input order: the same bytes, then the order.
            let kept = shuffled.encode_body(true);
            assert_eq!(kept[..body.len()], body[..]);
            assert_eq!(kept[body.len()..], [3, 2, 1, 0]);
            assert_eq!(
                BlockUndo::decode(&kept, h, path, 0, true).unwrap(),
                shuffled
            );
        }
        let empty = BlockUndo {
            height: 1,
            first_txnum: 4,
            ..BlockUndo::default()
        };
        assert_eq!(
            BlockUndo::decode(&empty.encode_body(true), 1, path, 0, true).unwrap(),
            empty
        );
    }

    /// A block spending `n` outputs, many under repeated keys: big and compressible.
    fn big(height: u32, n: u64) -> BlockUndo {
        let mut spent: Vec<_> = (0..n)
            .map(|i| {
                let mut key = [(i % 251) as u8; HASHX_LEN];
                key[0] = (i / 251) as u8;
                (key, i * 7, (i % 3) as u32, 1000 + i % 5)
            })
            .collect();
        spent.sort_unstable();
        BlockUndo {
            height,
            first_txnum: 1 << 40,
            created: vec![(1 << 40, 0)],
            spent,
        }
    }

    #[test]
    fn a_commit_packs_records_into_compressed_chunks_of_at_most_a_mebibyte() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = UndoLog::open(dir.path(), 100, &[], false).unwrap();
        // 60k spends ≈ 600 KiB raw each: no two fit in one chunk.
        let records: Vec<BlockUndo> = (10..13).map(|h| big(h, 60_000)).collect();
        let raw: usize = records.iter().map(|r| r.encode_body(false).len()).sum();
        assert!(raw > 3 * 500_000 && raw < 3 * CHUNK_RAW, "{raw}");
        for r in &records {
            log.push(r);
        }
        // 16 blocks: one file (a horizon of 100 splits commits into files of 16).
        for h in 13..26 {
            log.push(&undo(h));
        }
        log.flush(&mut || 1, Some(25)).unwrap();
        let path = dir.path().join(file_name(1));
        let data = std::fs::read(&path).unwrap();
        let mut frames = 0;
        let mut offset = 0;
        while offset < data.len() {
            offset = decode_frame(&data, offset, &path).unwrap().1;
            frames += 1;
        }
        assert_eq!(
            frames, 3,
            "one record a chunk, the small ones with the last big one"
        );
        assert!(data.len() < raw / 2, "{} of {raw}", data.len());
        for r in &records {
            assert_eq!(log.read(r.height).unwrap(), *r);
        }
        for h in 13..26 {
            assert_eq!(log.read(h).unwrap(), undo(h));
        }
    }

    /// Decodes a hand-made record body and returns the error message.
    fn decode_err(body: &[u8]) -> String {
        BlockUndo::decode(body, 3, Path::new("undo-7.log"), 12, false)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_records_under_a_valid_checksum_are_corrupt() {
        let at = "corrupt store file undo-7.log at offset 12: ";
        let key = [1u8; HASHX_LEN];
        let group = |tag: u8, key: &[u8]| [&[tag][..], key, &[5, 0, 9]].concat();
        // First txnum 0, no txs, then the groups.
        let with_groups = |groups: &[Vec<u8>]| {
            let mut b = vec![0, 0, groups.len() as u8];
            for g in groups {
                b.extend_from_slice(g);
            }
            b
        };
        let one = with_groups(&[group(0x10, &key)]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                with_groups(&[group(0x01, &key)]),
                "bad spent-output group header",
            ),
            (
                with_groups(&[group(0x10, &key), group(0x1a, &key[10..])]),
                "spent-output keys out of order",
            ),
            (
                with_groups(&[group(0x1b, &key[..1])]),
                "bad spent-output group header",
            ),
            (
                with_groups(&[group(0x12, &key[2..])]),
                "bad spent-output group header",
            ),
            (one[..8].to_vec(), "record truncated"),
            (one[..one.len() - 1].to_vec(), "bad varint"),
            ([&one[..], &[0]].concat(), "trailing bytes in record"),
            (
                vec![0, 1, 0x80, 0x80, 0x80, 0x80, 0x10, 0],
                "too many added outputs",
            ),
            (vec![0, 1, 0x7f, 0], "count larger than the record"),
            (vec![0, 9, 0, 0], "count larger than the record"),
            (
                vec![
                    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 2, 0, 2, 0,
                ],
                "tx number out of range",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(decode_err(&body), format!("{at}{want}"), "{body:?}");
        }
        // Kept in input order: an index out of range or repeated, or none at all.
        let two = [&with_groups(&[group(0x20, &key)])[..], &[5, 0, 9]].concat();
        for order in [&[0, 2][..], &[1, 1], &[0]] {
            let body = [&two[..], order].concat();
            let err = BlockUndo::decode(&body, 3, Path::new("undo-7.log"), 12, true)
                .unwrap_err()
                .to_string();
            let want = match order.len() {
                1 => "bad varint",
                _ => "bad spent-output input order",
            };
            assert_eq!(err, format!("{at}{want}"), "{order:?}");
        }
        let ok = BlockUndo::decode(&[&two[..], &[1, 0]].concat(), 3, Path::new("u"), 0, true);
        assert_eq!(ok.unwrap().spent, vec![(key, 10, 0, 9), (key, 5, 0, 9)]);
    }

    #[test]
    fn bad_chunks_under_a_valid_checksum_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1));
        let four = chunk_of(&undo(4));
        let five = chunk_of(&undo(5));
        // (first height, record count, chunk bytes) of the second frame, and the error.
        let cases: Vec<(u32, u64, Vec<u8>, &str)> = vec![
            (
                6,
                1,
                chunk_of(&undo(6)),
                "undo records from block 6 where 5 belongs",
            ),
            (5, 0, vec![], "bad undo record count"),
            (5, 2, five.clone(), "bad varint"),
            (5, 1, five[..9].to_vec(), "record truncated"),
            (5, 1, [&five[..], &[0]].concat(), "trailing bytes in record"),
        ];
        for (first, records, chunk, want) in cases {
            let mut bytes = Vec::new();
            write_chunk(&mut bytes, 4, 1, &four);
            let at = bytes.len();
            write_chunk(&mut bytes, first, records, &chunk);
            let _ = std::fs::remove_file(&path);
            write_new_file(&path, &bytes).unwrap();
            let r = UndoRef {
                id: 1,
                first: 4,
                last: 5,
            };
            let log = UndoLog::open(dir.path(), 5, &[r], false).unwrap();
            assert_eq!(log.read(4).unwrap(), undo(4));
            assert_eq!(
                log.read(5).unwrap_err().to_string(),
                format!(
                    "corrupt store file {} at offset {at}: {want}",
                    path.display()
                )
            );
        }
    }

    #[test]
    fn one_block_files_are_merged_within_a_span_and_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let mut id = 0;
        let mut alloc = || {
            id += 1;
            id
        };
        // keep 100: merged files span at most 16 blocks.
        let mut log = UndoLog::open(dir.path(), 100, &[], false).unwrap();
        let mut written = 0;
        for h in 0..300 {
            log.push(&undo(h));
            log.flush(&mut alloc, Some(h)).unwrap();
            let before: Vec<u64> = log.refs().iter().map(|r| r.id).collect();
            log.compact(&mut alloc).unwrap();
            written += log
                .refs()
                .iter()
                .filter(|r| !before.contains(&r.id))
                .map(|r| r.last - r.first + 1)
                .sum::<u32>();
            log.committed();
        }
        let refs = log.refs();
        assert!(
            (200 - 16..=200).contains(&refs[0].first),
            "the horizon, give or take part of a file: {refs:?}"
        );
        assert!(refs.len() <= 16, "{} files: {refs:?}", refs.len());
        assert!(refs.iter().all(|r| r.last - r.first < 16), "{refs:?}");
        assert!(
            refs.windows(2).all(|w| w[1].first == w[0].last + 1),
            "{refs:?}"
        );
        assert!(
            written <= 3 * 300,
            "records rewritten {written} times for 300 blocks"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            refs.len(),
            "replaced files are deleted once committed"
        );
        // A rollback's cut inside a merged file, then a merge that leaves the dead record out.
        log.truncate(298);
        for h in 298..305 {
            log.push(&undo(h + 1000));
            log.pending.back_mut().unwrap().0 = h;
            log.flush(&mut alloc, Some(h)).unwrap();
        }
        while log.compact(&mut alloc).unwrap() {}
        log.committed();
        let refs = log.refs();
        drop(log);
        let log = UndoLog::open(dir.path(), 100, &refs, false).unwrap();
        for h in 200..298 {
            assert_eq!(log.read(h).unwrap(), undo(h));
        }
        for h in 298..305 {
            let mut want = undo(h + 1000);
            want.height = h;
            assert_eq!(log.read(h).unwrap(), want);
        }
        assert!(log.read(305).is_err());
    }

    #[test]
    fn keeps_the_horizon_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = UndoLog::open(dir.path(), 5, &[], false).unwrap();
        let mut id = 0;
        let mut alloc = || {
            id += 1;
            id
        };
        for h in 0..8 {
            log.push(&undo(h));
        }
        log.flush(&mut alloc, Some(7)).unwrap();
        assert_eq!(log.first_height(), Some(3));
        for h in 8..10 {
            log.push(&undo(h));
        }
        log.flush(&mut alloc, Some(9)).unwrap();
        log.committed();
        assert_eq!(
            log.first_height(),
            Some(3),
            "a file partly inside the horizon stays"
        );
        log.truncate(9);
        log.committed();
        let refs = log.refs();
        drop(log);
        let log = UndoLog::open(dir.path(), 5, &refs, false).unwrap();
        for h in 3..9 {
            assert_eq!(log.read(h).unwrap(), undo(h));
        }
        assert!(log.read(9).is_err());
    }

    #[test]
    fn a_long_commit_writes_files_that_leave_the_horizon_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        // A horizon of 64 blocks: files span at most 16.
        let mut log = UndoLog::open(dir.path(), 64, &[], false).unwrap();
        let mut id = 0;
        let mut alloc = || {
            id += 1;
            id
        };
        let mut commit = |log: &mut UndoLog, blocks: Range<u32>| {
            for h in blocks.clone() {
                log.push(&undo(h));
            }
            log.flush(&mut alloc, Some(blocks.end - 1)).unwrap();
            let worked = log.compact(&mut alloc).unwrap();
            log.committed();
            worked
        };
        // A 40-block commit (as a sync makes): files of 16, 16 and 8 blocks.
        assert!(!commit(&mut log, 0..40));
        let spans = |log: &UndoLog| -> Vec<(u32, u32)> {
            log.refs().iter().map(|r| (r.first, r.last)).collect()
        };
        assert_eq!(spans(&log), [(0, 15), (16, 31), (32, 39)]);
        // Following the tip: once the horizon (the last 64 blocks) passes a file's end, the
        // file goes whole, and nothing is rewritten but the small newest files.
        for h in 40..81 {
            commit(&mut log, h..h + 1);
        }
        assert_eq!(log.first_height(), Some(16));
        assert_eq!(spans(&log)[0], (16, 31), "never rewritten");
        assert!(log.refs().iter().all(|r| r.last - r.first < 16));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            log.refs().len()
        );
        let refs = log.refs();
        drop(log);
        let log = UndoLog::open(dir.path(), 64, &refs, false).unwrap();
        assert!(log.read(15).is_err());
        for h in 16..81 {
            assert_eq!(log.read(h).unwrap(), undo(h));
        }
    }

    #[test]
    fn a_flipped_byte_is_reported_with_the_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = UndoLog::open(dir.path(), 5, &[], false).unwrap();
        log.push(&undo(0));
        log.flush(&mut || 1, Some(0)).unwrap();
        log.push(&undo(1));
        log.flush(&mut || 2, Some(1)).unwrap();
        let path = dir.path().join(file_name(2));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[5] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let log = UndoLog::open(dir.path(), 5, &log.refs(), false).unwrap();
        assert_eq!(log.read(0).unwrap(), undo(0));
        let err = log.read(1).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "corrupt store file {} at offset 0: checksum mismatch",
                path.display()
            )
        );
    }
}
