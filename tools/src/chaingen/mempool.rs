//! The generator's unconfirmed transactions: kept in creation (hence topological) order with
//! their unspent outputs, grouped in clusters so mempool chains stay within Core's limits.

use std::collections::{HashMap, HashSet};

use bitcoin::{Transaction, Txid};

use super::coins::Coin;
use super::rng::Rng;

/// Cluster of transactions made inside `next_block`: mined at once, so no policy limit applies
/// and `mempool_tx` never spends from them.
pub(crate) const UNTRACKED: u32 = u32::MAX;
/// Core 31 allows clusters of 64 transactions and 101 kvB; older releases 25 ancestors and
/// descendants. A coin is offered for a relayable spend only while its cluster is below these
/// (each such spend adds one transaction), which keeps every chain well within both.
const MAX_CLUSTER_TXS: u32 = 10;
const MAX_CLUSTER_VSIZE: u64 = 20_000;

#[derive(Clone)]
pub(crate) struct PendingTx {
    pub(crate) tx: Transaction,
    pub(crate) txid: Txid,
    /// The coins it spends, so eviction can give them back.
    pub(crate) spent: Vec<Coin>,
    pub(crate) fee: u64,
    pub(crate) weight: u64,
    pub(crate) sigop_cost: u64,
    cluster: u32,
}

#[derive(Clone, Copy, Default)]
struct ClusterSize {
    txs: u32,
    vsize: u64,
}

#[derive(Clone)]
struct PendingCoin {
    coin: Coin,
    cluster: u32,
}

#[derive(Clone, Default)]
pub(crate) struct Mempool {
    txs: Vec<PendingTx>,
    coins: Vec<PendingCoin>,
    clusters: HashMap<u32, ClusterSize>,
    next_cluster: u32,
}

impl Mempool {
    pub(crate) fn txs(&self) -> &[PendingTx] {
        &self.txs
    }

    pub(crate) fn coin_count(&self) -> usize {
        self.coins.len()
    }

    /// Takes an unconfirmed coin. With `policy`, only from clusters that still have room, so a
    /// transaction spending it can be relayed. Returns the coin and its cluster.
    pub(crate) fn take(&mut self, rng: &mut Rng, policy: bool) -> Option<(Coin, u32)> {
        if self.coins.is_empty() {
            return None;
        }
        for _ in 0..8 {
            let index = rng.below(self.coins.len() as u64) as usize;
            let cluster = self.coins[index].cluster;
            if policy && !self.has_room(cluster) {
                continue;
            }
            let taken = self.coins.swap_remove(index);
            return Some((taken.coin, taken.cluster));
        }
        None
    }

    fn has_room(&self, cluster: u32) -> bool {
        if cluster == UNTRACKED {
            return false;
        }
        let size = self.clusters.get(&cluster).copied().unwrap_or_default();
        size.txs < MAX_CLUSTER_TXS && size.vsize < MAX_CLUSTER_VSIZE
    }

    /// Gives back a coin taken by `take` that ended up unused.
    pub(crate) fn untake(&mut self, coin: Coin, cluster: u32) {
        self.coins.push(PendingCoin { coin, cluster });
    }

    /// Adds a transaction spending confirmed coins and unconfirmed ones from `parents`
    /// (clusters); `outputs` are its outputs the wallet may spend later.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add(
        &mut self,
        tx: Transaction,
        spent: Vec<Coin>,
        parents: &[u32],
        tracked: bool,
        fee: u64,
        sigop_cost: u64,
        outputs: Vec<Coin>,
    ) {
        let weight = tx.weight().to_wu();
        let vsize = weight.div_ceil(4);
        let cluster = if !tracked || parents.contains(&UNTRACKED) {
            UNTRACKED
        } else {
            let target = parents.iter().copied().min().unwrap_or_else(|| {
                self.next_cluster += 1;
                self.next_cluster
            });
            target
        };
        let mut size = self.clusters.remove(&cluster).unwrap_or_default();
        for &parent in parents {
            if parent != cluster {
                let merged = self.clusters.remove(&parent).unwrap_or_default();
                size.txs += merged.txs;
                size.vsize += merged.vsize;
                self.relabel(parent, cluster);
            }
        }
        size.txs += 1;
        size.vsize += vsize;
        if cluster != UNTRACKED {
            self.clusters.insert(cluster, size);
        }
        let txid = tx.compute_txid();
        self.coins.extend(
            outputs
                .into_iter()
                .map(|coin| PendingCoin { coin, cluster }),
        );
        self.txs.push(PendingTx {
            tx,
            txid,
            spent,
            fee,
            weight,
            sigop_cost,
            cluster,
        });
    }

    fn relabel(&mut self, from: u32, to: u32) {
        for tx in &mut self.txs {
            if tx.cluster == from {
                tx.cluster = to;
            }
        }
        for coin in &mut self.coins {
            if coin.cluster == from {
                coin.cluster = to;
            }
        }
    }

    /// Removes the first `count` transactions (they were mined) and returns them with their
    /// still unspent outputs, which are now confirmed.
    pub(crate) fn remove_mined(&mut self, count: usize) -> (Vec<PendingTx>, Vec<Coin>) {
        let mined: Vec<PendingTx> = self.txs.drain(..count).collect();
        let ids: HashSet<Txid> = mined.iter().map(|tx| tx.txid).collect();
        let (confirmed, still): (Vec<_>, Vec<_>) = self
            .coins
            .drain(..)
            .partition(|c| ids.contains(&c.coin.outpoint.txid));
        self.coins = still;
        if self.txs.is_empty() {
            self.clusters.clear();
        }
        (mined, confirmed.into_iter().map(|c| c.coin).collect())
    }

    /// Forgets `txid` and every pending descendant. Coins they spent that are not outputs of
    /// evicted transactions become spendable again: unconfirmed ones are put back here,
    /// confirmed ones are returned. None if `txid` is not pending.
    pub(crate) fn evict(&mut self, txid: &Txid) -> Option<Vec<Coin>> {
        let start = self.txs.iter().position(|tx| tx.txid == *txid)?;
        let mut evicted: HashSet<Txid> = HashSet::from([*txid]);
        for tx in &self.txs[start + 1..] {
            if tx.spent.iter().any(|c| evicted.contains(&c.outpoint.txid)) {
                evicted.insert(tx.txid);
            }
        }
        let (gone, kept): (Vec<_>, Vec<_>) = self
            .txs
            .drain(..)
            .partition(|tx| evicted.contains(&tx.txid));
        self.txs = kept;
        self.coins
            .retain(|c| !evicted.contains(&c.coin.outpoint.txid));
        let cluster_of: HashMap<Txid, u32> =
            self.txs.iter().map(|tx| (tx.txid, tx.cluster)).collect();
        let mut confirmed = Vec::new();
        for coin in gone.into_iter().flat_map(|tx| tx.spent) {
            if evicted.contains(&coin.outpoint.txid) {
                continue;
            }
            match cluster_of.get(&coin.outpoint.txid) {
                Some(&cluster) => self.coins.push(PendingCoin { coin, cluster }),
                None => confirmed.push(coin),
            }
        }
        Some(confirmed)
    }
}
