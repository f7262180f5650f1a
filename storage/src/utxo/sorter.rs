//! External sort of outpoint references with a memory budget: a merge emits them in
//! by-script order and the by-outpoint section needs them by outpoint. Chunks that overflow
//! the budget are sorted and spilled to temporary files, then merged back (in several passes
//! if there are more chunks than the fan-in).

use std::fs::{self, File};
use std::io::{BufReader, ErrorKind, Read};
use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::background::check_cancel;
use crate::error::{Error, Result};
use crate::utxo::sorted_file::FileWriter;

/// One by-outpoint entry: where the record for `(txnum, vout)` sits in the by-script section.
/// Field order gives the sort order; a live record sorts before a tombstone of the same
/// outpoint, and the first of equal outpoints is the one kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct OpRef {
    pub txnum: u64,
    pub vout: u32,
    pub dead: bool,
    pub block: u32,
}

const RECORD: usize = 17;
const FAN_IN: usize = 16;

impl OpRef {
    fn to_bytes(self) -> [u8; RECORD] {
        let mut b = [0u8; RECORD];
        b[..8].copy_from_slice(&self.txnum.to_le_bytes());
        b[8..12].copy_from_slice(&self.vout.to_le_bytes());
        b[12..16].copy_from_slice(&self.block.to_le_bytes());
        b[16] = self.dead as u8;
        b
    }

    fn from_bytes(b: &[u8; RECORD]) -> OpRef {
        OpRef {
            txnum: u64::from_le_bytes(b[..8].try_into().unwrap()),
            vout: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            block: u32::from_le_bytes(b[12..16].try_into().unwrap()),
            dead: b[16] != 0,
        }
    }
}

pub(crate) struct Sorter {
    base: PathBuf,
    chunk: Vec<OpRef>,
    limit: usize,
    reader_buf: usize,
    spills: Vec<Spill>,
    next_spill: usize,
    peak_bytes: usize,
}

/// A sorted temporary file, removed when dropped.
struct Spill(PathBuf);

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

impl Sorter {
    /// Spill files are named `<base>.<n>.sort`. Half of `memory` holds the in-memory chunk and
    /// half the read buffers of a merge pass; the chunk grows only as needed.
    pub fn new(base: &Path, memory: usize) -> Sorter {
        Sorter {
            base: base.to_path_buf(),
            chunk: Vec::new(),
            limit: (memory / 2 / size_of::<OpRef>()).max(4),
            reader_buf: (memory / 2 / FAN_IN).max(RECORD),
            spills: Vec::new(),
            next_spill: 0,
            peak_bytes: 0,
        }
    }

    pub fn push(&mut self, r: OpRef) -> Result<()> {
        if self.chunk.len() == self.limit {
            self.spill_chunk()?;
        }
        if self.chunk.len() == self.chunk.capacity() {
            // Grow by doubling, but never past the budget.
            let want = (self.chunk.capacity() * 2).clamp(4, self.limit);
            self.chunk.reserve_exact(want - self.chunk.len());
        }
        self.chunk.push(r);
        Ok(())
    }

    fn chunk_bytes(&self) -> usize {
        self.chunk.capacity() * size_of::<OpRef>()
    }

    fn new_spill(&mut self) -> Result<(Spill, FileWriter)> {
        let path = PathBuf::from(format!("{}.{}.sort", self.base.display(), self.next_spill));
        self.next_spill += 1;
        let writer = FileWriter::create(&path)?;
        Ok((Spill(path), writer))
    }

    fn spill_chunk(&mut self) -> Result<()> {
        self.chunk.sort_unstable();
        let (spill, mut w) = self.new_spill()?;
        for r in &self.chunk {
            w.write(&r.to_bytes())?;
        }
        w.finish_temporary()?;
        self.spills.push(spill);
        self.chunk.clear();
        Ok(())
    }

