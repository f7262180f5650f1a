//! The mirror's state: each mempool transaction with its resolved inputs, the scripts →
//! transactions index, and the spender of each outpoint; applying one round's changes (and
//! which scripts they touched); the per-script reads with ElectrumX's semantics.

use std::collections::{HashMap, HashSet};

use ferrum_storage::{Hash32, HashX};

use crate::query::{MempoolOutput, MempoolTx};

/// A mempool transaction whose inputs are all resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// Inputs' total minus outputs' total, in satoshis (0 if negative, as ElectrumX).
    pub fee: u64,
    pub vsize: u64,
    /// Outpoints spent (coinbase-like inputs left out), in input order.
    pub prevouts: Box<[(Hash32, u32)]>,
    /// What each of `prevouts` held: (script key, value).
    pub inputs: Box<[(HashX, u64)]>,
    /// Outputs by index: (script key, value), None for an unspendable (unindexed) one.
    pub outputs: Box<[Option<(HashX, u64)>]>,
}

impl Entry {
    /// Every script it pays or spends from, once each.
    fn scripts(&self) -> HashSet<HashX> {
        let paid = self.outputs.iter().flatten().map(|(h, _)| *h);
        self.inputs.iter().map(|(h, _)| *h).chain(paid).collect()
    }
}

#[derive(Default)]
pub(super) struct State {
    txs: HashMap<Hash32, Entry>,
    by_script: HashMap<HashX, HashSet<Hash32>>,
    /// Outpoint → the mempool transaction spending it (ElectrumX's `txo_to_spender`).
    spender: HashMap<(Hash32, u32), Hash32>,
}

/// Sort key putting txids in the order of their display hex (byte-reversed).
fn display_order(txid: &Hash32) -> impl Ord {
    let mut key = *txid;
    key.reverse();
    key
}

impl State {
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn get(&self, txid: &Hash32) -> Option<&Entry> {
        self.txs.get(txid)
    }

    pub fn contains(&self, txid: &Hash32) -> bool {
        self.txs.contains_key(txid)
    }

    pub fn txids(&self) -> impl Iterator<Item = &Hash32> {
        self.txs.keys()
    }

    /// (fee, vsize) of every transaction, for the fee histogram.
    pub fn fees(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.txs.values().map(|e| (e.fee, e.vsize))
    }

    pub fn total_vsize(&self) -> u64 {
        self.txs.values().map(|e| e.vsize).sum()
    }

    pub fn script_count(&self) -> usize {
        self.by_script.len()
    }

    /// Some input spends an output of a transaction in the mempool now.
    pub fn has_unconfirmed_inputs(&self, entry: &Entry) -> bool {
        entry
            .prevouts
            .iter()
            .any(|(txid, _)| self.txs.contains_key(txid))
    }

    /// Removes `removed`, then adds `added` (so that a replacement takes over the spends of
    /// what it replaced). Returns the scripts whose mempool view changed: those of every
    /// transaction removed or added, and those of a remaining transaction whose
    /// unconfirmed-inputs flag flipped (a parent confirmed, or was reorged back in).
    pub fn apply(&mut self, removed: &[Hash32], added: Vec<(Hash32, Entry)>) -> HashSet<HashX> {
        let mut touched = HashSet::new();
        // Remaining transactions spending an output of one removed or added.
        let mut children = Vec::new();
        let mut gone = HashSet::new();
        for txid in removed {
            let Some(entry) = self.txs.remove(txid) else {
                continue;
            };
            for script in entry.scripts() {
                if let Some(set) = self.by_script.get_mut(&script) {
                    set.remove(txid);
                    if set.is_empty() {
                        self.by_script.remove(&script);
                    }
                }
                touched.insert(script);
            }
            for prevout in entry.prevouts.iter() {
                if self.spender.get(prevout) == Some(txid) {
                    self.spender.remove(prevout);
                }
            }
            children.extend(self.spenders_of(txid, entry.outputs.len()));
            gone.insert(*txid);
        }
        let new: HashSet<Hash32> = added.iter().map(|(txid, _)| *txid).collect();
        for (txid, entry) in added {
            for script in entry.scripts() {
                self.by_script.entry(script).or_default().insert(txid);
                touched.insert(script);
            }
            for prevout in entry.prevouts.iter() {
                self.spender.insert(*prevout, txid);
            }
            children.extend(self.spenders_of(&txid, entry.outputs.len()));
            self.txs.insert(txid, entry);
        }
        for child in children {
            if new.contains(&child) {
                continue;
            }
            let Some(entry) = self.txs.get(&child) else {
                continue;
            };
            let after = self.has_unconfirmed_inputs(entry);
            let before = entry.prevouts.iter().any(|(txid, _)| {
                gone.contains(txid) || (self.txs.contains_key(txid) && !new.contains(txid))
            });
            if before != after {
                touched.extend(entry.scripts());
            }
        }
        touched
    }

