//! Consistent read-only views of the committed store, and the handle other threads use to get
//! the latest one. A snapshot holds `Arc`s to every file it reads, so compaction and rollback
//! never pull bytes from under it; array segments are mapped up to the length of its commit.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use crate::array::ArrayView;
use crate::error::{Error, Result};
use crate::history::HistoryView;
use crate::txindex::TxIndexView;
use crate::utxo::{Utxo, UtxoView};
use crate::{Hash32, HashX};

pub(crate) struct SnapshotParts {
    pub blocks: u64,
    pub tx_count: u64,
    pub headers: ArrayView,
    pub counts: ArrayView,
    pub txhashes: ArrayView,
    pub txindex: TxIndexView,
    pub utxo: UtxoView,
    pub history: HistoryView,
    pub meta: Arc<BTreeMap<String, Vec<u8>>>,
    pub stores_txids: bool,
}

/// An immutable view of one commit. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Snapshot(Arc<SnapshotParts>);

impl Snapshot {
    pub(crate) fn new(parts: SnapshotParts) -> Snapshot {
        Snapshot(Arc::new(parts))
    }

    /// Height of the last block (None = empty store).
    pub fn height(&self) -> Option<u32> {
        self.0.blocks.checked_sub(1).map(|h| h as u32)
    }

    pub fn tx_count(&self) -> u64 {
        self.0.tx_count
    }

    /// Whether the store keeps txids (full mode); without them (lean mode) `txid` and `txids`
    /// fail and the caller must get txids elsewhere (from the blocks).
    pub fn stores_txids(&self) -> bool {
        self.0.stores_txids
    }

    fn check_txids_stored(&self) -> Result<()> {
        if self.0.stores_txids {
            Ok(())
        } else {
            Err(Error::Invalid("txids are not stored (lean index)".into()))
        }
    }

