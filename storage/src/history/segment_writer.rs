//! Writing a history segment: blocks as (hashx, txnum) entries stream in, then the index
//! and the footer.

use std::path::Path;

use crate::error::Result;
use crate::history::segment::{BLOCK, MAGIC};
use crate::utxo::sorted_file::{encode_block, encode_footer, FileWriter};
use crate::varint;
use crate::{HashX, HASHX_LEN};

/// Writes a new segment from entries pushed in strictly ascending (hashx, txnum) order.
pub(crate) struct SegmentWriter {
    w: FileWriter,
    body: Vec<u8>,
    group: Vec<u8>,
    group_hashx: Option<HashX>,
    prev_hashx: Option<HashX>,
    group_count: u64,
    group_last: u64,
    block_first: Option<HashX>,
    index: Vec<u8>,
    entries: u64,
    min: u64,
    max: u64,
}

impl SegmentWriter {
    pub fn create(path: &Path) -> Result<SegmentWriter> {
        Ok(SegmentWriter {
            w: FileWriter::create(path)?,
            body: Vec::with_capacity(BLOCK + 64),
            group: Vec::new(),
            group_hashx: None,
            prev_hashx: None,
            group_count: 0,
            group_last: 0,
            block_first: None,
            index: Vec::new(),
            entries: 0,
            min: u64::MAX,
            max: 0,
        })
    }

    pub fn push(&mut self, hashx: &HashX, txnum: u64) -> Result<()> {
        if self.group_hashx != Some(*hashx) {
            self.close_group();
            self.group_hashx = Some(*hashx);
        }
        if self.block_first.is_none() {
            self.block_first = Some(*hashx);
        }
        let delta = if self.group_count == 0 {
            txnum
        } else {
            txnum - self.group_last
        };
        varint::put(&mut self.group, delta);
        self.group_count += 1;
        self.group_last = txnum;
        self.entries += 1;
        self.min = self.min.min(txnum);
        self.max = self.max.max(txnum);
        if self.body.len() + self.group.len() + HASHX_LEN + 10 >= BLOCK {
            self.close_group();
            self.emit_block()?;
        }
        Ok(())
    }

    fn close_group(&mut self) {
        if self.group_count > 0 {
            let hashx = self.group_hashx.unwrap();
            let shared = self.prev_hashx.map_or(0, |p| {
                p.iter().zip(&hashx).take_while(|(a, b)| a == b).count()
            });
            varint::put(&mut self.body, self.group_count << 4 | shared as u64);
            self.body.extend_from_slice(&hashx[shared..]);
            self.body.extend_from_slice(&self.group);
            self.prev_hashx = Some(hashx);
            self.group.clear();
            self.group_count = 0;
        }
        self.group_hashx = None;
    }

    fn emit_block(&mut self) -> Result<()> {
        let first = self.block_first.take().unwrap();
        let off = self.w.write_frame(&encode_block(&self.body, true))?;
        self.index.extend_from_slice(&first);
        self.index.extend_from_slice(&off.to_le_bytes());
        self.body.clear();
        self.prev_hashx = None;
        Ok(())
    }

    /// Writes the index and footer and fsyncs; an empty segment is not written (`false`).
    pub fn finish(mut self) -> Result<bool> {
        if self.entries == 0 {
            return Ok(false);
        }
        self.close_group();
        if !self.body.is_empty() {
            self.emit_block()?;
        }
        let idx_off = self.w.write_frame(&self.index)?;
        let mut footer = Vec::new();
        let fields = [self.entries, self.min, self.max, idx_off];
        encode_footer(&mut footer, MAGIC, &fields);
        self.w.write(&footer)?;
        self.w.finish()?;
        Ok(true)
    }
}
