//! A bounds-checked cursor over a checksummed record: every read that runs out of bytes or
//! meets a bad varint becomes `Error::Corrupt` naming the file and the record's offset.

use std::path::Path;

use crate::error::{Error, Result};
use crate::varint;

pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
    offset: u64,
}

impl<'a> Cursor<'a> {
    /// `offset` is where `data` starts in the file at `path` (reported in errors).
    pub fn new(data: &'a [u8], path: &'a Path, offset: u64) -> Cursor<'a> {
        Cursor {
            data,
            pos: 0,
            path,
            offset,
        }
    }

    pub fn corrupt(&self, reason: &str) -> Error {
        Error::corrupt(self.path, self.offset, reason.to_string())
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.data.len()
    }

    pub fn varint(&mut self) -> Result<u64> {
        varint::get(self.data, &mut self.pos).ok_or_else(|| self.corrupt("bad varint"))
    }

    pub fn u32(&mut self) -> Result<u32> {
        u32::try_from(self.varint()?).map_err(|_| self.corrupt("number out of range"))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| self.corrupt("record truncated"))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// A varint length followed by that many bytes.
    pub fn blob(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| self.corrupt("length out of range"))?;
        self.bytes(n)
    }

    /// A varint count that must fit in the remaining bytes at `min_size` bytes per item, so a
    /// corrupt count cannot make the caller allocate without bound.
    pub fn count(&mut self, min_size: usize) -> Result<usize> {
        let n = self.varint()?;
        let left = (self.data.len() - self.pos) as u64;
        if n.saturating_mul(min_size.max(1) as u64) > left {
            return Err(self.corrupt("count larger than the record"));
        }
        Ok(n as usize)
    }

    pub fn finish(&self) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt("trailing bytes in record"))
        }
    }
}

pub fn put_blob(out: &mut Vec<u8>, bytes: &[u8]) {
    varint::put(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_and_rejects_overruns() {
        let mut buf = Vec::new();
        varint::put(&mut buf, 300);
        put_blob(&mut buf, b"abc");
        varint::put(&mut buf, 1000);
        let path = Path::new("f");
        let mut c = Cursor::new(&buf, path, 7);
        assert_eq!(c.varint().unwrap(), 300);
        assert_eq!(c.blob().unwrap(), b"abc");
        let err = c.count(1).unwrap_err().to_string();
        assert_eq!(
            err,
            "corrupt store file f at offset 7: count larger than the record"
        );
        let mut c = Cursor::new(&buf[..3], path, 0);
        c.varint().unwrap();
        assert!(c.blob().is_err());
    }
}