    /// Largest number of bytes held at once (chunk plus read buffers).
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes.max(self.chunk_bytes())
    }

    /// Calls `f` on every pushed reference in ascending order.
    /// Stops with an error once `cancel` is set (checked per entry, in every pass).
    pub fn drain(
        mut self,
        cancel: &AtomicBool,
        f: &mut dyn FnMut(OpRef) -> Result<()>,
    ) -> Result<usize> {
        let mut f = |r| {
            check_cancel(cancel, "UTXO")?;
            f(r)
        };
        if self.spills.is_empty() {
            self.chunk.sort_unstable();
            for r in std::mem::take(&mut self.chunk) {
                f(r)?;
            }
            return Ok(self.peak_bytes());
        }
        if !self.chunk.is_empty() {
            self.spill_chunk()?;
        }
        self.peak_bytes = self.peak_bytes();
        self.chunk = Vec::new();
        while self.spills.len() > FAN_IN {
            let group: Vec<Spill> = self.spills.drain(..FAN_IN).collect();
            let (spill, mut w) = self.new_spill()?;
            self.merge(group, &mut |r| {
                check_cancel(cancel, "UTXO")?;
                w.write(&r.to_bytes())
            })?;
            w.finish_temporary()?;
            self.spills.push(spill);
        }
        let group = std::mem::take(&mut self.spills);
        self.merge(group, &mut f)?;
        Ok(self.peak_bytes)
    }

    fn merge(&mut self, group: Vec<Spill>, f: &mut dyn FnMut(OpRef) -> Result<()>) -> Result<()> {
        self.peak_bytes = self.peak_bytes.max(group.len() * self.reader_buf);
        let mut readers = Vec::with_capacity(group.len());
        for spill in &group {
            let file = File::open(&spill.0).map_err(|e| Error::io(&spill.0, e))?;
            let mut reader = BufReader::with_capacity(self.reader_buf, file);
            let head = read_ref(&mut reader, &spill.0)?;
            readers.push((reader, head));
        }
        // The fan-in is small, so a linear scan for the minimum beats a heap's bookkeeping.
        loop {
            let mut best: Option<usize> = None;
            for (i, (_, head)) in readers.iter().enumerate() {
                if let Some(h) = head {
                    if best.is_none_or(|b| Some(*h) < readers[b].1) {
                        best = Some(i);
                    }
                }
            }
            let Some(i) = best else { return Ok(()) };
            let (reader, head) = &mut readers[i];
            f(head.take().unwrap())?;
            *head = read_ref(reader, &group[i].0)?;
        }
    }
}

fn read_ref(reader: &mut impl Read, path: &Path) -> Result<Option<OpRef>> {
    let mut b = [0u8; RECORD];
    match reader.read_exact(&mut b) {
        Ok(()) => Ok(Some(OpRef::from_bytes(&b))),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn refs(n: u64) -> Vec<OpRef> {
        (0..n)
            .map(|i| {
                let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                OpRef {
                    txnum: x % 1000,
                    vout: (x >> 20) as u32 % 5,
                    dead: x & (1 << 40) != 0,
                    block: i as u32,
                }
            })
            .collect()
    }

    fn sort_with(memory: usize, input: &[OpRef]) -> (Vec<OpRef>, usize) {
        let dir = tempfile::tempdir().unwrap();
        let mut sorter = Sorter::new(&dir.path().join("run"), memory);
        for r in input {
            sorter.push(*r).unwrap();
        }
        let mut out = Vec::new();
        let peak = sorter
            .drain(&AtomicBool::new(false), &mut |r| {
                out.push(r);
                Ok(())
            })
            .unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "spills left");
        (out, peak)
    }

    #[test]
    fn sorts_in_memory_and_with_multi_pass_spills() {
        let input = refs(5000);
        let mut expected = input.clone();
        expected.sort();
        let (all_in_memory, _) = sort_with(1 << 20, &input);
        assert_eq!(all_in_memory, expected);
        // 4 KiB: 85-entry chunks, 59 spills, two merge passes.
        let (spilled, peak) = sort_with(4096, &input);
        assert_eq!(spilled, expected);
        assert!(peak <= 4096, "peak {peak}");
        let (tiny, _) = sort_with(0, &input);
        assert_eq!(tiny, expected);
    }

    #[test]
    fn a_cancel_stops_every_pass_and_leaves_no_spill() {
        let dir = tempfile::tempdir().unwrap();
        // (memory, entries, entries handed out before the cancel): 59 spills, more than the
        // fan-in, so the cancel is seen in a pass that hands nothing out; 12 spills, merged in
        // one pass; no spill.
        for (memory, n, before) in [
            (4096, 5000, None),
            (4096, 1000, Some(100)),
            (1 << 20, 1000, Some(100)),
        ] {
            let mut sorter = Sorter::new(&dir.path().join("run"), memory);
            for r in refs(n) {
                sorter.push(r).unwrap();
            }
            let cancel = AtomicBool::new(before.is_none());
            let mut seen = 0;
            let err = sorter
                .drain(&cancel, &mut |_| {
                    seen += 1;
                    cancel.store(Some(seen) == before, Ordering::Relaxed);
                    Ok(())
                })
                .err()
                .unwrap();
            assert_eq!(err.to_string(), "UTXO merge cancelled");
            assert_eq!(seen, before.unwrap_or(0), "memory {memory}");
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "spills left");
        }
    }

    #[test]
    fn record_encoding_round_trips() {
        for r in refs(50) {
            assert_eq!(OpRef::from_bytes(&r.to_bytes()), r);
        }
    }
}
