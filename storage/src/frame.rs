//! Checksummed record framing shared by every variable-length file in the store.
//!
//! A frame is `len: u32 LE | payload: [u8; len] | crc32(len bytes ++ payload): u32 LE`.
//! Decoding checks bounds before slicing and the crc before handing out the payload, so a
//! flipped or truncated byte always becomes `Error::Corrupt` with the file and offset.

use std::path::Path;

use crate::error::{Error, Result};

/// Bytes a frame adds around its payload.
pub const FRAME_OVERHEAD: usize = 8;

/// Largest payload we will accept when decoding; bigger lengths are treated as corruption
/// rather than as a request to allocate or slice gigabytes.
pub const MAX_FRAME_PAYLOAD: usize = 1 << 30;

/// Appends one frame holding `payload` to `out`.
pub fn encode_frame(out: &mut Vec<u8>, payload: &[u8]) {
    assert!(
        payload.len() <= MAX_FRAME_PAYLOAD,
        "frame payload too large"
    );
    let len = (payload.len() as u32).to_le_bytes();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    hasher.update(payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(payload);
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
}

/// Decodes the frame starting at `offset` in `data` (the whole file, or a mapped view of it).
/// Returns the payload and the offset just past the frame. `path` is only used in errors.
pub fn decode_frame<'a>(data: &'a [u8], offset: usize, path: &Path) -> Result<(&'a [u8], usize)> {
    let corrupt = |reason: &str| Error::corrupt(path, offset as u64, reason);
    let header = data
        .get(offset..offset + 4)
        .ok_or_else(|| corrupt("truncated frame header"))?;
    let len = u32::from_le_bytes(header.try_into().unwrap()) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(corrupt("frame length out of range"));
    }
    let end = offset + 4 + len;
    let payload = data
        .get(offset + 4..end)
        .ok_or_else(|| corrupt("truncated frame payload"))?;
    let stored = data
        .get(end..end + 4)
        .ok_or_else(|| corrupt("truncated frame checksum"))?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    if hasher.finalize() != u32::from_le_bytes(stored.try_into().unwrap()) {
        return Err(corrupt("checksum mismatch"));
    }
    Ok((payload, end + 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("test.dat")
    }

    #[test]
    fn round_trip_two_frames() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, b"hello");
        encode_frame(&mut buf, b"");
        let (a, next) = decode_frame(&buf, 0, path()).unwrap();
        assert_eq!(a, b"hello");
        let (b, end) = decode_frame(&buf, next, path()).unwrap();
        assert_eq!(b, b"");
        assert_eq!(end, buf.len());
    }

    #[test]
    fn every_flipped_byte_is_reported_with_offset() {
        let mut buf = vec![0u8; 3];
        encode_frame(&mut buf, b"payload");
        for i in 3..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            let err = decode_frame(&bad, 3, path()).unwrap_err().to_string();
            assert!(
                err.starts_with("corrupt store file test.dat at offset 3: "),
                "{err}"
            );
        }
    }

    #[test]
    fn every_truncation_is_reported() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, b"payload");
        for cut in 0..buf.len() {
            let err = decode_frame(&buf[..cut], 0, path())
                .unwrap_err()
                .to_string();
            assert!(err.contains("truncated frame"), "{err}");
        }
    }
}
