//! Read views of one script over a store snapshot plus the mempool overlay: confirmed
//! history with heights, unspent outputs, balance. Also the read interface the mempool
//! mirror provides ([`MempoolView`]), with the always-empty view used until it exists.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

use ferrum_storage::{Hash32, HashX, Snapshot};

/// A confirmed transaction of a script's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfirmedTx {
    pub txid: Hash32,
    pub height: u32,
}

/// A mempool transaction touching a script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MempoolTx {
    pub txid: Hash32,
    /// Fee paid, in satoshis.
    pub fee: u64,
    /// Some input spends an output of another mempool transaction.
    pub unconfirmed_inputs: bool,
}

impl MempoolTx {
    /// The protocol's height for it: 0, or -1 with unconfirmed inputs.
    pub fn height(&self) -> i32 {
        -i32::from(self.unconfirmed_inputs)
    }
}

/// An output of a mempool transaction paying to a script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MempoolOutput {
    pub txid: Hash32,
    pub vout: u32,
    pub value: u64,
}

/// An unspent output as `listunspent` gives it (height 0 for a mempool output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unspent {
    pub txid: Hash32,
    pub vout: u32,
    pub height: u32,
    pub value: u64,
}

/// What the protocol methods read from the mempool mirror, with ElectrumX's semantics.
/// Each call sees one consistent mempool state.
pub trait MempoolView: Send + Sync + 'static {
    /// Transactions paying to or spending from `hashx`, in canonical order: height 0
    /// before -1, then txid as displayed in hex.
    fn history(&self, hashx: &HashX) -> Vec<MempoolTx>;
    /// Outputs paying to `hashx`, spent in the mempool or not, ordered by (txid as
    /// displayed, vout).
    fn outputs(&self, hashx: &HashX) -> Vec<MempoolOutput>;
    /// Every outpoint spent by a mempool transaction touching `hashx` (ElectrumX's
    /// `potential_spends`): all actual spends of its outputs are among them.
    fn spends(&self, hashx: &HashX) -> HashSet<(Hash32, u32)>;
    /// Mempool outputs to `hashx` minus the values its mempool spends take from it.
    fn balance_delta(&self, hashx: &HashX) -> i64;
    /// The compact fee histogram: (fee rate in sat/vB, total vsize) pairs, highest rate first.
    fn fee_histogram(&self) -> Vec<(f64, u64)>;
}

/// The mempool as seen before the mempool mirror runs: always empty. The mempool mirror
/// replaces it with a view of the node's mempool; nothing else changes in the methods.
pub struct EmptyMempool;

impl MempoolView for EmptyMempool {
    fn history(&self, _hashx: &HashX) -> Vec<MempoolTx> {
        Vec::new()
    }
    fn outputs(&self, _hashx: &HashX) -> Vec<MempoolOutput> {
        Vec::new()
    }
    fn spends(&self, _hashx: &HashX) -> HashSet<(Hash32, u32)> {
        HashSet::new()
    }
    fn balance_delta(&self, _hashx: &HashX) -> i64 {
        0
    }
    fn fee_histogram(&self) -> Vec<(f64, u64)> {
        Vec::new()
    }
}

#[derive(Debug)]
pub enum QueryError {
    Store(ferrum_storage::Error),
    /// The confirmed history has at least the limit's entries (ElectrumX's limit is on
    /// what fits in a response).
    HistoryTooLarge {
        limit: usize,
    },
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Store(e) => write!(f, "{e}"),
            QueryError::HistoryTooLarge { limit } => {
                write!(f, "history of {limit} entries or more")
            }
        }
    }
}

impl From<ferrum_storage::Error> for QueryError {
    fn from(e: ferrum_storage::Error) -> Self {
        QueryError::Store(e)
    }
}

/// Heights of ascending tx numbers, with one binary search per block rather than per tx.
struct HeightWalk<'a> {
    snap: &'a Snapshot,
    block: Range<u64>,
    height: u32,
}

impl<'a> HeightWalk<'a> {
    fn new(snap: &'a Snapshot) -> HeightWalk<'a> {
        HeightWalk {
            snap,
            block: 0..0,
            height: 0,
        }
    }

    fn height(&mut self, txnum: u64) -> Result<u32, ferrum_storage::Error> {
        if !self.block.contains(&txnum) {
            self.height = self.snap.tx_height(txnum)?;
            self.block = self.snap.block_txs(self.height)?;
        }
        Ok(self.height)
    }
}

/// The confirmed history of `hashx` in chain order. With a `limit`, a history of that many
/// entries or more is refused before any txid is read.
pub fn confirmed_history(
    snap: &Snapshot,
    hashx: &HashX,
    limit: Option<usize>,
) -> Result<Vec<ConfirmedTx>, QueryError> {
    let txnums = snap.history(hashx)?;
    if let Some(limit) = limit {
        if txnums.len() >= limit {
            return Err(QueryError::HistoryTooLarge { limit });
        }
    }
    let mut walk = HeightWalk::new(snap);
    let mut out = Vec::with_capacity(txnums.len());
    for txnum in txnums {
        out.push(ConfirmedTx {
            txid: snap.txid(txnum)?,
            height: walk.height(txnum)?,
        });
    }
    Ok(out)
}

/// The confirmed unspent outputs of `hashx` in chain order (tx number, then vout).
pub fn confirmed_unspent(snap: &Snapshot, hashx: &HashX) -> Result<Vec<Unspent>, QueryError> {
    let utxos = snap.utxos(hashx)?;
    let mut walk = HeightWalk::new(snap);
    let mut out = Vec::with_capacity(utxos.len());
    for u in utxos {
        out.push(Unspent {
            txid: snap.txid(u.txnum)?,
            vout: u.vout,
            height: walk.height(u.txnum)?,
            value: u.value,
        });
    }
    Ok(out)
}

/// `listunspent`: confirmed outputs in chain order, then mempool outputs at height 0,
/// leaving out any spent in the mempool. Also the count before that filter (the cost base).
pub fn unspent(
    snap: &Snapshot,
    mempool: &dyn MempoolView,
    hashx: &HashX,
) -> Result<(Vec<Unspent>, usize), QueryError> {
    let mut all = confirmed_unspent(snap, hashx)?;
    all.extend(mempool.outputs(hashx).into_iter().map(|o| Unspent {
        txid: o.txid,
        vout: o.vout,
        height: 0,
        value: o.value,
    }));
    let considered = all.len();
    let spends = mempool.spends(hashx);
    if !spends.is_empty() {
        all.retain(|u| !spends.contains(&(u.txid, u.vout)));
    }
    Ok((all, considered))
}

/// A script's balance: `confirmed` sums its confirmed unspent outputs, mempool spends
/// notwithstanding; `unconfirmed` is the mempool's net effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    pub confirmed: u64,
    pub unconfirmed: i64,
    /// Confirmed outputs counted (the cost base).
    pub outputs: usize,
}

pub fn balance(
    snap: &Snapshot,
    mempool: &dyn MempoolView,
    hashx: &HashX,
) -> Result<Balance, QueryError> {
    let utxos = snap.utxos(hashx)?;
    let confirmed = utxos
        .iter()
        .map(|u| u.value)
        .fold(0u64, u64::saturating_add);
    Ok(Balance {
        confirmed,
        unconfirmed: mempool.balance_delta(hashx),
        outputs: utxos.len(),
    })
}
