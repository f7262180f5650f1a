//! Append-only fixed-width arrays (block headers, cumulative tx counts, tx hashes): segment
//! files read through mmap, with a crc32 after every chunk of records.
//!
//! Record `i` lives in segment `i / segment_records`, chunk `(i % segment_records) / chunk`.
//! A segment file is `full chunks × (chunk × width bytes + crc32 LE)` followed by the records of
//! the partial last chunk, whose crc lives in the manifest (`ArrayState::tail_crc`) until the
//! chunk fills and its crc is appended. Committed bytes of a segment never change while the
//! store is open: appends go past them, and a rollback that cuts into a segment makes the next
//! append copy the kept prefix into a fresh segment file, so older snapshots (which map exactly
//! the committed length of their commit) keep reading the bytes they were published with.
//!
//! Because committed bytes never change, a chunk's crc is checked once per process: each
//! segment file keeps a bitmap of its verified full chunks, and each mapping remembers
//! whether its partial last chunk was verified. A corrupt chunk fails every read of it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

use crate::error::{Error, Result};

/// Shape of one array: file name prefix, record width, records per crc chunk and per segment.
#[derive(Debug)]
pub struct ArraySpec {
    pub name: &'static str,
    pub width: usize,
    pub chunk: u64,
    pub segment: u64,
}

pub static HEADERS: ArraySpec = ArraySpec {
    name: "hdr",
    width: 80,
    chunk: 16,
    segment: 1 << 16,
};
pub static COUNTS: ArraySpec = ArraySpec {
    name: "cnt",
    width: 8,
    chunk: 128,
    segment: 1 << 16,
};
pub static TXHASHES: ArraySpec = ArraySpec {
    name: "txh",
    width: 32,
    chunk: 64,
    segment: 1 << 20,
};

impl ArraySpec {
    /// Full chunks a segment holds.
    fn segment_chunks(&self) -> u64 {
        self.segment.div_ceil(self.chunk)
    }

    fn chunk_bytes(&self) -> u64 {
        self.chunk * self.width as u64 + 4
    }

    /// Bytes a segment holding `records` records occupies on disk.
    fn segment_bytes(&self, records: u64) -> u64 {
        (records / self.chunk) * self.chunk_bytes() + (records % self.chunk) * self.width as u64
    }

    /// Offset of record `r` (index within its segment) in the segment file.
    fn record_offset(&self, r: u64) -> u64 {
        (r / self.chunk) * self.chunk_bytes() + (r % self.chunk) * self.width as u64
    }

    pub fn file_name(&self, id: u64) -> String {
        format!("{}-{}.arr", self.name, id)
    }
}

/// What the manifest records about one array.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArrayState {
    pub len: u64,
    /// crc32 of the records of the partial last chunk (0 when there is none).
    pub tail_crc: u32,
    /// File ids of the segments, in order; all but the last are full.
    pub segments: Vec<u64>,
}

/// A segment file on disk; removed when marked obsolete and the last holder drops it.
struct SegmentFile {
    path: PathBuf,
    obsolete: AtomicBool,
    /// One bit per full chunk whose crc matched. Full chunks are committed bytes, which never
    /// change while the store is open, so a match holds for every later read of any mapping.
    verified: Box<[AtomicU64]>,
}

