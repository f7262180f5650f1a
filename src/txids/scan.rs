//! A serialized block's header and txids without decoding it: each transaction's bytes are
//! walked once and hashed where they lie (a segwit transaction without its marker, flag and
//! witnesses), with no allocation per transaction. What it yields is checked against the
//! header's merkle root by the caller, so it need not reject every malformed encoding.

use bitcoin::hashes::{sha256d, Hash, HashEngine};
use ferrum_storage::Hash32;

type Result<T> = std::result::Result<T, String>;

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| format!("truncated at byte {} of {}", self.pos, self.data.len()))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// Bitcoin's CompactSize.
    fn compact_size(&mut self) -> Result<u64> {
        let le = |bytes: &[u8]| {
            let mut n = [0u8; 8];
            n[..bytes.len()].copy_from_slice(bytes);
            u64::from_le_bytes(n)
        };
        Ok(match self.byte()? {
            0xfd => le(self.take(2)?),
            0xfe => le(self.take(4)?),
            0xff => le(self.take(8)?),
            n => u64::from(n),
        })
    }

    /// Skips a length-prefixed byte string (a script, a witness item).
    fn skip_bytes(&mut self) -> Result<()> {
        let len = self.compact_size()?;
        self.take(len).map(drop)
    }
}

/// The header and the txids (internal byte order) of the serialized block `raw`.
pub fn block_txids(raw: &[u8]) -> Result<([u8; 80], Vec<Hash32>)> {
    let mut r = Reader { data: raw, pos: 0 };
    let mut header = [0u8; 80];
    header.copy_from_slice(r.take(80)?);
    let count = r.compact_size()?;
    // A transaction takes at least 60 bytes: no more room than the block can fill.
    let mut txids = Vec::with_capacity(count.min(raw.len() as u64 / 60) as usize);
    for _ in 0..count {
        txids.push(txid(&mut r)?);
    }
    if r.pos != raw.len() {
        return Err(format!(
            "{} bytes after the last transaction",
            raw.len() - r.pos
        ));
    }
    Ok((header, txids))
}

/// The txid of the transaction at the reader, which it moves past.
fn txid(r: &mut Reader) -> Result<Hash32> {
    let version = r.take(4)?;
    // BIP144: a zero input count is the segwit marker, then the flag, which must be 1.
    let segwit = r.data.get(r.pos) == Some(&0);
    if segwit {
        r.take(1)?;
        let flag = r.byte()?;
        if flag != 1 {
            return Err(format!("unsupported segwit flag {flag}"));
        }
    }
    let body = r.pos;
    let inputs = r.compact_size()?;
    for _ in 0..inputs {
        r.take(36)?;
        r.skip_bytes()?;
        r.take(4)?;
    }
    let outputs = r.compact_size()?;
    for _ in 0..outputs {
        r.take(8)?;
        r.skip_bytes()?;
    }
    let body_end = r.pos;
    if segwit {
        for _ in 0..inputs {
            let items = r.compact_size()?;
            for _ in 0..items {
                r.skip_bytes()?;
            }
        }
    }
    let lock_time = r.take(4)?;
    let mut engine = sha256d::Hash::engine();
    engine.input(version);
    engine.input(&r.data[body..body_end]);
    engine.input(lock_time);
    Ok(sha256d::Hash::from_engine(engine).to_byte_array())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::consensus::serialize;
    use ferrum_tools::chaingen::{ChainGenerator, ChainParams};
    use proptest::prelude::*;
    use std::sync::LazyLock;

    /// Generated blocks past coinbase maturity: legacy and segwit spends.
    static BLOCKS: LazyLock<Vec<bitcoin::Block>> = LazyLock::new(|| {
        let mut gen = ChainGenerator::new(ChainParams::medium(3));
        (0..105).map(|_| gen.next_block()).skip(100).collect()
    });

    fn blocks() -> &'static [bitcoin::Block] {
        &BLOCKS
    }

    #[test]
    fn txids_as_the_bitcoin_crate_computes_them() {
        let mut segwit = 0;
        for block in blocks() {
            let raw = serialize(block);
            let (header, txids) = block_txids(&raw).unwrap();
            assert_eq!(header[..], serialize(&block.header)[..]);
            let want: Vec<Hash32> = block
                .txdata
                .iter()
                .map(|tx| tx.compute_txid().to_byte_array())
                .collect();
            assert_eq!(txids, want);
            segwit += block
                .txdata
                .iter()
                .filter(|tx| tx.input.iter().any(|i| !i.witness.is_empty()))
                .count();
        }
        assert!(segwit > 0, "some transactions carry witnesses");
    }

    #[test]
    fn malformed_blocks() {
        let raw = serialize(&blocks()[0]);
        assert_eq!(
            block_txids(&raw[..79]).unwrap_err(),
            "truncated at byte 0 of 79"
        );
        let mut longer = raw.clone();
        longer.push(0);
        assert_eq!(
            block_txids(&longer).unwrap_err(),
            "1 bytes after the last transaction"
        );
        // The first transaction's input count made the segwit marker, with a bad flag.
        let mut flagged = raw.clone();
        flagged[81 + 4] = 0;
        flagged[81 + 5] = 2;
        assert_eq!(
            block_txids(&flagged).unwrap_err(),
            "unsupported segwit flag 2"
        );
        // A huge count ends at the data's end, not in an allocation.
        let mut counted = raw[..80].to_vec();
        counted.extend([0xff; 9]);
        assert!(block_txids(&counted).is_err());
    }

    proptest! {
        #[test]
        fn never_panics_on_damaged_blocks(cut in 0usize..4000, at in 0usize..4000, byte: u8) {
            let raw = serialize(&blocks()[1]);
            let mut damaged = raw[..cut.min(raw.len())].to_vec();
            if let Some(b) = damaged.get_mut(at) {
                *b = byte;
            }
            let _ = block_txids(&damaged);
        }
    }
}
