//! Writing a UTXO run: by-script blocks as records stream in, then the by-outpoint section
//! from an external sort of the records' outpoints, the indexes and the footer.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::error::Result;
use crate::utxo::run::{
    outpoint_key, script_key, Record, COMPRESS, MAGIC, OUTPOINT_BLOCK, SCRIPT_BLOCK, SKEY,
};
use crate::utxo::sorted_file::{encode_block, encode_footer, FileWriter, GroupedBlock};
use crate::utxo::sorter::{OpRef, Sorter};
use crate::varint;

/// Writes a new run from records pushed in strictly ascending key order.
pub(crate) struct RunWriter {
    w: FileWriter,
    block: GroupedBlock,
    block_first: Option<[u8; SKEY]>,
    script_index: Vec<u8>,
    nscript: u32,
    sorter: Sorter,
    live: u64,
    dead: u64,
}

/// What writing a run produced.
pub(crate) struct Written {
    /// Peak bytes the outpoint sort held (bounded by the memory budget).
    pub sort_peak: usize,
}

impl RunWriter {
    /// `memory` bounds the outpoint sort (spilled next to `path` beyond it).
    pub fn create(path: &Path, memory: usize) -> Result<RunWriter> {
        Ok(RunWriter {
            w: FileWriter::create(path)?,
            block: GroupedBlock::new(SCRIPT_BLOCK),
            block_first: None,
            script_index: Vec::new(),
            nscript: 0,
            sorter: Sorter::new(path, memory),
            live: 0,
            dead: 0,
        })
    }

    pub fn push(&mut self, r: &Record) -> Result<()> {
        if self.block_first.is_none() {
            self.block_first = Some(script_key(&r.hashx, r.txnum, r.vout));
        }
        let fields = self.block.entry(&r.hashx, r.txnum);
        varint::put(fields, (u64::from(r.vout) << 1) | r.value.is_none() as u64);
        match r.value {
            Some(v) => {
                varint::put(fields, v);
                self.live += 1;
            }
            None => self.dead += 1,
        }
        self.sorter.push(OpRef {
            txnum: r.txnum,
            vout: r.vout,
            dead: r.value.is_none(),
            block: self.nscript,
        })?;
        if self.block.is_full(SCRIPT_BLOCK) {
            self.emit_script_block()?;
        }
        Ok(())
    }

    fn emit_script_block(&mut self) -> Result<()> {
        let first = self.block_first.take().unwrap();
        let off = self.w.write_frame(&self.block.take(COMPRESS))?;
        self.script_index.extend_from_slice(&first);
        self.script_index.extend_from_slice(&off.to_le_bytes());
        self.nscript += 1;
        Ok(())
    }

    /// Writes the outpoint section, indexes and footer, and fsyncs. A run with no records
    /// is not written at all (`None`). Stops with an error once `cancel` is set; the
    /// unfinished file is removed.
    pub fn finish(mut self, cancel: &AtomicBool) -> Result<Option<Written>> {
        if self.live + self.dead == 0 {
            return Ok(None);
        }
        if !self.block.is_empty() {
            self.emit_script_block()?;
        }
        let RunWriter {
            mut w,
            script_index,
            sorter,
            live,
            dead,
            ..
        } = self;
        let mut ob = OutpointBlocks::default();
        let sort_peak = sorter.drain(cancel, &mut |r| ob.push(&mut w, r))?;
        ob.emit(&mut w)?;
        let sidx_off = w.write_frame(&script_index)?;
        let oidx_off = w.write_frame(&ob.index)?;
        let mut footer = Vec::new();
        encode_footer(&mut footer, MAGIC, &[live, dead, sidx_off, oidx_off]);
        w.write(&footer)?;
        w.finish()?;
        Ok(Some(Written { sort_peak }))
    }
}

/// Builds the by-outpoint blocks from references in ascending order, keeping the first
/// (live-preferred) reference of each outpoint.
#[derive(Default)]
struct OutpointBlocks {
    body: Vec<u8>,
    first: Option<(u64, u32)>,
    last: Option<(u64, u32)>,
    index: Vec<u8>,
}

impl OutpointBlocks {
    fn push(&mut self, w: &mut FileWriter, r: OpRef) -> Result<()> {
        let key = (r.txnum, r.vout);
        if self.last == Some(key) {
            return Ok(());
        }
        // Entries after a block's first pack the tx number delta with a small output index:
        // `delta << 3 | min(vout, 7)`, then `vout - 7` if that is 7. A delta too big to
        // shift starts a new block instead.
        if self.first.is_some() && r.txnum - self.last.unwrap().0 >= 1 << 61 {
            self.emit(w)?;
        }
        match self.first {
            None => {
                self.first = Some(key);
                varint::put(&mut self.body, r.txnum);
                varint::put(&mut self.body, u64::from(r.vout));
            }
            Some(_) => {
                let delta = r.txnum - self.last.unwrap().0;
                varint::put(&mut self.body, delta << 3 | u64::from(r.vout.min(7)));
                if r.vout >= 7 {
                    varint::put(&mut self.body, u64::from(r.vout - 7));
                }
            }
        }
        self.last = Some(key);
        varint::put(&mut self.body, u64::from(r.block));
        if self.body.len() >= OUTPOINT_BLOCK {
            self.emit(w)?;
        }
        Ok(())
    }

    fn emit(&mut self, w: &mut FileWriter) -> Result<()> {
        let Some((txnum, vout)) = self.first.take() else {
            return Ok(());
        };
        let off = w.write_frame(&encode_block(&self.body, COMPRESS))?;
        self.index.extend_from_slice(&outpoint_key(txnum, vout));
        self.index.extend_from_slice(&off.to_le_bytes());
        self.body.clear();
        Ok(())
    }
}