impl SegmentFile {
    fn new(path: PathBuf, spec: &ArraySpec) -> SegmentFile {
        SegmentFile {
            path,
            obsolete: AtomicBool::new(false),
            verified: (0..spec.segment_chunks().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    fn is_verified(&self, chunk: u64) -> bool {
        // Relaxed: the bit caches a fact about immutable bytes, it guards no other memory.
        self.verified[(chunk / 64) as usize].load(Ordering::Relaxed) & (1 << (chunk % 64)) != 0
    }

    fn set_verified(&self, chunk: u64) {
        self.verified[(chunk / 64) as usize].fetch_or(1 << (chunk % 64), Ordering::Relaxed);
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            // A failure leaves an orphan that the next open deletes.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One segment as a snapshot sees it: the file mapped up to its committed length.
struct SegmentMap {
    file: Arc<SegmentFile>,
    map: Option<Mmap>,
    records: u64,
    /// The partial last chunk matched the crc of the commit this mapping was made for (a
    /// mapping is only reused for the same file and length, hence the same tail bytes).
    tail_verified: AtomicBool,
}

impl SegmentMap {
    fn open(file: Arc<SegmentFile>, spec: &ArraySpec, records: u64) -> Result<SegmentMap> {
        let bytes = spec.segment_bytes(records);
        let map = if bytes == 0 {
            None
        } else {
            let f = File::open(&file.path).map_err(|e| Error::io(&file.path, e))?;
            // Safety: the mapped range holds committed bytes, which are never modified while
            // the store is open (see the module comment); the file is only appended to.
            let map = unsafe { MmapOptions::new().len(bytes as usize).map(&f) }
                .map_err(|e| Error::io(&file.path, e))?;
            Some(map)
        };
        Ok(SegmentMap {
            file,
            map,
            records,
            tail_verified: AtomicBool::new(false),
        })
    }

    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// A committed array as a snapshot sees it.
#[derive(Clone)]
pub struct ArrayView {
    spec: &'static ArraySpec,
    segments: Vec<Arc<SegmentMap>>,
    len: u64,
    tail_crc: u32,
}

impl ArrayView {
    /// Record `i`, after checking the crc of the chunk that holds it. `i` must be `< len()`.
    pub fn get(&self, i: u64) -> Result<&[u8]> {
        let spec = self.spec;
        debug_assert!(i < self.len);
        let (first, chunk) = self.chunk_of(i)?;
        let at = (i - first) as usize * spec.width;
        Ok(&chunk[at..at + spec.width])
    }

    /// Records `indices` in turn, passed to `f`. Consecutive indices in one chunk share one
    /// chunk lookup, so ascending indices read each chunk once. Every index must be `< len()`.
    pub fn get_many(&self, indices: &[u64], mut f: impl FnMut(&[u8])) -> Result<()> {
        let width = self.spec.width;
        let (mut first, mut chunk) = (0, &[][..]);
        for &i in indices {
            let mut at = i.wrapping_sub(first) as usize;
            if at >= chunk.len() / width {
                (first, chunk) = self.chunk_of(i)?;
                at = (i - first) as usize;
            }
            f(&chunk[at * width..(at + 1) * width]);
        }
        Ok(())
    }

    /// The global index of the first record of the chunk holding record `i`, and the chunk's
    /// verified records.
    fn chunk_of(&self, i: u64) -> Result<(u64, &[u8])> {
        let spec = self.spec;
        debug_assert!(i < self.len);
        let seg = &self.segments[(i / spec.segment) as usize];
        let r = i % spec.segment;
        let first = i - r % spec.chunk;
        Ok((first, self.chunk(seg, r - r % spec.chunk, first)?))
    }

    /// The verified records of the chunk starting at record `first` of `seg` (global index
    /// `global_first`).
    fn chunk<'a>(&self, seg: &'a SegmentMap, first: u64, global_first: u64) -> Result<&'a [u8]> {
        let spec = self.spec;
        let data = seg.bytes();
        let offset = spec.record_offset(first);
        let path = &seg.file.path;
        let full = global_first + spec.chunk <= self.len;
        let records = if full {
            spec.chunk
        } else {
            self.len - global_first
        };
        let start = offset as usize;
        let end = start + records as usize * spec.width;
        let body = data
            .get(start..end)
            .ok_or_else(|| Error::corrupt(path, offset, "array chunk beyond end of file"))?;
        let chunk_no = first / spec.chunk;
        let verified = if full {
            seg.file.is_verified(chunk_no)
        } else {
            seg.tail_verified.load(Ordering::Relaxed)
        };
        if verified {
            return Ok(body);
        }
        let expected = if full {
            let crc = data.get(end..end + 4).ok_or_else(|| {
                Error::corrupt(path, offset, "array chunk crc beyond end of file")
            })?;
            u32::from_le_bytes(crc.try_into().expect("4 bytes"))
        } else {
            self.tail_crc
        };
        if crc32fast::hash(body) != expected {
            return Err(Error::corrupt(
                path,
                offset,
                "array chunk checksum mismatch",
            ));
        }
        if full {
            seg.file.set_verified(chunk_no);
        } else {
            seg.tail_verified.store(true, Ordering::Relaxed);
        }
        Ok(body)
    }
}

/// The writer side of one array: committed state plus records appended since the last commit.
pub struct ArrayWriter {
    spec: &'static ArraySpec,
    dir: PathBuf,
    state: ArrayState,
    files: Vec<Arc<SegmentFile>>,
    view: ArrayView,
    pending: Vec<u8>,
    /// Set by a rollback that cut into the last segment: snapshots may still map bytes past the
    /// new length, so the next append copies the kept prefix into a fresh segment file.
    copy_tail: bool,
    dropped: Vec<Arc<SegmentFile>>,
}

impl ArrayWriter {
    /// Opens the array the manifest describes; bytes appended after that commit are ignored
    /// and dropped by the next append.
    pub fn open(dir: &Path, spec: &'static ArraySpec, state: ArrayState) -> Result<ArrayWriter> {
        // The manifest checked that `segments` matches `len`.
        let needed = state.segments.len();
        let mut files = Vec::with_capacity(needed);
        let mut copy_tail = false;
        for (n, &id) in state.segments.iter().enumerate() {
            let path = dir.join(spec.file_name(id));
            let records = state
                .len
                .saturating_sub(n as u64 * spec.segment)
                .min(spec.segment);
            let want = spec.segment_bytes(records);
            let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
            let have = f.metadata().map_err(|e| Error::io(&path, e))?.len();
            if have < want {
                return Err(Error::corrupt(
                    &path,
                    have,
                    format!("array file is shorter than the {want} bytes the manifest says"),
                ));
            }
            // Bytes past `want` were appended by a commit that never reached the manifest.
            // They are never read; rather than truncating a file that a snapshot of an earlier
            // `Store` in this process may still map, the next append copies the kept prefix
            // into a fresh segment (as after a rollback).
            if have > want && !records.is_multiple_of(spec.segment) {
                copy_tail = true;
            }
            files.push(Arc::new(SegmentFile::new(path, spec)));
        }
        let mut writer = ArrayWriter {
            spec,
            dir: dir.to_path_buf(),
            view: ArrayView {
                spec,
                segments: Vec::new(),
                len: 0,
                tail_crc: 0,
            },
            state,
            files,
            pending: Vec::new(),
            copy_tail,
            dropped: Vec::new(),
        };
        writer.view = writer.build_view(&writer.view.clone())?;
        Ok(writer)
    }

    pub fn state(&self) -> &ArrayState {
        &self.state
    }

    /// The committed array, as published with the last commit.
    pub fn view(&self) -> &ArrayView {
        &self.view
    }

    /// Length including records not yet committed.
    pub fn len(&self) -> u64 {
        self.state.len + (self.pending.len() / self.spec.width) as u64
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    pub fn push(&mut self, record: &[u8]) {
        assert_eq!(record.len(), self.spec.width, "array record width");
        self.pending.extend_from_slice(record);
    }

    /// Cuts the committed array to `len` records (rollback; nothing may be pending). Durable at
    /// the next commit, which publishes it.
    pub fn truncate(&mut self, len: u64) -> Result<()> {
        assert!(self.pending.is_empty() && len <= self.state.len);
        let spec = self.spec;
        let tail = len % spec.chunk;
        let tail_crc = if tail == 0 {
            0
        } else {
            let first = len - tail;
            let mut hasher = crc32fast::Hasher::new();
            for i in first..len {
                hasher.update(self.view.get(i)?);
            }
            hasher.finalize()
        };
        let keep = len.div_ceil(spec.segment) as usize;
        for file in self.files.drain(keep..) {
            self.dropped.push(file);
        }
        self.state.segments.truncate(keep);
        if len.is_multiple_of(spec.segment) {
            // The kept segments are full; the next append starts a new file.
            self.copy_tail = false;
        } else if len < self.state.len {
            self.copy_tail = true;
        }
        self.state.len = len;
        self.state.tail_crc = tail_crc;
        Ok(())
    }

    /// Writes pending records into segment files and fsyncs them (first half of a commit).
    /// Returns whether a new file was created (the directory then needs an fsync).
    pub fn write_pending(&mut self, alloc_id: &mut dyn FnMut() -> u64) -> Result<bool> {
        if self.pending.is_empty() {
            return Ok(false);
        }
        let spec = self.spec;
        let mut created = false;
        if self.copy_tail {
            let last = self.state.segments.len() - 1;
            let records = self.state.len - last as u64 * spec.segment;
            let bytes = spec.segment_bytes(records) as usize;
            let old = &self.view.segments[last];
            let prefix = old.bytes().get(..bytes).ok_or_else(|| {
                Error::corrupt(
                    &old.file.path,
                    old.bytes().len() as u64,
                    "array file too short",
                )
            })?;
            let id = alloc_id();
            let path = self.dir.join(spec.file_name(id));
            crate::file::write_new_file(&path, prefix)?;
            let new = Arc::new(SegmentFile::new(path, spec));
            self.dropped
                .push(std::mem::replace(&mut self.files[last], new));
            self.state.segments[last] = id;
            self.copy_tail = false;
            created = true;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut crc = crc32fast::Hasher::new_with_initial(self.state.tail_crc);
        let mut i = self.state.len;
        let mut rest = &pending[..];
        while !rest.is_empty() {
            let seg = (i / spec.segment) as usize;
            if seg == self.files.len() {
                let id = alloc_id();
                self.state.segments.push(id);
                self.files.push(Arc::new(SegmentFile::new(
                    self.dir.join(spec.file_name(id)),
                    spec,
                )));
                created = true;
            }
            let r = i % spec.segment;
            let n = (((spec.segment - r) as usize) * spec.width).min(rest.len());
            let (part, tail) = rest.split_at(n);
            rest = tail;
            let mut buf = Vec::with_capacity(n + n / (spec.chunk as usize * spec.width) * 4 + 4);
            for record in part.chunks_exact(spec.width) {
                buf.extend_from_slice(record);
                crc.update(record);
                i += 1;
                if i.is_multiple_of(spec.chunk) {
                    buf.extend_from_slice(&crc.clone().finalize().to_le_bytes());
                    crc = crc32fast::Hasher::new();
                }
            }
            let path = &self.files[seg].path;
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            let at = spec.record_offset(r);
            if f.metadata().map_err(|e| Error::io(path, e))?.len() != at {
                f.set_len(at).map_err(|e| Error::io(path, e))?;
            }
            f.write_all_at(&buf, at).map_err(|e| Error::io(path, e))?;
            f.sync_all().map_err(|e| Error::io(path, e))?;
        }
        self.state.len = i;
        self.state.tail_crc = if i.is_multiple_of(spec.chunk) {
            0
        } else {
            crc.finalize()
        };
        Ok(created)
    }

    /// After the manifest naming `state()` is durable: map the new committed length and let
    /// dropped segment files go once no snapshot holds them.
    pub fn committed(&mut self) -> Result<()> {
        for file in self.dropped.drain(..) {
            file.obsolete.store(true, Ordering::Release);
        }
        self.view = self.build_view(&self.view)?;
        Ok(())
    }

    pub fn file_names(&self) -> Vec<String> {
        let spec = self.spec;
        self.state
            .segments
            .iter()
            .map(|&id| spec.file_name(id))
            .collect()
    }

    /// Maps the committed state, reusing the previous view's maps of unchanged full segments.
    fn build_view(&self, previous: &ArrayView) -> Result<ArrayView> {
        let spec = self.spec;
        let mut segments = Vec::with_capacity(self.files.len());
        for (n, file) in self.files.iter().enumerate() {
            let records = self
                .state
                .len
                .saturating_sub(n as u64 * spec.segment)
                .min(spec.segment);
            let reuse = previous
                .segments
                .get(n)
                .filter(|s| Arc::ptr_eq(&s.file, file) && s.records == records);
            segments.push(match reuse {
                Some(s) => Arc::clone(s),
                None => Arc::new(SegmentMap::open(Arc::clone(file), spec, records)?),
            });
        }
        Ok(ArrayView {
            spec,
            segments,
            len: self.state.len,
            tail_crc: self.state.tail_crc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SMALL: ArraySpec = ArraySpec {
        name: "t",
        width: 4,
        chunk: 4,
        segment: 12,
    };

    fn rec(i: u32) -> [u8; 4] {
        i.to_le_bytes()
    }

    fn commit(w: &mut ArrayWriter, next: &mut u64) {
        let mut alloc = || {
            *next += 1;
            *next
        };
        w.write_pending(&mut alloc).unwrap();
        w.committed().unwrap();
    }

    #[test]
    fn append_reopen_and_read_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut next = 0;
        let mut w = ArrayWriter::open(dir.path(), &SMALL, ArrayState::default()).unwrap();
        for batch in [3u32, 1, 9, 14] {
            let start = w.len() as u32;
            for i in start..start + batch {
                w.push(&rec(i));
            }
            commit(&mut w, &mut next);
            for i in 0..w.len() {
                assert_eq!(w.view().get(i).unwrap(), rec(i as u32));
            }
        }
        let state = w.state().clone();
        assert_eq!(state.len, 27);
        assert_eq!(state.segments.len(), 3);
        // Bytes appended after the commit are ignored at open, and replaced by the next append.
        w.push(&rec(27));
        let mut alloc = || 99;
        w.write_pending(&mut alloc).unwrap();
        drop(w);
        let mut w = ArrayWriter::open(dir.path(), &SMALL, state).unwrap();
        assert_eq!(w.len(), 27);
        let old = w.view().clone();
        w.push(&rec(1027));
        commit(&mut w, &mut next);
        for i in 0..27 {
            assert_eq!(old.get(i).unwrap(), rec(i as u32));
            assert_eq!(w.view().get(i).unwrap(), rec(i as u32));
        }
        assert_eq!(w.view().get(27).unwrap(), rec(1027));
    }

    #[test]
    fn snapshot_keeps_its_bytes_across_rollback_and_reappend() {
        let dir = tempfile::tempdir().unwrap();
        let mut next = 0;
        let mut w = ArrayWriter::open(dir.path(), &SMALL, ArrayState::default()).unwrap();
        for i in 0..20 {
            w.push(&rec(i));
        }
        commit(&mut w, &mut next);
        let old = w.view().clone();
        w.truncate(7).unwrap();
        commit(&mut w, &mut next);
        assert_eq!(w.len(), 7);
        for i in 7..30 {
            w.push(&rec(1000 + i));
        }
        commit(&mut w, &mut next);
        for i in 0..20 {
            assert_eq!(old.get(i).unwrap(), rec(i as u32));
        }
        for i in 0..30 {
            let want = if i < 7 {
                rec(i as u32)
            } else {
                rec(1000 + i as u32)
            };
            assert_eq!(w.view().get(i).unwrap(), want);
        }
        let files = w.file_names();
        drop(old);
        let on_disk = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(on_disk, files.len(), "dropped segments are deleted");
    }

    #[test]
    fn get_many_reads_any_order_and_verified_chunks_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let mut next = 0;
        let mut w = ArrayWriter::open(dir.path(), &SMALL, ArrayState::default()).unwrap();
        for i in 0..30 {
            w.push(&rec(i));
        }
        commit(&mut w, &mut next);
        let old = w.view().clone();
        // Ascending with repeats, across segments and into the tail chunk; then jumping back.
        let indices = [0u64, 0, 1, 3, 4, 11, 12, 13, 25, 28, 29, 29, 2, 27, 5, 5];
        for view in [&old, w.view()] {
            let mut got = Vec::new();
            view.get_many(&indices, |r| got.push(r.to_vec())).unwrap();
            let want: Vec<Vec<u8>> = indices.iter().map(|&i| rec(i as u32).to_vec()).collect();
            assert_eq!(got, want);
        }
        // A longer commit maps the tail anew: the old tail's verification does not carry over.
        for i in 30..34 {
            w.push(&rec(i));
        }
        commit(&mut w, &mut next);
        for i in 0..34 {
            assert_eq!(w.view().get(i).unwrap(), rec(i as u32));
        }
        for i in 0..30 {
            assert_eq!(old.get(i).unwrap(), rec(i as u32));
        }
    }

    #[test]
    fn flipped_byte_is_reported_with_chunk_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut next = 0;
        let mut w = ArrayWriter::open(dir.path(), &SMALL, ArrayState::default()).unwrap();
        for i in 0..10 {
            w.push(&rec(i));
        }
        commit(&mut w, &mut next);
        let path = dir.path().join(SMALL.file_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        // Second chunk starts at 20 (16 bytes of records + 4 of crc); flip inside it, then in
        // the partial tail chunk at 40. Records of the chunks around it still read.
        for (at, chunk_off, record, good) in [(21usize, 20u64, 5u64, [3, 8]), (41, 40, 8, [3, 7])] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            std::fs::write(&path, &bad).unwrap();
            let w = ArrayWriter::open(dir.path(), &SMALL, w.state().clone()).unwrap();
            let want = format!(
                "corrupt store file {} at offset {chunk_off}: ",
                path.display()
            );
            // Every read of the chunk fails, not only the first: only chunks that pass are
            // remembered as checked.
            for _ in 0..2 {
                let err = w.view().get(record).unwrap_err().to_string();
                assert!(err.starts_with(&want), "{err}");
                let err = w
                    .view()
                    .get_many(&[0, record], |_| {})
                    .unwrap_err()
                    .to_string();
                assert!(err.starts_with(&want), "{err}");
            }
            for g in good {
                assert_eq!(w.view().get(g).unwrap(), rec(g as u32));
            }
        }
        bytes.truncate(30);
        std::fs::write(&path, &bytes).unwrap();
        let err = ArrayWriter::open(dir.path(), &SMALL, w.state().clone())
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with(&format!(
            "corrupt store file {} at offset 30: ",
            path.display()
        )));
    }
}
