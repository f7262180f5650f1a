//! Reading one immutable UTXO run file: a by-script section of blocks sorted by (hashx,
//! txnum, vout), a by-outpoint section mapping (txnum, vout) to the by-script block holding
//! it, two sparse indexes and a checksummed footer; plus cursors and the k-way merge. The
//! layout is specified in docs/STORAGE.md ("UTXO runs and history segments");
//! `run_writer.rs` writes it.

use std::cmp::Ordering;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::file::ImmutableFile;
use crate::utxo::filter::{KeyFilter, MAX_FILTERED};
use crate::utxo::sorted_file::{decode_footer, footer_len, le_u64, partition, read_block};
use crate::varint;
use crate::{HashX, HASHX_LEN};

pub(super) const MAGIC: &[u8; 8] = b"FRMUTXO1";
const FOOTER_FIELDS: usize = 4; // live count, tombstone count, script index offset, outpoint index offset

/// Target body size of a by-script block; a block closes once it reaches this.
pub(super) const SCRIPT_BLOCK: usize = 4096;
/// Smaller by-outpoint blocks keep the scan behind each outpoint lookup short.
pub(super) const OUTPOINT_BLOCK: usize = 1024;
/// zstd gains little on random script keys and varints, and every lookup would pay for it.
pub(super) const COMPRESS: bool = false;

pub(super) const SKEY: usize = HASHX_LEN + 12; // hashx ++ txnum BE ++ vout BE: compares as bytes
const SENTRY: usize = SKEY + 8; // ++ block offset LE
const OKEY: usize = 12; // txnum BE ++ vout BE
const OENTRY: usize = OKEY + 8;

/// An entry of a run: `value` None is a tombstone (the output was spent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub hashx: HashX,
    pub txnum: u64,
    pub vout: u32,
    pub value: Option<u64>,
}

impl Record {
    pub fn key(&self) -> (HashX, u64, u32) {
        (self.hashx, self.txnum, self.vout)
    }
}

pub(super) fn script_key(hashx: &HashX, txnum: u64, vout: u32) -> [u8; SKEY] {
    let mut k = [0u8; SKEY];
    k[..HASHX_LEN].copy_from_slice(hashx);
    k[HASHX_LEN..HASHX_LEN + 8].copy_from_slice(&txnum.to_be_bytes());
    k[HASHX_LEN + 8..].copy_from_slice(&vout.to_be_bytes());
    k
}

pub(super) fn outpoint_key(txnum: u64, vout: u32) -> [u8; OKEY] {
    let mut k = [0u8; OKEY];
    k[..8].copy_from_slice(&txnum.to_be_bytes());
    k[8..].copy_from_slice(&vout.to_be_bytes());
    k
}

/// Streams the records of a by-script block body, checking that keys strictly ascend.
struct ScriptBlockReader<'a> {
    body: &'a [u8],
    pos: usize,
    path: &'a Path,
    offset: usize,
    hashx: Option<HashX>,
    left: u64, // entries left in the current group
    prev: Option<(u64, u32)>,
}

impl<'a> ScriptBlockReader<'a> {
    fn new(body: &'a [u8], path: &'a Path, offset: usize) -> Self {
        ScriptBlockReader {
            body,
            pos: 0,
            path,
            offset,
            hashx: None,
            left: 0,
            prev: None,
        }
    }

    fn corrupt(&self, reason: &str) -> Error {
        Error::corrupt(self.path, self.offset as u64, reason)
    }

    #[inline]
    fn varint(&mut self, what: &str) -> Result<u64> {
        // Most numbers here fit one byte; skip the general decoder for them.
        if let Some(&b) = self.body.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        varint::get(self.body, &mut self.pos).ok_or_else(|| self.corrupt(what))
    }

    #[inline(always)]
    fn next_record(&mut self) -> Result<Option<Record>> {
        if self.left == 0 {
            if self.pos >= self.body.len() {
                return Ok(None);
            }
            let tag = self.varint("bad group header")?;
            let (count, shared) = (tag >> 4, (tag & 15) as usize);
            if count == 0 || shared >= HASHX_LEN || (self.hashx.is_none() && shared > 0) {
                return Err(self.corrupt("bad group header"));
            }
            let mut hashx = self.hashx.unwrap_or_default();
            let suffix = self
                .body
                .get(self.pos..self.pos + HASHX_LEN - shared)
                .ok_or_else(|| self.corrupt("truncated script key"))?;
            hashx[shared..].copy_from_slice(suffix);
            self.pos += HASHX_LEN - shared;
            if self.hashx.is_some_and(|p| p >= hashx) {
                return Err(self.corrupt("script keys out of order"));
            }
            self.hashx = Some(hashx);
            self.left = count;
            self.prev = None;
        }
        let n = self.varint("bad tx number")?;
        let txnum = match self.prev {
            None => n,
            Some((t, _)) => t
                .checked_add(n)
                .ok_or_else(|| self.corrupt("tx number overflow"))?,
        };
        let tag = self.varint("bad output index")?;
        let vout =
            u32::try_from(tag >> 1).map_err(|_| self.corrupt("output index out of range"))?;
        if self.prev.is_some_and(|p| p >= (txnum, vout)) {
            return Err(self.corrupt("outpoints out of order"));
        }
        let value = if tag & 1 == 1 {
            None
        } else {
            Some(self.varint("bad value")?)
        };
        self.prev = Some((txnum, vout));
        self.left -= 1;
        Ok(Some(Record {
            hashx: self.hashx.unwrap(),
            txnum,
            vout,
            value,
        }))
    }
}

