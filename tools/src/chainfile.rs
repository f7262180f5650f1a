//! Chain files: generated blocks streamed to disk and back. Layout: the magic `FRMCHAIN`, then
//! one frame per block, `[u32 LE length][consensus-serialized block]`, in chain order.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use bitcoin::consensus::{deserialize, serialize};
use bitcoin::Block;

pub const MAGIC: &[u8; 8] = b"FRMCHAIN";
/// Frames longer than this are corruption: a consensus-valid block is at most 4 MB.
pub const MAX_FRAME_LEN: u32 = 8 << 20;

/// Appends blocks to a chain file.
pub struct ChainWriter<W: Write> {
    inner: W,
    blocks: u64,
}

impl ChainWriter<BufWriter<File>> {
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::new(BufWriter::with_capacity(1 << 20, File::create(path)?))
    }
}

impl<W: Write> ChainWriter<W> {
    /// Writes the magic to `inner`.
    pub fn new(mut inner: W) -> io::Result<Self> {
        inner.write_all(MAGIC)?;
        Ok(Self { inner, blocks: 0 })
    }

    pub fn write_block(&mut self, block: &Block) -> io::Result<()> {
        let bytes = serialize(block);
        self.inner.write_all(&(bytes.len() as u32).to_le_bytes())?;
        self.inner.write_all(&bytes)?;
        self.blocks += 1;
        Ok(())
    }

    /// Blocks written so far.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// Reads a chain file block by block; memory use is one block.
pub struct ChainReader<R: Read> {
    inner: R,
    /// Offset of the next frame, for error messages.
    offset: u64,
    failed: bool,
}

impl ChainReader<BufReader<File>> {
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::new(BufReader::with_capacity(1 << 20, File::open(path)?))
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads as many bytes as available up to `buf.len()`; returns the count (short only at EOF).
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: Read> ChainReader<R> {
    /// Checks the magic at the start of `inner`.
    pub fn new(mut inner: R) -> io::Result<Self> {
        let mut magic = [0u8; 8];
        let got = read_full(&mut inner, &mut magic)?;
        if got < MAGIC.len() || &magic != MAGIC {
            return Err(invalid(
                "chain file: bad magic (expected \"FRMCHAIN\")".into(),
            ));
        }
        Ok(Self {
            inner,
            offset: MAGIC.len() as u64,
            failed: false,
        })
    }

    fn read_frame(&mut self) -> io::Result<Option<Block>> {
        let offset = self.offset;
        let mut len = [0u8; 4];
        match read_full(&mut self.inner, &mut len)? {
            0 => return Ok(None),
            4 => {}
            n => {
                return Err(invalid(format!(
                    "chain file: truncated frame header at offset {offset} ({n} of 4 bytes)"
                )))
            }
        }
        let len = u32::from_le_bytes(len);
        if len > MAX_FRAME_LEN {
            return Err(invalid(format!(
                "chain file: frame at offset {offset} declares {len} bytes, over the {MAX_FRAME_LEN} limit"
            )));
        }
        let mut bytes = vec![0u8; len as usize];
        let got = read_full(&mut self.inner, &mut bytes)?;
        if got < bytes.len() {
            return Err(invalid(format!(
                "chain file: frame at offset {offset} declares {len} bytes but only {got} remain"
            )));
        }
        let block = deserialize::<Block>(&bytes).map_err(|e| {
            invalid(format!(
                "chain file: block in frame at offset {offset} does not decode: {e}"
            ))
        })?;
        self.offset += 4 + len as u64;
        Ok(Some(block))
    }
}

impl<R: Read> Iterator for ChainReader<R> {
    type Item = io::Result<Block>;

    /// The next block; after an error, the iteration ends.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let result = self.read_frame();
        self.failed = result.is_err();
        result.transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaingen::{ChainGenerator, ChainParams};

    fn sample() -> (Vec<Block>, Vec<u8>) {
        let mut generator = ChainGenerator::new(ChainParams::small(1));
        let blocks: Vec<Block> = (0..3).map(|_| generator.next_block()).collect();
        let mut writer = ChainWriter::new(Vec::new()).unwrap();
        blocks.iter().for_each(|b| writer.write_block(b).unwrap());
        assert_eq!(writer.blocks(), 3);
        (blocks, writer.finish().unwrap())
    }

    fn read_all(bytes: &[u8]) -> io::Result<Vec<Block>> {
        ChainReader::new(bytes)?.collect()
    }

    #[test]
    fn round_trip() {
        let (blocks, bytes) = sample();
        assert_eq!(read_all(&bytes).unwrap(), blocks);
        assert!(read_all(MAGIC).unwrap().is_empty());
    }

    #[test]
    fn corruption_is_reported_with_offsets() {
        let (_, bytes) = sample();
        let err = |bytes: &[u8]| read_all(bytes).unwrap_err().to_string();
        assert_eq!(
            err(b"FRMCHAIX"),
            "chain file: bad magic (expected \"FRMCHAIN\")"
        );
        assert_eq!(err(b"FRM"), "chain file: bad magic (expected \"FRMCHAIN\")");
        let first_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let second = 12 + first_len;
        assert_eq!(
            err(&bytes[..second + 2]),
            format!("chain file: truncated frame header at offset {second} (2 of 4 bytes)")
        );
        assert!(err(&bytes[..bytes.len() - 1]).contains("declares"));
        let mut huge = bytes.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            err(&huge),
            format!(
                "chain file: frame at offset 8 declares {} bytes, over the {MAX_FRAME_LEN} limit",
                u32::MAX
            )
        );
        let mut garbled = bytes.clone();
        garbled[12 + 80] = 0xfd; // the transaction count varint of the first block
        assert!(err(&garbled).starts_with("chain file: block in frame at offset 8 does not decode"));
        // Iteration stops after the first error.
        let mut reader = ChainReader::new(&garbled[..]).unwrap();
        assert!(reader.next().unwrap().is_err());
        assert!(reader.next().is_none());
    }
}
