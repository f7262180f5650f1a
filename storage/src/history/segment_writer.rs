//! Writing a history segment: blocks as (hashx, txnum) entries stream in, then the index
//! and the footer.

use std::path::Path;

use crate::error::Result;
use crate::history::block::BlockBuilder;
use crate::history::segment::MAGIC;
use crate::utxo::sorted_file::{encode_footer, FileWriter};
use crate::HashX;

/// Writes a new segment from entries pushed in strictly ascending (hashx, txnum) order.
pub(crate) struct SegmentWriter {
    w: FileWriter,
    block: BlockBuilder,
    index: Vec<u8>,
    entries: u64,
    min: u64,
    max: u64,
}

impl SegmentWriter {
    pub fn create(path: &Path) -> Result<SegmentWriter> {
        Ok(SegmentWriter {
            w: FileWriter::create(path)?,
            block: BlockBuilder::default(),
            index: Vec::new(),
            entries: 0,
            min: u64::MAX,
            max: 0,
        })
    }

    pub fn push(&mut self, hashx: &HashX, txnum: u64) -> Result<()> {
        self.block.push(hashx, txnum);
        self.entries += 1;
        self.min = self.min.min(txnum);
        self.max = self.max.max(txnum);
        if self.block.is_full() {
            self.emit_block()?;
        }
        Ok(())
    }

    fn emit_block(&mut self) -> Result<()> {
        let first: HashX = *self.block.first().unwrap();
        let off = self.w.write_frame(&self.block.take())?;
        self.index.extend_from_slice(&first);
        self.index.extend_from_slice(&off.to_le_bytes());
        Ok(())
    }

    /// Writes the index and footer and fsyncs; an empty segment is not written (`false`).
    pub fn finish(mut self) -> Result<bool> {
        if self.entries == 0 {
            return Ok(false);
        }
        if !self.block.is_empty() {
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