/// An open run, validated (footer and both indexes) when opened.
pub(crate) struct Run {
    file: ImmutableFile,
    id: u64,
    counts: (u64, u64),
    sidx: usize,       // start of the script index entries (after the frame header)
    nscript: usize,    // number of by-script blocks
    script_end: usize, // end of the by-script section = start of the by-outpoint section
    oidx: usize,       // start of the outpoint index entries
    noutpoint: usize,
    outpoint_end: usize, // end of the by-outpoint section = offset of the script index frame
    filter: Option<KeyFilter>, // for runs of at most MAX_FILTERED records
}

impl Run {
    pub fn open(path: &Path, id: u64) -> Result<Run> {
        let file = ImmutableFile::open(path)?;
        let data = file.bytes();
        let [live, dead, sidx_off, oidx_off] = decode_footer::<FOOTER_FIELDS>(data, MAGIC, path)?;
        let footer_at = data.len() - footer_len(FOOTER_FIELDS);
        let bad_footer = |reason: &str| Error::corrupt(path, footer_at as u64, reason);
        let sidx_off = usize::try_from(sidx_off).map_err(|_| bad_footer("bad index offset"))?;
        let oidx_off = usize::try_from(oidx_off).map_err(|_| bad_footer("bad index offset"))?;
        if sidx_off > oidx_off || oidx_off > footer_at {
            return Err(bad_footer("index offsets out of range"));
        }
        let index = |off: usize, end: usize, width: usize| -> Result<(usize, usize)> {
            let (payload, next) = crate::frame::decode_frame(data, off, path)?;
            if next != end || payload.len() % width != 0 {
                return Err(Error::corrupt(path, off as u64, "bad index length"));
            }
            Ok((off + 4, payload.len() / width))
        };
        let (sidx, nscript) = index(sidx_off, oidx_off, SENTRY)?;
        let (oidx, noutpoint) = index(oidx_off, footer_at, OENTRY)?;
        let mut run = Run {
            file,
            id,
            counts: (live, dead),
            sidx,
            nscript,
            script_end: 0,
            oidx,
            noutpoint,
            outpoint_end: sidx_off,
            filter: None,
        };
        run.script_end = if noutpoint > 0 { run.ooff(0) } else { sidx_off };
        // Every block holds at least one entry, and each outpoint at least one record.
        let records = live
            .checked_add(dead)
            .ok_or_else(|| bad_footer("bad counts"))?;
        if records < nscript as u64 || records < noutpoint as u64 {
            return Err(bad_footer("counts disagree with indexes"));
        }
        let bad_sidx = || Error::corrupt(path, sidx_off as u64, "script index out of order");
        let bad_oidx = || Error::corrupt(path, oidx_off as u64, "outpoint index out of order");
        // Offsets must start at the section start and strictly ascend within it; keys must
        // strictly ascend. Then every block's range is known and bounded.
        if (nscript == 0) != (run.script_end == 0) || (nscript > 0 && run.soff(0) != 0) {
            return Err(bad_sidx());
        }
        for i in 1..nscript {
            if run.skey(i - 1) >= run.skey(i) || run.soff(i - 1) >= run.soff(i) {
                return Err(bad_sidx());
            }
        }
        if nscript > 0 && run.soff(nscript - 1) >= run.script_end {
            return Err(bad_sidx());
        }
        if (noutpoint == 0) != (run.script_end == sidx_off) {
            return Err(bad_oidx());
        }
        for i in 1..noutpoint {
            if run.okey(i - 1) >= run.okey(i) || run.ooff(i - 1) >= run.ooff(i) {
                return Err(bad_oidx());
            }
        }
        if noutpoint > 0 && run.ooff(noutpoint - 1) >= sidx_off {
            return Err(bad_oidx());
        }
        if records <= MAX_FILTERED {
            run.build_filter(records)?;
        }
        Ok(run)
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

    /// (live, tombstone) entry counts.
    pub fn counts(&self) -> (u64, u64) {
        self.counts
    }

    fn skey(&self, i: usize) -> &[u8] {
        let at = self.sidx + i * SENTRY;
        &self.file.bytes()[at..at + SKEY]
    }

    fn soff(&self, i: usize) -> usize {
        le_u64(self.file.bytes(), self.sidx + i * SENTRY + SKEY) as usize
    }

    fn okey(&self, i: usize) -> &[u8] {
        let at = self.oidx + i * OENTRY;
        &self.file.bytes()[at..at + OKEY]
    }

    fn ooff(&self, i: usize) -> usize {
        le_u64(self.file.bytes(), self.oidx + i * OENTRY + OKEY) as usize
    }

    /// Reads by-script block `i` and calls `f` on its records until `f` returns false,
    /// checking the block starts with its index key.
    fn scan_script_block(&self, i: usize, f: &mut dyn FnMut(&Record) -> bool) -> Result<()> {
        let off = self.soff(i);
        let end = if i + 1 < self.nscript {
            self.soff(i + 1)
        } else {
            self.script_end
        };
        let body = read_block(self.file.bytes(), off, end, self.path())?;
        let mut reader = ScriptBlockReader::new(&body, self.path(), off);
        match reader.next_record()? {
            Some(r) if script_key(&r.hashx, r.txnum, r.vout) == self.skey(i) => {
                if !f(&r) {
                    return Ok(());
                }
            }
            _ => return Err(reader.corrupt("block does not match index")),
        }
        while let Some(r) = reader.next_record()? {
            if !f(&r) {
                break;
            }
        }
        Ok(())
    }

    /// Decodes by-script block `i` into `out`.
    fn script_block(&self, i: usize, out: &mut Vec<Record>) -> Result<()> {
        out.clear();
        self.scan_script_block(i, &mut |r| {
            out.push(*r);
            true
        })
    }

    /// Reads by-outpoint block `i` and calls `f(txnum, vout, script block)` on its entries
    /// until `f` returns false.
    fn scan_outpoint_block(
        &self,
        i: usize,
        f: &mut dyn FnMut(u64, u32, usize) -> bool,
    ) -> Result<()> {
        let off = self.ooff(i);
        let end = if i + 1 < self.noutpoint {
            self.ooff(i + 1)
        } else {
            self.outpoint_end
        };
        let body = read_block(self.file.bytes(), off, end, self.path())?;
        let corrupt = |reason: &str| Error::corrupt(self.path(), off as u64, reason);
        let mut pos = 0;
        let mut prev: Option<(u64, u32)> = None;
        while pos < body.len() {
            let (t, v) = match prev {
                None => {
                    let t = varint::get(&body, &mut pos).ok_or_else(|| corrupt("bad tx number"))?;
                    let v = varint::get(&body, &mut pos);
                    (t, v.ok_or_else(|| corrupt("bad output index"))?)
                }
                Some((pt, _)) => {
                    let tag =
                        varint::get(&body, &mut pos).ok_or_else(|| corrupt("bad tx number"))?;
                    let t = pt
                        .checked_add(tag >> 3)
                        .ok_or_else(|| corrupt("tx number overflow"))?;
                    let v = match tag & 7 {
                        7 => varint::get(&body, &mut pos)
                            .and_then(|x| x.checked_add(7))
                            .ok_or_else(|| corrupt("bad output index"))?,
                        v => v,
                    };
                    (t, v)
                }
            };
            let v = u32::try_from(v).map_err(|_| corrupt("output index out of range"))?;
            let block = varint::get(&body, &mut pos)
                .and_then(|b| usize::try_from(b).ok())
                .filter(|&b| b < self.nscript)
                .ok_or_else(|| corrupt("bad block number"))?;
            match prev {
                None if outpoint_key(t, v) != self.okey(i) => {
                    return Err(corrupt("block does not match index"))
                }
                Some(p) if p >= (t, v) => return Err(corrupt("outpoints out of order")),
                _ => {}
            }
            prev = Some((t, v));
            if !f(t, v, block) {
                break;
            }
        }
        Ok(())
    }

    /// The by-script block holding `(txnum, vout)`, if this run has the outpoint.
    fn find_outpoint(&self, txnum: u64, vout: u32) -> Result<Option<usize>> {
        if self
            .filter
            .as_ref()
            .is_some_and(|f| !f.may_contain(txnum, vout))
        {
            return Ok(None);
        }
        let target = outpoint_key(txnum, vout);
        let p = partition(self.noutpoint, |i| self.okey(i) <= &target[..]);
        let Some(i) = p.checked_sub(1) else {
            return Ok(None);
        };
        let mut found = None;
        self.scan_outpoint_block(i, &mut |t, v, block| match (t, v).cmp(&(txnum, vout)) {
            Ordering::Less => true,
            Ordering::Equal => {
                found = Some(block);
                false
            }
            Ordering::Greater => false,
        })?;
        Ok(found)
    }

    /// Builds the outpoint filter of a small run, reading (and so checking) its whole
    /// by-outpoint section.
    fn build_filter(&mut self, entries: u64) -> Result<()> {
        let mut filter = KeyFilter::with_capacity(entries);
        for i in 0..self.noutpoint {
            self.scan_outpoint_block(i, &mut |t, v, _| {
                filter.insert(t, v);
                true
            })?;
        }
        self.filter = Some(filter);
        Ok(())
    }

    /// `None` if this run says nothing about the outpoint; `Some(None)` if it holds a
    /// tombstone for it; else the live entry.
    pub fn lookup(&self, txnum: u64, vout: u32) -> Result<Option<Option<(HashX, u64)>>> {
        let Some(block) = self.find_outpoint(txnum, vout)? else {
            return Ok(None);
        };
        // A live record wins over a tombstone filed under another script key; the block
        // is scanned only until the live one turns up.
        let mut found = None;
        self.scan_script_block(block, &mut |r| {
            if (r.txnum, r.vout) == (txnum, vout) {
                found = Some(r.value.map(|v| (r.hashx, v)));
            }
            !matches!(found, Some(Some(_)))
        })?;
        found.map(Some).ok_or_else(|| {
            let off = self.soff(block) as u64;
            Error::corrupt(self.path(), off, "block lacks the outpoint its index names")
        })
    }

    /// Appends this run's entries (tombstones included) for `hashx` to `out`, sorted.
    pub fn list(&self, hashx: &HashX, out: &mut Vec<(u64, u32, Option<u64>)>) -> Result<()> {
        let target = script_key(hashx, 0, 0);
        let start = partition(self.nscript, |i| self.skey(i) < &target[..]).saturating_sub(1);
        let mut past = false;
        for i in start..self.nscript {
            if past || self.skey(i)[..HASHX_LEN] > hashx[..] {
                break;
            }
            self.scan_script_block(i, &mut |r| match r.hashx.cmp(hashx) {
                Ordering::Less => true,
                Ordering::Equal => {
                    out.push((r.txnum, r.vout, r.value));
                    true
                }
                Ordering::Greater => {
                    past = true;
                    false
                }
            })?;
        }
        Ok(())
    }
}

/// Reads a run's by-script section in key order, one block in memory at a time.
pub(crate) struct RunCursor {
    run: Arc<Run>,
    next_block: usize,
    records: Vec<Record>,
    pos: usize,
    last: Option<(HashX, u64, u32)>,
}

impl RunCursor {
    pub fn new(run: Arc<Run>) -> RunCursor {
        RunCursor {
            run,
            next_block: 0,
            records: Vec::new(),
            pos: 0,
            last: None,
        }
    }

