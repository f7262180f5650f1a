//! Plumbing shared by UTXO runs and history segments: block payloads (raw or bounded zstd)
//! inside crc32 frames, front-coded by-script blocks, a streaming writer for new files,
//! checksummed fixed-size footers, and the size-tiered merge policy.

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::frame::{decode_frame, encode_frame};
use crate::varint;
use crate::{HashX, HASHX_LEN};

const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// Largest decoded block body accepted on read: bounds what a corrupt length can allocate.
pub(crate) const MAX_BLOCK_RAW: usize = 1 << 20;

const ZSTD_LEVEL: i32 = 3;

/// Turns a block body into a frame payload: `codec u8`, then the raw body (codec 0) or
/// `raw_len varint ++ zstd(body)` (codec 1), whichever is smaller when `compress` is set.
/// Bodies over `MAX_BLOCK_RAW` stay raw, so every compressed body is within the read bound.
pub(crate) fn encode_block(body: &[u8], compress: bool) -> Vec<u8> {
    if compress && body.len() <= MAX_BLOCK_RAW {
        if let Ok(packed) = zstd::bulk::compress(body, ZSTD_LEVEL) {
            if packed.len() + 4 < body.len() {
                let mut out = Vec::with_capacity(packed.len() + 5);
                out.push(CODEC_ZSTD);
                varint::put(&mut out, body.len() as u64);
                out.extend_from_slice(&packed);
                return out;
            }
        }
    }
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(CODEC_RAW);
    out.extend_from_slice(body);
    out
}

/// Reads the block framed at `offset`, which must end exactly at `end`, and returns its body.
/// Every failure is `Error::Corrupt` at `offset`.
pub(crate) fn read_block<'a>(
    data: &'a [u8],
    offset: usize,
    end: usize,
    path: &Path,
) -> Result<Cow<'a, [u8]>> {
    let (payload, next) = decode_frame(data, offset, path)?;
    if next != end {
        return Err(Error::corrupt(
            path,
            offset as u64,
            "block length disagrees with index",
        ));
    }
    decode_block(payload, offset as u64, path)
}

/// Decodes a payload made by `encode_block` (codec byte, then raw or bounded zstd) into its
/// body. Every failure is `Error::Corrupt` at `offset`.
pub(crate) fn decode_block<'a>(
    payload: &'a [u8],
    offset: u64,
    path: &Path,
) -> Result<Cow<'a, [u8]>> {
    let corrupt = |reason: &str| Error::corrupt(path, offset, reason);
    match payload.split_first() {
        Some((&CODEC_RAW, body)) => Ok(Cow::Borrowed(body)),
        Some((&CODEC_ZSTD, rest)) => {
            let mut pos = 0;
            let raw_len =
                varint::get(rest, &mut pos).ok_or_else(|| corrupt("bad block length"))? as usize;
            if raw_len > MAX_BLOCK_RAW {
                return Err(corrupt("block length out of range"));
            }
            let body = zstd::bulk::decompress(&rest[pos..], raw_len)
                .map_err(|_| corrupt("bad compressed block"))?;
            if body.len() != raw_len {
                return Err(corrupt("compressed block has wrong length"));
            }
            Ok(Cow::Owned(body))
        }
        _ => Err(corrupt("unknown block codec")),
    }
}

/// Appends a footer: `magic[8] ++ fields (u64 LE each) ++ crc32(all before) u32 LE`.
pub(crate) fn encode_footer(out: &mut Vec<u8>, magic: &[u8; 8], fields: &[u64]) {
    let start = out.len();
    out.extend_from_slice(magic);
    for f in fields {
        out.extend_from_slice(&f.to_le_bytes());
    }
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Bytes of a footer with `n` fields.
pub(crate) const fn footer_len(n: usize) -> usize {
    8 + 8 * n + 4
}

/// Decodes the footer at the end of `data`; errors name the footer's offset (0 if the file is
/// shorter than a footer).
pub(crate) fn decode_footer<const N: usize>(
    data: &[u8],
    magic: &[u8; 8],
    path: &Path,
) -> Result<[u64; N]> {
    let len = footer_len(N);
    if data.len() < len {
        return Err(Error::corrupt(path, 0, "file shorter than its footer"));
    }
    let start = data.len() - len;
    let corrupt = |reason: &str| Error::corrupt(path, start as u64, reason);
    let footer = &data[start..];
    let (body, crc) = footer.split_at(len - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().unwrap()) {
        return Err(corrupt("footer checksum mismatch"));
    }
    if &body[..8] != magic {
        return Err(corrupt("bad magic"));
    }
    let mut fields = [0u64; N];
    for (i, f) in fields.iter_mut().enumerate() {
        *f = u64::from_le_bytes(body[8 + 8 * i..16 + 8 * i].try_into().unwrap());
    }
    Ok(fields)
}

/// Reads a little-endian u64 at `pos` of a slice whose bounds the caller validated.
pub(crate) fn le_u64(bytes: &[u8], pos: usize) -> u64 {
    u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap())
}

