//! Reading one immutable history segment file: bit-packed blocks of (script key -> ascending
//! tx numbers) (`block.rs`), a sparse index of each block's first key, and
//! a checksummed footer; plus cursors and the k-way merge. The layout is specified in
//! docs/STORAGE.md ("UTXO runs and history segments"); `segment_writer.rs` writes it.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::file::ImmutableFile;
use crate::history::block::{decode_block, Block};
use crate::utxo::filter::{hashx_parts, KeyFilter, MAX_FILTERED};
use crate::utxo::sorted_file::{decode_footer, footer_len, le_u64, partition, read_block};
use crate::{HashX, HASHX_LEN};

pub(super) const MAGIC: &[u8; 8] = b"FRMHIST1";
const FOOTER_FIELDS: usize = 4; // entries, min txnum, max txnum, index offset

const ENTRY: usize = HASHX_LEN + 8; // first hashx of the block ++ block offset LE

#[cfg(test)]
thread_local! {
    /// Blocks this thread has decoded: tests check that reads skip what they should.
    pub(super) static BLOCKS_READ: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// An open segment, its footer and index validated.
pub(crate) struct Segment {
    file: ImmutableFile,
    id: u64,
    min: u64,
    max: u64,
    idx: usize,
    nblocks: usize,
    blocks_end: usize,
    filter: Option<KeyFilter>, // for segments of at most MAX_FILTERED entries
}

impl Segment {
    pub fn open(path: &Path, id: u64) -> Result<Segment> {
        let file = ImmutableFile::open(path)?;
        let data = file.bytes();
        let [entries, min, max, idx_off] = decode_footer::<FOOTER_FIELDS>(data, MAGIC, path)?;
        let footer_at = data.len() - footer_len(FOOTER_FIELDS);
        let bad_footer = |reason: &str| Error::corrupt(path, footer_at as u64, reason);
        let idx_off = usize::try_from(idx_off)
            .ok()
            .filter(|&o| o <= footer_at)
            .ok_or_else(|| bad_footer("index offset out of range"))?;
        let (payload, next) = crate::frame::decode_frame(data, idx_off, path)?;
        if next != footer_at || payload.len() % ENTRY != 0 {
            return Err(Error::corrupt(path, idx_off as u64, "bad index length"));
        }
        let nblocks = payload.len() / ENTRY;
        let mut seg = Segment {
            file,
            id,
            min,
            max,
            idx: idx_off + 4,
            nblocks,
            blocks_end: idx_off,
            filter: None,
        };
        if entries < seg.nblocks as u64 || (entries > 0 && min > max) {
            return Err(bad_footer("counts disagree with index"));
        }
        let n = seg.nblocks;
        let bad_index = || Error::corrupt(path, idx_off as u64, "index out of order");
        if (n == 0) != (idx_off == 0) || (n > 0 && seg.offset(0) != 0) {
            return Err(bad_index());
        }
        for i in 1..n {
            if seg.first(i - 1) > seg.first(i) || seg.offset(i - 1) >= seg.offset(i) {
                return Err(bad_index());
            }
        }
        if n > 0 && seg.offset(n - 1) >= idx_off {
            return Err(bad_index());
        }
        if entries <= MAX_FILTERED {
            // Reads (and so checks) every block of a small segment.
            let mut filter = KeyFilter::with_capacity(entries);
            let mut block = Block::default();
            for i in 0..n {
                seg.block(i, None, &mut block)?;
                for (h, _, _) in &block.groups {
                    let (a, b) = hashx_parts(h);
                    filter.insert(a, b);
                }
            }
            seg.filter = Some(filter);
        }
        Ok(seg)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn file(&self) -> &ImmutableFile {
        &self.file
    }

    pub fn size(&self) -> u64 {
        self.file.bytes().len() as u64
    }

    #[cfg(test)]
    pub fn has_filter(&self) -> bool {
        self.filter.is_some()
    }

    /// Smallest and largest tx number held.
    pub fn range(&self) -> (u64, u64) {
        (self.min, self.max)
    }

    fn first(&self, i: usize) -> &[u8] {
        let at = self.idx + i * ENTRY;
        &self.file.bytes()[at..at + HASHX_LEN]
    }

    fn offset(&self, i: usize) -> usize {
        le_u64(self.file.bytes(), self.idx + i * ENTRY + HASHX_LEN) as usize
    }

    /// Decodes block `i` (up to the first key above `until`) and checks its first key.
    fn block(&self, i: usize, until: Option<&HashX>, out: &mut Block) -> Result<()> {
        #[cfg(test)]
        BLOCKS_READ.with(|n| n.set(n.get() + 1));
        let off = self.offset(i);
        let end = if i + 1 < self.nblocks {
            self.offset(i + 1)
        } else {
            self.blocks_end
        };
        // Blocks are written raw. A compressed one could expand to 1 MiB, and a bit stream
        // that size to 8M numbers: refuse it rather than allocate for it.
        let Cow::Borrowed(body) = read_block(self.file.bytes(), off, end, self.path())? else {
            return Err(Error::corrupt(
                self.path(),
                off as u64,
                "compressed history block",
            ));
        };
        decode_block(body, self.path(), off, until, out)?;
        match out.groups.first() {
            Some(g) if g.0[..] == *self.first(i) => Ok(()),
            _ => Err(Error::corrupt(
                self.path(),
                off as u64,
                "block does not match index",
            )),
        }
    }

    /// Appends the tx numbers of `hashx` below `cut` and >= `from` to `out`, strictly
    /// ascending (corruption otherwise). The
    /// entries of one key are contiguous, so this reads consecutive blocks. A long history
    /// spans blocks that open with its key; a binary search over their first numbers (one
    /// block decoded per probe) skips those that end before `from`.
    pub fn get_since(
        &self,
        hashx: &HashX,
        cut: Option<u64>,
        from: u64,
        out: &mut Vec<u64>,
    ) -> Result<()> {
        if self.max < from || cut.is_some_and(|c| c <= from) {
            return Ok(());
        }
        let (a, b) = hashx_parts(hashx);
        if self.filter.as_ref().is_some_and(|f| !f.may_contain(a, b)) {
            return Ok(());
        }
        let opening = partition(self.nblocks, |i| self.first(i) < &hashx[..]);
        let mut start = opening.saturating_sub(1);
        let mut block = Block::default();
        if from > self.min {
            // Blocks opening..end begin with this key, their first numbers ascending.
            let end = partition(self.nblocks, |i| self.first(i) <= &hashx[..]);
            let (mut lo, mut hi) = (opening, end);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                self.block(mid, Some(hashx), &mut block)?;
                if block.txnums[block.groups[0].1] < from {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            // Block lo - 1 opens below `from` and may hold numbers from it on.
            if lo > opening {
                start = lo - 1;
            }
        }
        let seg_start = out.len();
        for i in start..self.nblocks {
            if self.first(i) > &hashx[..] {
                break;
            }
            self.block(i, Some(hashx), &mut block)?;
            for &(h, a, b) in &block.groups {
                if h == *hashx {
                    let nums = &block.txnums[a..b];
                    let from_at = nums.partition_point(|&t| t < from);
                    let keep = cut.map_or(nums.len(), |c| nums.partition_point(|&t| t < c));
                    let nums = &nums[from_at..keep.max(from_at)];
                    // Numbers ascend within a block; check they do across blocks too, so
                    // that the caller need not check every one.
                    if let (Some(first), Some(last)) = (nums.first(), out[seg_start..].last()) {
                        if first <= last {
                            let off = self.offset(i) as u64;
                            return Err(Error::corrupt(self.path(), off, "blocks out of order"));
                        }
                    }
                    out.extend_from_slice(nums);
                } else if h > *hashx {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Streams a segment's (hashx, txnum) entries in order, below an optional cut, one block in
/// memory at a time.
pub(crate) struct SegmentCursor {
    seg: Arc<Segment>,
    cut: Option<u64>,
    next_block: usize,
    block: Block,
    group: usize,
    pos: usize,
    last: Option<(HashX, u64)>,
}

impl SegmentCursor {
    pub fn new(seg: Arc<Segment>, cut: Option<u64>) -> SegmentCursor {
        SegmentCursor {
            seg,
            cut,
            next_block: 0,
            block: Block::default(),
            group: 0,
            pos: 0,
            last: None,
        }
    }

    pub fn peek(&mut self) -> Result<Option<(HashX, u64)>> {
        loop {
            if let Some(&(h, _, end)) = self.block.groups.get(self.group) {
                if self.pos < end {
                    let t = self.block.txnums[self.pos];
                    if self.cut.is_none_or(|c| t < c) {
                        return Ok(Some((h, t)));
                    }
                    self.pos = end; // the rest of this piece is cut too
                }
                self.group += 1;
                if let Some(&(_, start, _)) = self.block.groups.get(self.group) {
                    self.pos = start;
                }
                continue;
            }
            if self.next_block == self.seg.nblocks {
                return Ok(None);
            }
            self.seg.block(self.next_block, None, &mut self.block)?;
            let (h, start, _) = self.block.groups[0];
            if self
                .last
                .is_some_and(|l| l >= (h, self.block.txnums[start]))
            {
                let off = self.seg.offset(self.next_block) as u64;
                return Err(Error::corrupt(self.seg.path(), off, "blocks out of order"));
            }
            self.next_block += 1;
            self.group = 0;
            self.pos = start;
        }
    }

    pub fn advance(&mut self) {
        if let Some(&(h, _, end)) = self.block.groups.get(self.group) {
            if self.pos < end {
                self.last = Some((h, self.block.txnums[self.pos]));
                self.pos += 1;
            }
        }
    }
}

/// Merges cursors into one ascending, duplicate-free stream of (hashx, txnum).
pub(crate) fn merge(
    mut cursors: Vec<SegmentCursor>,
    f: &mut dyn FnMut(&HashX, u64) -> Result<()>,
) -> Result<()> {
    let mut last: Option<(HashX, u64)> = None;
    loop {
        let mut best: Option<(usize, (HashX, u64))> = None;
        for (i, c) in cursors.iter_mut().enumerate() {
            if let Some(e) = c.peek()? {
                if best.is_none_or(|(_, b)| e < b) {
                    best = Some((i, e));
                }
            }
        }
        let Some((i, entry)) = best else {
            return Ok(());
        };
        cursors[i].advance();
        if last != Some(entry) {
            f(&entry.0, entry.1)?;
            last = Some(entry);
        }
    }
}
