//! What the caller tells the store about one block: opaque header bytes and, per transaction,
//! its id, the outpoints it spends and the keyed outputs it creates.

use crate::{Hash32, HashX};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockData {
    pub header: [u8; 80],
    /// In block order; tx numbers are assigned sequentially.
    pub txs: Vec<TxData>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxData {
    pub txid: Hash32,
    /// Outpoints spent (previous txid, vout); empty for a coinbase.
    pub spends: Vec<(Hash32, u32)>,
    /// Per vout: (script key, value); `None` = unspendable, not indexed.
    pub outputs: Vec<Option<(HashX, u64)>>,
}

impl BlockData {
    /// The txids of the outpoints this block spends, in input order: what a lean store's
    /// `Store::rollback` is given for the block.
    pub fn spent_txids(&self) -> Vec<Hash32> {
        self.txs
            .iter()
            .flat_map(|tx| tx.spends.iter().map(|(txid, _)| *txid))
            .collect()
    }
}