/// Binary search over `n` index entries: the number of leading entries satisfying `pred`.
pub(crate) fn partition(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// A by-script block being built (runs and segments): entries grouped under their hashX,
/// each group written as `count << 4 | shared` (the hashX prefix shared with the block's
/// previous group), the rest of the hashX, then the group's entries, whose tx numbers are
/// delta-coded within the group.
pub(crate) struct GroupedBlock {
    body: Vec<u8>,
    group: Vec<u8>,
    hashx: Option<HashX>,
    prev_hashx: Option<HashX>,
    count: u64,
    last_txnum: u64,
}

impl GroupedBlock {
    pub fn new(block_size: usize) -> GroupedBlock {
        GroupedBlock {
            body: Vec::with_capacity(block_size + 64),
            group: Vec::new(),
            hashx: None,
            prev_hashx: None,
            count: 0,
            last_txnum: 0,
        }
    }

    /// Starts an entry: writes its tx number (delta within the group) and returns the buffer
    /// for the entry's other fields.
    pub fn entry(&mut self, hashx: &HashX, txnum: u64) -> &mut Vec<u8> {
        if self.hashx != Some(*hashx) {
            self.close_group();
            self.hashx = Some(*hashx);
        }
        let delta = if self.count == 0 {
            txnum
        } else {
            txnum - self.last_txnum
        };
        varint::put(&mut self.group, delta);
        self.count += 1;
        self.last_txnum = txnum;
        &mut self.group
    }

    /// Whether the block has reached `block_size`, keeping room for one group header.
    pub fn is_full(&self, block_size: usize) -> bool {
        self.body.len() + self.group.len() + HASHX_LEN + 10 >= block_size
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty() && self.hashx.is_none()
    }

    /// Closes the block and returns its frame payload; the next entry starts a new block.
    pub fn take(&mut self, compress: bool) -> Vec<u8> {
        self.close_group();
        let payload = encode_block(&self.body, compress);
        self.body.clear();
        self.prev_hashx = None;
        payload
    }

    fn close_group(&mut self) {
        // A group's hashX is set only together with its first entry.
        let Some(hashx) = self.hashx.take() else {
            return;
        };
        let shared = self.prev_hashx.map_or(0, |p| {
            p.iter().zip(&hashx).take_while(|(a, b)| a == b).count()
        });
        varint::put(&mut self.body, self.count << 4 | shared as u64);
        self.body.extend_from_slice(&hashx[shared..]);
        self.body.extend_from_slice(&self.group);
        self.prev_hashx = Some(hashx);
        self.group.clear();
        self.count = 0;
    }
}

/// A new file written front to back and fsynced by `finish`. Dropped unfinished (an error
/// part way), it removes its partial file.
pub(crate) struct FileWriter {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    pos: u64,
    scratch: Vec<u8>,
}

impl FileWriter {
    pub fn create(path: &Path) -> Result<FileWriter> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(FileWriter {
            path: path.to_path_buf(),
            out: Some(BufWriter::with_capacity(64 << 10, file)),
            pos: 0,
            scratch: Vec::new(),
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self.out.as_mut().expect("writer used after finish");
        out.write_all(bytes).map_err(|e| Error::io(&self.path, e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes `payload` as one crc32 frame and returns the frame's offset.
    pub fn write_frame(&mut self, payload: &[u8]) -> Result<u64> {
        let offset = self.pos;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        encode_frame(&mut scratch, payload);
        let res = self.write(&scratch);
        self.scratch = scratch;
        res.map(|()| offset)
    }

    /// Flushes and fsyncs; the file is complete (its directory entry is made durable by the
    /// caller's manifest commit).
    pub fn finish(self) -> Result<()> {
        let path = self.path.clone();
        let file = self.close()?;
        file.sync_all().map_err(|e| Error::io(&path, e))
    }

    /// Flushes without fsync, for temporary files that no crash needs to survive.
    pub fn finish_temporary(self) -> Result<()> {
        self.close().map(drop)
    }

    fn close(mut self) -> Result<File> {
        let out = self.out.take().expect("writer finished twice");
        out.into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Size-tiered policy over files ordered oldest first: take the newest file, then keep
/// adding the next older one while it is at most twice the size of what is taken. Merging
/// that suffix (if it holds two or more files) keeps sizes growing geometrically toward the
/// oldest file, so a store of N bytes has O(log N) files and each byte is rewritten O(log N)
/// times.
pub(crate) fn pick_merge(sizes: &[u64]) -> Option<Range<usize>> {
    let n = sizes.len();
    let mut start = n.checked_sub(1)?;
    let mut taken = sizes[start];
    while start > 0 && sizes[start - 1] <= taken.saturating_mul(2) {
        start -= 1;
        taken = taken.saturating_add(sizes[start]);
    }
    (n - start >= 2).then_some(start..n)
}

/// Fuzzing aid: recomputes the checksums of a run or segment file image in place: every
/// frame's (walking frames from offset 0 while their lengths fit before the footer) and the
/// footer's. Mutated bytes then reach the decoders instead of stopping at a crc check.
pub fn reseal_checksums(data: &mut [u8]) {
    let Some(end) = data.len().checked_sub(footer_len(4)) else {
        return;
    };
    let mut pos = 0;
    while pos + 8 <= end {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        if len > end - pos - 8 {
            break;
        }
        let crc = crc32fast::hash(&data[pos..pos + 4 + len]);
        data[pos + 4 + len..pos + 8 + len].copy_from_slice(&crc.to_le_bytes());
        pos += 8 + len;
    }
    let crc = crc32fast::hash(&data[end..end + 40]);
    data[end + 40..].copy_from_slice(&crc.to_le_bytes());
}

/// Test helper: mutates bytes of a file *and* fixes the checksums around them, so decoders
/// (not just crc checks) meet bad input. `frames` are the frame offsets, the footer is last.
#[cfg(test)]
pub(crate) fn mutate_with_valid_checksums(
    data: &mut [u8],
    frames: &[usize],
    footer_fields: usize,
    seed: &mut u64,
) {
    let mut rnd = || {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 16
    };
    let footer = data.len() - footer_len(footer_fields);
    let pick = rnd() as usize % (frames.len() + 1);
    let (start, end) = match frames.get(pick) {
        Some(&f) => {
            let len = u32::from_le_bytes(data[f..f + 4].try_into().unwrap()) as usize;
            (f + 4, f + 4 + len)
        }
        None => (footer + 8, footer + 8 + 8 * footer_fields),
    };
    if start == end {
        return;
    }
    for _ in 0..1 + rnd() % 3 {
        let at = start + rnd() as usize % (end - start);
        data[at] = match rnd() % 3 {
            0 => data[at] ^ (1 << (rnd() % 8)),
            1 => rnd() as u8,
            _ => data[at].wrapping_add(1),
        };
    }
    let crc = crc32fast::hash(&data[start - 4..end]);
    match frames.get(pick) {
        Some(_) => data[end..end + 4].copy_from_slice(&crc.to_le_bytes()),
        None => {
            let crc = crc32fast::hash(&data[footer..end]);
            data[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_raw_and_compressed() {
        let path = Path::new("x.run");
        let compressible = vec![7u8; 3000];
        let mut x: u64 = 1;
        let random: Vec<u8> = (0..3000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        for (body, codec) in [(&compressible, CODEC_ZSTD), (&random, CODEC_RAW)] {
            let payload = encode_block(body, true);
            assert_eq!(payload[0], codec);
            let mut file = vec![1, 2, 3];
            encode_frame(&mut file, &payload);
            let got = read_block(&file, 3, file.len(), path).unwrap();
            assert_eq!(&got[..], &body[..]);
            let err = read_block(&file, 3, file.len() - 1, path).unwrap_err();
            assert_eq!(
                err.to_string(),
                "corrupt store file x.run at offset 3: block length disagrees with index"
            );
        }
    }

    #[test]
    fn oversized_or_unknown_blocks_are_corrupt() {
        let path = Path::new("x.run");
        let mut payload = vec![CODEC_ZSTD];
        varint::put(&mut payload, MAX_BLOCK_RAW as u64 + 1);
        let mut file = Vec::new();
        encode_frame(&mut file, &payload);
        let err = read_block(&file, 0, file.len(), path).unwrap_err();
        assert!(
            err.to_string().ends_with("block length out of range"),
            "{err}"
        );
        // A declared length smaller than the real content must not be trusted.
        let mut payload = vec![CODEC_ZSTD];
        varint::put(&mut payload, 10);
        payload.extend(zstd::bulk::compress(&[5u8; 1000], 3).unwrap());
        let mut file = Vec::new();
        encode_frame(&mut file, &payload);
        let err = read_block(&file, 0, file.len(), path).unwrap_err();
        assert!(err.to_string().ends_with("bad compressed block"), "{err}");
        for payload in [&[][..], &[9u8, 1, 2][..]] {
            let mut file = Vec::new();
            encode_frame(&mut file, payload);
            let err = read_block(&file, 0, file.len(), path).unwrap_err();
            assert!(err.to_string().ends_with("unknown block codec"), "{err}");
        }
    }

    #[test]
    fn footer_checks_length_crc_and_magic() {
        let path = Path::new("f");
        let mut data = vec![0xaa; 5];
        encode_footer(&mut data, b"MAGIC001", &[1, u64::MAX]);
        assert_eq!(
            decode_footer::<2>(&data, b"MAGIC001", path).unwrap(),
            [1, u64::MAX]
        );
        let err = decode_footer::<2>(&data, b"MAGIC002", path).unwrap_err();
        assert_eq!(
            err.to_string(),
            "corrupt store file f at offset 5: bad magic"
        );
        data[10] ^= 1;
        let err = decode_footer::<2>(&data, b"MAGIC001", path).unwrap_err();
        assert_eq!(
            err.to_string(),
            "corrupt store file f at offset 5: footer checksum mismatch"
        );
        let err = decode_footer::<2>(&data[..20], b"MAGIC001", path).unwrap_err();
        assert_eq!(
            err.to_string(),
            "corrupt store file f at offset 0: file shorter than its footer"
        );
    }

    #[test]
    fn unfinished_writer_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let mut w = FileWriter::create(&path).unwrap();
        assert_eq!(w.write_frame(b"xy").unwrap(), 0);
        assert_eq!(w.write_frame(b"z").unwrap(), 10);
        drop(w);
        assert!(!path.exists());
        let mut w = FileWriter::create(&path).unwrap();
        w.write(b"abc").unwrap();
        w.finish().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"abc");
        assert!(FileWriter::create(&path).is_err(), "must not overwrite");
    }

    #[test]
    fn merge_policy_is_geometric() {
        assert_eq!(pick_merge(&[]), None);
        assert_eq!(pick_merge(&[5]), None);
        assert_eq!(pick_merge(&[1, 1]), Some(0..2));
        assert_eq!(pick_merge(&[100, 10, 1]), None);
        assert_eq!(pick_merge(&[100, 10, 1, 1]), Some(2..4));
        assert_eq!(pick_merge(&[100, 10, 3, 2]), Some(1..4));
        assert_eq!(pick_merge(&[8, 3, 1, 1]), Some(0..4));
        // Simulated flushes of equal size keep the file count logarithmic.
        let mut sizes: Vec<u64> = Vec::new();
        for _ in 0..1000 {
            sizes.push(1);
            while let Some(r) = pick_merge(&sizes) {
                let total = sizes.drain(r).sum();
                sizes.push(total);
            }
            assert!(sizes.len() <= 12, "{sizes:?}");
        }
        assert_eq!(sizes.iter().sum::<u64>(), 1000);
    }
}
