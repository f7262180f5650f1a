//! Read views of one script over a store snapshot plus the mempool overlay: confirmed
//! history with heights, unspent outputs, balance. Also the read interface the mempool
//! mirror provides ([`MempoolView`]), with the always-empty view used until it exists.

use std::collections::HashSet;
use std::fmt;

use ferrum_storage::{Hash32, HashX, Snapshot};

use crate::txids::{TxidError, TxidSource};

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
    /// A lean index's txids could not be had from the node.
    Txids(TxidError),
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
            QueryError::Txids(e) => write!(f, "{e}"),
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

impl From<TxidError> for QueryError {
    fn from(e: TxidError) -> Self {
        match e {
            TxidError::Store(e) => QueryError::Store(e),
            other => QueryError::Txids(other),
        }
    }
}

/// The confirmed history of `hashx` in chain order, txids from `txids`. With a `limit`, a
/// history of that many entries or more is refused before any txid is read.
pub fn confirmed_history(
    snap: &Snapshot,
    txids: &dyn TxidSource,
    hashx: &HashX,
    limit: Option<usize>,
) -> Result<Vec<ConfirmedTx>, QueryError> {
    let txnums = snap.history(hashx)?;
    if let Some(limit) = limit {
        if txnums.len() >= limit {
            return Err(QueryError::HistoryTooLarge { limit });
        }
    }
    let heights = snap.tx_heights(&txnums)?;
    Ok(txids
        .txids(snap, &txnums)?
        .into_iter()
        .zip(heights)
        .map(|(txid, height)| ConfirmedTx { txid, height })
        .collect())
}

/// The confirmed unspent outputs of `hashx` in chain order (tx number, then vout), txids
/// from `txids`.
pub fn confirmed_unspent(
    snap: &Snapshot,
    txids: &dyn TxidSource,
    hashx: &HashX,
) -> Result<Vec<Unspent>, QueryError> {
    let utxos = snap.utxos(hashx)?;
    let txnums: Vec<u64> = utxos.iter().map(|u| u.txnum).collect();
    let txids = txids.txids(snap, &txnums)?;
    let heights = snap.tx_heights(&txnums)?;
    Ok(utxos
        .iter()
        .zip(txids.into_iter().zip(heights))
        .map(|(u, (txid, height))| Unspent {
            txid,
            vout: u.vout,
            height,
            value: u.value,
        })
        .collect())
}

/// `listunspent`: confirmed outputs in chain order, then mempool outputs at height 0,
/// leaving out any spent in the mempool. Also the count before that filter (the cost base).
pub fn unspent(
    snap: &Snapshot,
    txids: &dyn TxidSource,
    mempool: &dyn MempoolView,
    hashx: &HashX,
) -> Result<(Vec<Unspent>, usize), QueryError> {
    let mut all = confirmed_unspent(snap, txids, hashx)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txids::StoreTxids;
    use ferrum_storage::{BlockData, Options, Store, TxData};

    const K: HashX = [7; 11];

    fn t(n: u8) -> Hash32 {
        [n; 32]
    }

    /// Blocks of 1, 3 and 2 txs; K is paid by txs 1 (vouts 0 and 2) and 4, and spent by
    /// tx 5 (tx 1's vout 2).
    fn store(dir: &std::path::Path) -> Store {
        let tx = |n: u8, spends: Vec<(Hash32, u32)>, outputs: Vec<Option<(HashX, u64)>>| TxData {
            txid: t(n),
            spends,
            outputs,
        };
        let other = Some(([9; 11], 1));
        let blocks = [
            vec![tx(0, vec![], vec![None])],
            vec![
                tx(1, vec![], vec![Some((K, 10)), other, Some((K, 20))]),
                tx(2, vec![], vec![other]),
                tx(3, vec![], vec![other]),
            ],
            vec![
                tx(4, vec![], vec![other, Some((K, 40))]),
                tx(5, vec![(t(1), 2)], vec![other]),
            ],
        ];
        let mut store = Store::open(dir, Options::default()).unwrap();
        for (h, txs) in blocks.into_iter().enumerate() {
            store
                .apply_block(&BlockData {
                    header: [h as u8; 80],
                    txs,
                })
                .unwrap();
        }
        store.commit().unwrap();
        store
    }

    /// A mempool tx spending tx 4's output of K and paying K 3 at vout 1.
    struct OneSpend;

    impl MempoolView for OneSpend {
        fn history(&self, _: &HashX) -> Vec<MempoolTx> {
            vec![MempoolTx {
                txid: t(50),
                fee: 1,
                unconfirmed_inputs: false,
            }]
        }
        fn outputs(&self, _: &HashX) -> Vec<MempoolOutput> {
            vec![MempoolOutput {
                txid: t(50),
                vout: 1,
                value: 3,
            }]
        }
        fn spends(&self, _: &HashX) -> HashSet<(Hash32, u32)> {
            HashSet::from([(t(4), 1)])
        }
        fn balance_delta(&self, _: &HashX) -> i64 {
            3 - 40
        }
        fn fee_histogram(&self) -> Vec<(f64, u64)> {
            Vec::new()
        }
    }

    #[test]
    fn views_of_one_script() {
        let dir = tempfile::tempdir().unwrap();
        let snap = store(dir.path()).snapshot();
        let history = confirmed_history(&snap, &StoreTxids, &K, None).unwrap();
        let expect = |n: u8, height: u32| ConfirmedTx { txid: t(n), height };
        assert_eq!(history, [expect(1, 1), expect(4, 2), expect(5, 2)]);
        assert!(matches!(
            confirmed_history(&snap, &StoreTxids, &K, Some(3)),
            Err(QueryError::HistoryTooLarge { limit: 3 })
        ));
        assert_eq!(
            confirmed_history(&snap, &StoreTxids, &K, Some(4))
                .unwrap()
                .len(),
            3
        );
        let unspent = |n: u8, vout: u32, height: u32, value: u64| Unspent {
            txid: t(n),
            vout,
            height,
            value,
        };
        assert_eq!(
            confirmed_unspent(&snap, &StoreTxids, &K).unwrap(),
            [unspent(1, 0, 1, 10), unspent(4, 1, 2, 40)]
        );
        // Mempool: tx 4's output is spent (left out), the new output comes last at height 0.
        let (listed, considered) = super::unspent(&snap, &StoreTxids, &OneSpend, &K).unwrap();
        assert_eq!(listed, [unspent(1, 0, 1, 10), unspent(50, 1, 0, 3)]);
        assert_eq!(considered, 3);
        let b = balance(&snap, &OneSpend, &K).unwrap();
        assert_eq!(
            b,
            Balance {
                confirmed: 50,
                unconfirmed: -37,
                outputs: 2
            }
        );
        assert_eq!(
            balance(&snap, &EmptyMempool, &[1; 11]).unwrap(),
            Balance {
                confirmed: 0,
                unconfirmed: 0,
                outputs: 0
            }
        );
        assert_eq!(
            MempoolTx {
                txid: t(1),
                fee: 0,
                unconfirmed_inputs: true
            }
            .height(),
            -1
        );
    }
}