    fn check_height(&self, height: u32) -> Result<()> {
        if u64::from(height) < self.0.blocks {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "no block at height {height}: the store holds {} blocks",
                self.0.blocks
            )))
        }
    }

    fn check_txnum(&self, txnum: u64) -> Result<()> {
        if txnum < self.0.tx_count {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "no transaction number {txnum}: the store holds {}",
                self.0.tx_count
            )))
        }
    }

    pub fn header(&self, height: u32) -> Result<[u8; 80]> {
        self.check_height(height)?;
        let h = self.0.headers.get(u64::from(height))?;
        Ok(h.try_into().expect("80-byte records"))
    }

    /// Tx count after block `height` (cumulative).
    fn count(&self, height: u64) -> Result<u64> {
        let c = self.0.counts.get(height)?;
        Ok(u64::from_le_bytes(c.try_into().expect("8-byte records")))
    }

    /// Tx numbers of the block at `height`.
    pub fn block_txs(&self, height: u32) -> Result<Range<u64>> {
        self.check_height(height)?;
        let start = match height {
            0 => 0,
            h => self.count(u64::from(h) - 1)?,
        };
        let end = self.count(u64::from(height))?;
        if start > end || end > self.0.tx_count {
            return Err(Error::Invalid(format!(
                "tx counts out of order at block {height}"
            )));
        }
        Ok(start..end)
    }

    pub fn txid(&self, txnum: u64) -> Result<Hash32> {
        self.check_txids_stored()?;
        self.check_txnum(txnum)?;
        Ok(self
            .0
            .txhashes
            .get(txnum)?
            .try_into()
            .expect("32-byte records"))
    }

    /// The txids of `txnums`, in order. Ascending tx numbers read each hash-array chunk once.
    pub fn txids(&self, txnums: &[u64]) -> Result<Vec<Hash32>> {
        self.check_txids_stored()?;
        for &txnum in txnums {
            self.check_txnum(txnum)?;
        }
        let mut out = Vec::with_capacity(txnums.len());
        self.0.txhashes.get_many(txnums, |record| {
            out.push(record.try_into().expect("32-byte records"))
        })?;
        Ok(out)
    }

    /// Height of the block holding tx `txnum`: binary search on the cumulative counts.
    pub fn tx_height(&self, txnum: u64) -> Result<u32> {
        self.check_txnum(txnum)?;
        self.block_above(0, self.0.blocks, txnum)
    }

    /// The heights of the blocks holding `txnums`, in order. Ascending tx numbers walk the
    /// blocks forward, galloping from the last one found rather than searching the whole chain.
    pub fn tx_heights(&self, txnums: &[u64]) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(txnums.len());
        let (mut block, mut height) = (0..0, 0u32);
        for &txnum in txnums {
            if !block.contains(&txnum) {
                self.check_txnum(txnum)?;
                height = if block.end > 0 && txnum >= block.end {
                    self.block_after(u64::from(height) + 1, txnum)?
                } else {
                    self.block_above(0, self.0.blocks, txnum)?
                };
                block = self.block_txs(height)?;
            }
            out.push(height);
        }
        Ok(out)
    }

    /// The first block from `lo` on whose cumulative count exceeds `txnum`, found by
    /// doubling steps from `lo` and then a binary search.
    fn block_after(&self, mut lo: u64, txnum: u64) -> Result<u32> {
        let mut step = 1;
        loop {
            let probe = lo + step - 1;
            if probe >= self.0.blocks || self.count(probe)? > txnum {
                return self.block_above(lo, (probe + 1).min(self.0.blocks), txnum);
            }
            lo = probe + 1;
            step *= 2;
        }
    }

    /// The first block in `lo..hi` whose cumulative count exceeds `txnum` (`txnum` must be
    /// below the store's tx count).
    fn block_above(&self, mut lo: u64, mut hi: u64, txnum: u64) -> Result<u32> {
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.count(mid)? > txnum {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        if lo >= self.0.blocks {
            return Err(Error::Invalid(format!(
                "tx counts end below transaction {txnum}"
            )));
        }
        Ok(lo as u32)
    }

    /// Tx number of `txid` (the latest, should a txid repeat), if the tx has unspent outputs;
    /// a tx whose outputs are all spent may or may not be found.
    pub(crate) fn find_tx(&self, txid: &Hash32) -> Result<Option<u64>> {
        let hashes = self.0.stores_txids.then_some(&self.0.txhashes);
        find_committed(&self.0.txindex, hashes, self.0.tx_count, txid)
    }

    /// The unspent output `txid:vout` with its script key, if there is one.
    pub fn unspent(&self, txid: &Hash32, vout: u32) -> Result<Option<(HashX, Utxo)>> {
        let Some(txnum) = self.find_tx(txid)? else {
            return Ok(None);
        };
        Ok(self
            .utxo(txnum, vout)?
            .map(|(hashx, value)| (hashx, Utxo { txnum, vout, value })))
    }

    pub fn history(&self, hashx: &HashX) -> Result<Vec<u64>> {
        self.0.history.get(hashx)
    }

    /// The tail of `history(hashx)`: its tx numbers >= `from`, reading only what may hold them.
    pub fn history_since(&self, hashx: &HashX, from: u64) -> Result<Vec<u64>> {
        self.0.history.get_since(hashx, from)
    }

    pub fn utxos(&self, hashx: &HashX) -> Result<Vec<Utxo>> {
        self.0.utxo.list(hashx)
    }

    pub fn utxo(&self, txnum: u64, vout: u32) -> Result<Option<(HashX, u64)>> {
        self.0.utxo.get(txnum, vout)
    }

    pub fn meta(&self, key: &str) -> Option<Vec<u8>> {
        self.0.meta.get(key).cloned()
    }

    /// Every unspent output, by (key, tx number, vout).
    pub fn for_each_utxo(&self, mut f: impl FnMut(&HashX, &Utxo)) -> Result<()> {
        self.0.utxo.for_each(&mut f)
    }

    /// Every key's history, by key.
    pub fn for_each_history(&self, mut f: impl FnMut(&HashX, &[u64])) -> Result<()> {
        self.0.history.for_each(&mut f)
    }
}

/// Looks `txid` up in committed index runs, verifying candidates against the hash array
/// (`hashes`; `None` in a lean store, whose runs hold whole txids and match exactly).
pub(crate) fn find_committed(
    index: &TxIndexView,
    hashes: Option<&ArrayView>,
    tx_count: u64,
    txid: &Hash32,
) -> Result<Option<u64>> {
    let mut best = None;
    for txnum in index.candidates(txid)? {
        let matches = match hashes {
            Some(hashes) => txnum < tx_count && hashes.get(txnum)? == txid,
            None => txnum < tx_count,
        };
        if matches && best < Some(txnum) {
            best = Some(txnum);
        }
    }
    Ok(best)
}

/// A cheap handle other threads keep to get the latest committed snapshot.
#[derive(Clone)]
pub struct Reader(pub(crate) Arc<RwLock<Snapshot>>);

impl Reader {
    pub fn snapshot(&self) -> Snapshot {
        // A poisoned lock still holds a complete snapshot: publishing is one assignment.
        match self.0.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}