    fn spenders_of<'a>(
        &'a self,
        txid: &'a Hash32,
        outputs: usize,
    ) -> impl Iterator<Item = Hash32> + 'a {
        (0..outputs as u32).filter_map(move |vout| self.spender.get(&(*txid, vout)).copied())
    }

    fn touching(&self, hashx: &HashX) -> impl Iterator<Item = (&Hash32, &Entry)> {
        let txids = self.by_script.get(hashx).into_iter().flatten();
        txids.filter_map(|txid| self.txs.get_key_value(txid))
    }

    /// ElectrumX's `transaction_summaries`: height 0 before -1, then txid as displayed.
    pub fn history(&self, hashx: &HashX) -> Vec<MempoolTx> {
        let mut out: Vec<MempoolTx> = self
            .touching(hashx)
            .map(|(txid, entry)| MempoolTx {
                txid: *txid,
                fee: entry.fee,
                unconfirmed_inputs: self.has_unconfirmed_inputs(entry),
            })
            .collect();
        out.sort_by_key(|t| (t.unconfirmed_inputs, display_order(&t.txid)));
        out
    }

    /// ElectrumX's `unordered_UTXOs`, ordered by (txid as displayed, vout).
    pub fn outputs(&self, hashx: &HashX) -> Vec<MempoolOutput> {
        let mut out: Vec<MempoolOutput> = Vec::new();
        for (txid, entry) in self.touching(hashx) {
            for (vout, output) in entry.outputs.iter().enumerate() {
                if let Some((script, value)) = output {
                    if script == hashx {
                        out.push(MempoolOutput {
                            txid: *txid,
                            vout: vout as u32,
                            value: *value,
                        });
                    }
                }
            }
        }
        out.sort_by_key(|o| (display_order(&o.txid), o.vout));
        out
    }

    /// ElectrumX's `potential_spends`: every outpoint spent by a transaction touching `hashx`.
    pub fn spends(&self, hashx: &HashX) -> HashSet<(Hash32, u32)> {
        self.touching(hashx)
            .flat_map(|(_, entry)| entry.prevouts.iter().copied())
            .collect()
    }

    /// ElectrumX's `balance_delta`: outputs paying `hashx` minus inputs spending from it.
    pub fn balance_delta(&self, hashx: &HashX) -> i64 {
        let mut delta: i128 = 0;
        for (_, entry) in self.touching(hashx) {
            for (script, value) in entry.outputs.iter().flatten() {
                if script == hashx {
                    delta += i128::from(*value);
                }
            }
            for (script, value) in entry.inputs.iter() {
                if script == hashx {
                    delta -= i128::from(*value);
                }
            }
        }
        delta.clamp(i64::MIN.into(), i64::MAX.into()) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u8) -> Hash32 {
        [n; 32]
    }

    fn k(n: u8) -> HashX {
        [n; 11]
    }

    fn entry(prevouts: &[(Hash32, u32, HashX, u64)], outputs: &[(HashX, u64)]) -> Entry {
        Entry {
            fee: 10,
            vsize: 100,
            prevouts: prevouts.iter().map(|p| (p.0, p.1)).collect(),
            inputs: prevouts.iter().map(|p| (p.2, p.3)).collect(),
            outputs: outputs.iter().map(|o| Some(*o)).collect(),
        }
    }

    #[test]
    fn reads_follow_electrumx() {
        let mut state = State::default();
        // P spends confirmed (t9, 0) of A (100), pays B 60 and A 30. C spends P:1 (A's 30),
        // pays B 25. The txid display order is reversed bytes: t(2) < t(3).
        let p = entry(&[(t(9), 0, k(0xa), 100)], &[(k(0xb), 60), (k(0xa), 30)]);
        let c = entry(&[(t(2), 1, k(0xa), 30)], &[(k(0xb), 25)]);
        let touched = state.apply(&[], vec![(t(2), p), (t(3), c)]);
        assert_eq!(touched, HashSet::from([k(0xa), k(0xb)]));
        let tx = |n, unconfirmed_inputs| MempoolTx {
            txid: t(n),
            fee: 10,
            unconfirmed_inputs,
        };
        assert_eq!(state.history(&k(0xa)), [tx(2, false), tx(3, true)]);
        assert_eq!(state.history(&k(0xb)), [tx(2, false), tx(3, true)]);
        assert_eq!(
            state.outputs(&k(0xb)),
            [
                MempoolOutput {
                    txid: t(2),
                    vout: 0,
                    value: 60
                },
                MempoolOutput {
                    txid: t(3),
                    vout: 0,
                    value: 25
                }
            ]
        );
        assert_eq!(state.spends(&k(0xb)), HashSet::from([(t(9), 0), (t(2), 1)]));
        // A: +30 -100 (P), -30 (C). B: +60 +25.
        assert_eq!(state.balance_delta(&k(0xa)), -100);
        assert_eq!(state.balance_delta(&k(0xb)), 85);
        assert_eq!(state.balance_delta(&k(0xc)), 0);
        assert!(state.history(&k(0xc)).is_empty());
    }

    #[test]
    fn a_parent_leaving_flips_its_child_and_touches_the_child_scripts() {
        let mut state = State::default();
        let p = entry(&[(t(9), 0, k(1), 100)], &[(k(2), 90)]);
        let c = entry(&[(t(1), 0, k(2), 90)], &[(k(3), 80)]);
        state.apply(&[], vec![(t(1), p.clone()), (t(2), c)]);
        assert!(state.history(&k(3))[0].unconfirmed_inputs);
        // P confirms: its scripts, and C's (its height goes from -1 to 0).
        let touched = state.apply(&[t(1)], vec![]);
        assert_eq!(touched, HashSet::from([k(1), k(2), k(3)]));
        assert!(!state.history(&k(3))[0].unconfirmed_inputs);
        assert_eq!(state.len(), 1);
        // P reorged back into the mempool: C flips back.
        let touched = state.apply(&[], vec![(t(1), p)]);
        assert_eq!(touched, HashSet::from([k(1), k(2), k(3)]));
        assert!(state.history(&k(3))[0].unconfirmed_inputs);
        // Removing both leaves nothing behind.
        state.apply(&[t(1), t(2)], vec![]);
        assert_eq!((state.len(), state.script_count()), (0, 0));
        assert!(state.spender.is_empty());
    }

    #[test]
    fn a_replacement_takes_over_the_spends() {
        let mut state = State::default();
        let old = entry(&[(t(9), 0, k(1), 100)], &[(k(2), 90)]);
        let new = entry(&[(t(9), 0, k(1), 100)], &[(k(3), 80)]);
        state.apply(&[], vec![(t(1), old)]);
        let touched = state.apply(&[t(1)], vec![(t(2), new)]);
        assert_eq!(touched, HashSet::from([k(1), k(2), k(3)]));
        assert_eq!(state.spender.get(&(t(9), 0)), Some(&t(2)));
        assert!(state.history(&k(2)).is_empty());
        assert_eq!(state.history(&k(1)).len(), 1);
    }
}
