//! The emulated mempool: Core's acceptance checks that a test can hit (missing or spent inputs,
//! immature coinbase, fees, full-RBF replacement, max fee rate), ancestry and Core's entry JSON.
//! Scripts and signatures are not verified.

use std::collections::{BTreeSet, HashMap};

use bitcoin::{OutPoint, Transaction, Txid, Wtxid};
use serde_json::{json, Value};

use super::chain::Chain;
use super::txjson::{amount, format_money, Prevout};

/// Core's `-minrelaytxfee` and `-incrementalrelayfee` defaults, in sat per 1000 vbytes.
pub const MIN_RELAY_FEE: u64 = 100;
/// Core's default `maxfeerate` for sendrawtransaction and testmempoolaccept (0.10 BTC/kvB).
pub const DEFAULT_MAX_FEE_RATE: u64 = 10_000_000;
const COINBASE_MATURITY: u32 = 100;

/// Why a transaction was not accepted, mapped onto each RPC's own wording by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// An input is neither an unspent confirmed output nor a mempool output.
    MissingInputs,
    /// Some output of the transaction is already confirmed and unspent.
    AlreadyConfirmed,
    /// The same txid is already in the mempool.
    AlreadyInMempool,
    /// The fee is above the caller's maximum fee rate.
    MaxFeeExceeded,
    /// Any other policy or consensus failure: Core's reject reason and debug message.
    Invalid {
        reason: String,
        debug: Option<String>,
    },
}

impl Rejection {
    fn invalid(reason: &str, debug: impl Into<Option<String>>) -> Self {
        Rejection::Invalid {
            reason: reason.into(),
            debug: debug.into(),
        }
    }

    /// Core's `TxValidationState::ToString()`: "reason, debug".
    pub fn state_string(&self) -> String {
        match self {
            Rejection::MissingInputs => "bad-txns-inputs-missingorspent".into(),
            Rejection::AlreadyConfirmed => "txn-already-known".into(),
            Rejection::AlreadyInMempool => "txn-already-in-mempool".into(),
            Rejection::MaxFeeExceeded => "max-fee-exceeded".into(),
            Rejection::Invalid {
                reason,
                debug: Some(d),
            } => format!("{reason}, {d}"),
            Rejection::Invalid {
                reason,
                debug: None,
            } => reason.clone(),
        }
    }
}

/// A transaction in the mempool.
pub struct Entry {
    pub tx: Transaction,
    pub txid: Txid,
    pub wtxid: Wtxid,
    pub vsize: u64,
    pub weight: u64,
    pub fee: u64,
    pub time: u64,
    /// Chain height when it entered.
    pub height: u32,
    /// Submitted over RPC (Core reports it unbroadcast, having no peers); false for generated.
    pub unbroadcast: bool,
}

/// A successful check: what the transaction pays and what it would replace.
pub struct Admission {
    pub fee: u64,
    pub vsize: u64,
    pub weight: u64,
    /// Conflicting mempool transactions and their descendants.
    pub replaced: Vec<Txid>,
}

pub struct Mempool {
    entries: HashMap<Txid, Entry>,
    order: Vec<Txid>,
    spends: HashMap<OutPoint, Txid>,
    /// Core's mempool sequence: starts at 1, one more per addition or removal.
    sequence: u64,
}

impl Default for Mempool {
    fn default() -> Self {
        Mempool {
            entries: HashMap::new(),
            order: Vec::new(),
            spends: HashMap::new(),
            sequence: 1,
        }
    }
}