    pub fn peek(&mut self) -> Result<Option<&Record>> {
        while self.pos == self.records.len() {
            if self.next_block == self.run.nscript {
                return Ok(None);
            }
            self.run.script_block(self.next_block, &mut self.records)?;
            self.pos = 0;
            let first = self.records[0].key();
            if self.last.is_some_and(|l| l >= first) {
                let off = self.run.soff(self.next_block) as u64;
                return Err(Error::corrupt(self.run.path(), off, "blocks out of order"));
            }
            self.next_block += 1;
        }
        Ok(self.records.get(self.pos))
    }

    pub fn advance(&mut self) {
        if let Some(r) = self.records.get(self.pos) {
            self.last = Some(r.key());
            self.pos += 1;
        }
    }
}

/// Merges runs (ordered oldest first) in key order; for equal keys the newest run's record
/// wins. Tombstones are passed to `f` unless `drop_tombs` (the merge covers the oldest run).
pub(crate) fn merge(
    runs: &[Arc<Run>],
    drop_tombs: bool,
    f: &mut dyn FnMut(&Record) -> Result<()>,
) -> Result<()> {
    let mut cursors: Vec<RunCursor> = runs.iter().cloned().map(RunCursor::new).collect();
    loop {
        // The newest cursor holding the smallest key; ties go to the later (newer) cursor.
        let mut best: Option<(usize, Record)> = None;
        for (i, c) in cursors.iter_mut().enumerate() {
            if let Some(r) = c.peek()? {
                if best.is_none_or(|(_, b)| r.key() <= b.key()) {
                    best = Some((i, *r));
                }
            }
        }
        let Some((_, rec)) = best else { return Ok(()) };
        for c in cursors.iter_mut() {
            if c.peek()?.is_some_and(|r| r.key() == rec.key()) {
                c.advance();
            }
        }
        if rec.value.is_some() || !drop_tombs {
            f(&rec)?;
        }
    }
}
