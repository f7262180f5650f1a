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