impl Mempool {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&self, txid: &Txid) -> Option<&Entry> {
        self.entries.get(txid)
    }

    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Entries in arrival order (parents before children: what mining uses).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.order.iter().filter_map(|t| self.entries.get(t))
    }

    /// Entries as Core lists them: by mining score, highest fee rate first, parents before
    /// children (each transaction counts as its own chunk here).
    pub fn by_score(&self) -> Vec<&Entry> {
        use std::cmp::Ordering;
        use std::collections::BinaryHeap;
        struct Ready<'a>(&'a Entry);
        impl Ready<'_> {
            fn key(&self) -> (u128, std::cmp::Reverse<Txid>) {
                // fee / vsize compared exactly as fee * 2^64 / vsize.
                let rate = ((self.0.fee as u128) << 64) / self.0.vsize.max(1) as u128;
                (rate, std::cmp::Reverse(self.0.txid))
            }
        }
        impl PartialEq for Ready<'_> {
            fn eq(&self, other: &Self) -> bool {
                self.key() == other.key()
            }
        }
        impl Eq for Ready<'_> {}
        impl PartialOrd for Ready<'_> {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for Ready<'_> {
            fn cmp(&self, other: &Self) -> Ordering {
                self.key().cmp(&other.key())
            }
        }
        let mut waiting: HashMap<Txid, usize> = HashMap::new();
        let mut heap = BinaryHeap::new();
        for e in self.entries.values() {
            match self.parents(e).len() {
                0 => heap.push(Ready(e)),
                n => {
                    waiting.insert(e.txid, n);
                }
            }
        }
        let mut out = Vec::with_capacity(self.entries.len());
        while let Some(Ready(e)) = heap.pop() {
            out.push(e);
            for child in self.children(e) {
                if let Some(n) = waiting.get_mut(&child) {
                    *n -= 1;
                    if *n == 0 {
                        waiting.remove(&child);
                        if let Some(c) = self.entries.get(&child) {
                            heap.push(Ready(c));
                        }
                    }
                }
            }
        }
        out
    }

    /// Runs Core's acceptance checks without changing anything.
    pub fn check(
        &self,
        tx: &Transaction,
        chain: &Chain,
        max_fee_rate: Option<u64>,
    ) -> Result<Admission, Rejection> {
        check_transaction(tx)?;
        let txid = tx.compute_txid();
        if self.entries.contains_key(&txid) {
            return Err(Rejection::AlreadyInMempool);
        }
        if chain.has_unspent_output(tx) {
            return Err(Rejection::AlreadyConfirmed);
        }
        let spend_height = chain.height().map_or(0, |h| h + 1);
        let mut conflicts = BTreeSet::new();
        let mut prevouts = Vec::with_capacity(tx.input.len());
        for input in &tx.input {
            let op = input.previous_output;
            if let Some(spender) = self.spends.get(&op) {
                conflicts.insert(*spender);
            }
            let prev = match self.entries.get(&op.txid) {
                Some(parent) => parent.tx.output.get(op.vout as usize).map(|o| Prevout {
                    txout: o.clone(),
                    height: u32::MAX,
                    coinbase: false,
                }),
                None => chain.unspent(&op),
            };
            prevouts.push(prev.ok_or(Rejection::MissingInputs)?);
        }
        for prev in &prevouts {
            if prev.coinbase && spend_height - prev.height < COINBASE_MATURITY {
                let depth = spend_height - prev.height;
                return Err(Rejection::invalid(
                    "bad-txns-premature-spend-of-coinbase",
                    format!("tried to spend coinbase at depth {depth}"),
                ));
            }
        }
        // Both sums are within MAX_MONEY: outputs by check_transaction, inputs by the chain.
        let value_in: u64 = prevouts
            .iter()
            .map(|p| p.txout.value.to_sat())
            .fold(0, u64::saturating_add);
        let value_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        if value_in < value_out {
            return Err(Rejection::invalid(
                "bad-txns-in-belowout",
                format!(
                    "value in ({}) < value out ({})",
                    format_money(value_in as i64),
                    format_money(value_out as i64)
                ),
            ));
        }
        let fee = value_in - value_out;
        let vsize = tx.vsize() as u64;
        let min_fee = MIN_RELAY_FEE * vsize / 1000;
        if fee < min_fee {
            return Err(Rejection::invalid(
                "min relay fee not met",
                format!("{fee} < {min_fee}"),
            ));
        }
        let replaced = self.with_descendants(conflicts.into_iter().collect());
        if !replaced.is_empty() {
            let old_fees: u64 = replaced
                .iter()
                .filter_map(|t| self.entries.get(t))
                .map(|e| e.fee)
                .sum();
            if fee < old_fees {
                return Err(Rejection::invalid(
                    "insufficient fee",
                    format!(
                        "rejecting replacement {txid}, less fees than conflicting txs; {} < {}",
                        format_money(fee as i64),
                        format_money(old_fees as i64)
                    ),
                ));
            }
            let required = MIN_RELAY_FEE * vsize / 1000;
            if fee - old_fees < required {
                return Err(Rejection::invalid(
                    "insufficient fee",
                    format!(
                        "rejecting replacement {txid}, not enough additional fees to relay; {} < {}",
                        format_money((fee - old_fees) as i64),
                        format_money(required as i64)
                    ),
                ));
            }
        }
        if let Some(rate) = max_fee_rate {
            if rate > 0 && fee > rate * vsize / 1000 {
                return Err(Rejection::MaxFeeExceeded);
            }
        }
        Ok(Admission {
            fee,
            vsize,
            weight: tx.weight().to_wu(),
            replaced,
        })
    }

    /// Adds a checked transaction, removing what it replaces.
    pub fn insert(
        &mut self,
        tx: Transaction,
        admission: &Admission,
        height: u32,
        unbroadcast: bool,
    ) {
        for txid in &admission.replaced {
            self.remove_one(txid);
        }
        let txid = tx.compute_txid();
        for input in &tx.input {
            self.spends.insert(input.previous_output, txid);
        }
        let entry = Entry {
            wtxid: tx.compute_wtxid(),
            txid,
            vsize: admission.vsize,
            weight: admission.weight,
            fee: admission.fee,
            time: now(),
            height,
            unbroadcast,
            tx,
        };
        self.entries.insert(txid, entry);
        self.order.push(txid);
        self.sequence += 1;
    }

    /// Removes a transaction and its descendants; returns what was removed.
    pub fn evict(&mut self, txid: &Txid) -> Vec<Txid> {
        if !self.entries.contains_key(txid) {
            return Vec::new();
        }
        let removed = self.with_descendants(vec![*txid]);
        for t in &removed {
            self.remove_one(t);
        }
        removed
    }

    /// Drops what a newly connected block confirmed or conflicts with.
    pub fn remove_for_block(&mut self, txs: &[Transaction]) {
        for tx in txs {
            let txid = tx.compute_txid();
            if self.entries.contains_key(&txid) {
                self.remove_one(&txid);
            }
        }
        for tx in txs.iter().skip(1) {
            for input in &tx.input {
                if let Some(spender) = self.spends.get(&input.previous_output).copied() {
                    self.evict(&spender);
                }
            }
        }
    }

    fn remove_one(&mut self, txid: &Txid) {
        if let Some(entry) = self.entries.remove(txid) {
            for input in &entry.tx.input {
                if self.spends.get(&input.previous_output) == Some(txid) {
                    self.spends.remove(&input.previous_output);
                }
            }
            self.order.retain(|t| t != txid);
            self.sequence += 1;
        }
    }

    fn parents(&self, entry: &Entry) -> BTreeSet<Txid> {
        entry
            .tx
            .input
            .iter()
            .map(|i| i.previous_output.txid)
            .filter(|t| self.entries.contains_key(t))
            .collect()
    }

    fn children(&self, entry: &Entry) -> BTreeSet<Txid> {
        (0..entry.tx.output.len() as u32)
            .filter_map(|vout| {
                self.spends
                    .get(&OutPoint {
                        txid: entry.txid,
                        vout,
                    })
                    .copied()
            })
            .collect()
    }

    /// The given transactions plus all their in-mempool descendants.
    fn with_descendants(&self, start: Vec<Txid>) -> Vec<Txid> {
        self.closure(start, |e| self.children(e))
    }

    fn closure(&self, start: Vec<Txid>, next: impl Fn(&Entry) -> BTreeSet<Txid>) -> Vec<Txid> {
        let mut seen: Vec<Txid> = Vec::new();
        let mut todo = start;
        while let Some(t) = todo.pop() {
            if seen.contains(&t) {
                continue;
            }
            if let Some(e) = self.entries.get(&t) {
                todo.extend(next(e));
                seen.push(t);
            }
        }
        seen
    }

    /// Core's `entryToJSON` (getrawmempool verbose, getmempoolentry).
    pub fn entry_json(&self, entry: &Entry) -> Value {
        let ancestors = self.closure(vec![entry.txid], |e| self.parents(e));
        let descendants = self.with_descendants(vec![entry.txid]);
        let sum = |set: &[Txid], f: fn(&Entry) -> u64| -> u64 {
            set.iter().filter_map(|t| self.entries.get(t)).map(f).sum()
        };
        let ids =
            |set: BTreeSet<Txid>| -> Vec<String> { set.iter().map(|t| t.to_string()).collect() };
        json!({
            "vsize": entry.vsize,
            "weight": entry.weight,
            "time": entry.time,
            "height": entry.height,
            "descendantcount": descendants.len(),
            "descendantsize": sum(&descendants, |e| e.vsize),
            "ancestorcount": ancestors.len(),
            "ancestorsize": sum(&ancestors, |e| e.vsize),
            "wtxid": entry.wtxid.to_string(),
            "chunkweight": entry.weight,
            "fees": {
                "base": amount(entry.fee),
                "modified": amount(entry.fee),
                "ancestor": amount(sum(&ancestors, |e| e.fee)),
                "descendant": amount(sum(&descendants, |e| e.fee)),
                "chunk": amount(entry.fee),
            },
            "depends": ids(self.parents(entry)),
            "spentby": ids(self.children(entry)),
            "unbroadcast": entry.unbroadcast,
        })
    }

    /// Core's getmempoolinfo.
    pub fn info_json(&self) -> Value {
        let bytes: u64 = self.entries.values().map(|e| e.vsize).sum();
        let usage: u64 = self.entries.values().map(|e| e.weight * 2 + 400).sum();
        let fees: u64 = self.entries.values().map(|e| e.fee).sum();
        let unbroadcast = self.entries.values().filter(|e| e.unbroadcast).count();
        json!({
            "loaded": true,
            "size": self.entries.len(),
            "bytes": bytes,
            "usage": usage,
            "total_fee": amount(fees),
            "maxmempool": 300_000_000u64,
            "mempoolminfee": amount(MIN_RELAY_FEE),
            "minrelaytxfee": amount(MIN_RELAY_FEE),
            "incrementalrelayfee": amount(MIN_RELAY_FEE),
            "unbroadcastcount": unbroadcast,
            "permitbaremultisig": true,
            "maxdatacarriersize": 100_000,
            "limitclustercount": 64,
            "limitclustersize": 101_000,
            "optimal": true,
        })
    }
}

/// Core's context-free `CheckTransaction` checks that a decoded transaction can fail.
fn check_transaction(tx: &Transaction) -> Result<(), Rejection> {
    const MAX_MONEY: u64 = 21_000_000 * 100_000_000;
    if tx.output.is_empty() {
        return Err(Rejection::invalid("bad-txns-vout-empty", None));
    }
    let mut total = 0u64;
    for out in &tx.output {
        let value = out.value.to_sat();
        if value > MAX_MONEY {
            return Err(Rejection::invalid("bad-txns-vout-toolarge", None));
        }
        total += value;
        if total > MAX_MONEY {
            return Err(Rejection::invalid("bad-txns-txouttotal-toolarge", None));
        }
    }
    let mut seen = std::collections::HashSet::new();
    if !tx.input.iter().all(|i| seen.insert(i.previous_output)) {
        return Err(Rejection::invalid("bad-txns-inputs-duplicate", None));
    }
    if tx.is_coinbase() {
        return Err(Rejection::invalid("coinbase", None));
    }
    if tx.input.iter().any(|i| i.previous_output.is_null()) {
        return Err(Rejection::invalid("bad-txns-prevout-null", None));
    }
    Ok(())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
