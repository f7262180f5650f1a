//! Undo records for the most recent blocks: what each block added to and removed from the UTXO
//! set, so a rollback can restore it. One immutable file per commit, one crc frame per block.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::decode::Cursor;
use crate::error::{Error, Result};
use crate::file::{write_new_file, ImmutableFile};
use crate::frame::{decode_frame, encode_frame};
use crate::{varint, HashX, HASHX_LEN};

pub fn file_name(id: u64) -> String {
    format!("undo-{id}.log")
}

/// One block's changes to the UTXO set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockUndo {
    pub height: u32,
    pub first_txnum: u64,
    /// Outpoints (tx number, vout) the block added.
    pub created: Vec<(u64, u32)>,
    /// Outputs the block spent: (key, tx number, vout, value).
    pub spent: Vec<(HashX, u64, u32, u64)>,
}

impl BlockUndo {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.created.len() * 3 + self.spent.len() * 24);
        varint::put(&mut out, u64::from(self.height));
        varint::put(&mut out, self.first_txnum);
        varint::put(&mut out, self.created.len() as u64);
        for &(txnum, vout) in &self.created {
            varint::put(&mut out, txnum - self.first_txnum);
            varint::put(&mut out, u64::from(vout));
        }
        varint::put(&mut out, self.spent.len() as u64);
        for (hashx, txnum, vout, value) in &self.spent {
            out.extend_from_slice(hashx);
            varint::put(&mut out, *txnum);
            varint::put(&mut out, u64::from(*vout));
            varint::put(&mut out, *value);
        }
        out
    }

    fn decode(payload: &[u8], path: &Path, offset: u64) -> Result<BlockUndo> {
        let mut c = Cursor::new(payload, path, offset);
        let height = c.u32()?;
        let first_txnum = c.varint()?;
        let n = c.count(2)?;
        let mut created = Vec::with_capacity(n);
        for _ in 0..n {
            let txnum = first_txnum
                .checked_add(c.varint()?)
                .ok_or_else(|| c.corrupt("tx number out of range"))?;
            created.push((txnum, c.u32()?));
        }
        let n = c.count(HASHX_LEN + 3)?;
        let mut spent = Vec::with_capacity(n);
        for _ in 0..n {
            let hashx = c.array::<HASHX_LEN>()?;
            spent.push((hashx, c.varint()?, c.u32()?, c.varint()?));
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
    files: Vec<UndoFile>,
    pending: VecDeque<(u32, Vec<u8>)>,
    pending_bytes: usize,
    dropped: Vec<Arc<ImmutableFile>>,
}

impl UndoLog {
    pub fn open(dir: &Path, keep: u32, refs: &[UndoRef]) -> Result<UndoLog> {
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
        let bytes = undo.encode();
        self.pending_bytes += bytes.len();
        self.pending.push_back((undo.height, bytes));
        while self.pending.len() > self.keep as usize {
            let (_, old) = self.pending.pop_front().expect("not empty");
            self.pending_bytes -= old.len();
        }
    }

    /// Writes pending records as one fsynced file and forgets files that fell out of the
    /// horizon of a chain whose tip is `tip`. Returns whether a file was created.
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
        let mut bytes = Vec::with_capacity(self.pending_bytes + self.pending.len() * 8);
        for (_, record) in &self.pending {
            encode_frame(&mut bytes, record);
        }
        let id = alloc_id();
        let path = self.dir.join(file_name(id));
        write_new_file(&path, &bytes)?;
        let r = UndoRef {
            id,
            first: self.pending.front().expect("not empty").0,
            last: self.pending.back().expect("not empty").0,
        };
        self.files.push(UndoFile {
            r,
            file: Arc::new(ImmutableFile::open(&path)?),
        });
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(true)
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
        let data = f.file.bytes();
        let path = f.file.path();
        let mut offset = 0;
        let mut expect = f.r.first;
        loop {
            let (payload, next) = decode_frame(data, offset, path)?;
            let undo = BlockUndo::decode(payload, path, offset as u64)?;
            if undo.height != expect {
                return Err(Error::corrupt(
                    path,
                    offset as u64,
                    format!(
                        "undo record for block {} where {expect} belongs",
                        undo.height
                    ),
                ));
            }
            if undo.height == height {
                return Ok(undo);
            }
            expect += 1;
            offset = next;
        }
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
        BlockUndo {
            height,
            first_txnum: u64::from(height) * 10,
            created: vec![(u64::from(height) * 10, 0), (u64::from(height) * 10 + 1, 3)],
            spent: vec![([height as u8; HASHX_LEN], 7, 1, 5000 + u64::from(height))],
        }
    }

    #[test]
    fn keeps_the_horizon_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = UndoLog::open(dir.path(), 5, &[]).unwrap();
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
        let log = UndoLog::open(dir.path(), 5, &refs).unwrap();
        for h in 3..9 {
            assert_eq!(log.read(h).unwrap(), undo(h));
        }
        assert!(log.read(9).is_err());
    }

    #[test]
    fn corrupt_record_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = UndoLog::open(dir.path(), 5, &[]).unwrap();
        log.push(&undo(0));
        log.push(&undo(1));
        log.flush(&mut || 1, Some(1)).unwrap();
        let path = dir.path().join(file_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        let second = bytes.len() / 2 + 3;
        bytes[second] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let log = UndoLog::open(dir.path(), 5, &log.refs()).unwrap();
        assert_eq!(log.read(0).unwrap(), undo(0));
        let err = log.read(1).unwrap_err().to_string();
        let want = format!(
            "corrupt store file {} at offset {}: ",
            path.display(),
            bytes.len() / 2
        );
        assert!(err.starts_with(&want), "{err}");
    }
}
