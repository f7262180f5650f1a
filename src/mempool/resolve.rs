//! New mempool transactions from raw bytes to state entries: parsing (outpoints spent,
//! outputs by script key, vsize), then resolving every input to the (script key, value) it
//! spends, from the mempool (parents first) or the store, and computing the fee.

use std::collections::{HashMap, HashSet, VecDeque};

use bitcoin::consensus::deserialize;
use bitcoin::hashes::Hash;
use bitcoin::Transaction;
use ferrum_storage::{Hash32, HashX, Snapshot};

use super::state::{Entry, State};
use crate::blocks::{is_unspendable, script_hashx};
use crate::hex::hash_hex;

/// A transaction as parsed, before its inputs are resolved.
#[derive(Debug)]
pub(super) struct Parsed {
    pub txid: Hash32,
    vsize: u64,
    prevouts: Vec<(Hash32, u32)>,
    outputs: Vec<Option<(HashX, u64)>>,
    /// Every output's value, unspendable ones included (they count against the fee).
    paid: u64,
}

/// Parses a transaction the node gave for `txid`; the message says what was wrong.
pub(super) fn parse(txid: &Hash32, raw: &[u8]) -> Result<Parsed, String> {
    let tx: Transaction = deserialize(raw)
        .map_err(|e| format!("transaction {} does not parse: {e}", hash_hex(txid)))?;
    let actual = tx.compute_txid().to_byte_array();
    if actual != *txid {
        return Err(format!(
            "the node sent transaction {} for {}",
            hash_hex(&actual),
            hash_hex(txid)
        ));
    }
    Ok(Parsed {
        txid: *txid,
        vsize: tx.vsize() as u64,
        // Like ElectrumX, coinbase-like inputs are dropped (no mempool transaction has one).
        prevouts: tx
            .input
            .iter()
            .filter(|i| !i.previous_output.is_null())
            .map(|i| {
                let p = i.previous_output;
                (p.txid.to_byte_array(), p.vout)
            })
            .collect(),
        outputs: tx
            .output
            .iter()
            .map(|o| {
                (!is_unspendable(&o.script_pubkey))
                    .then(|| (script_hashx(&o.script_pubkey), o.value.to_sat()))
            })
            .collect(),
        paid: tx
            .output
            .iter()
            .fold(0u64, |sum, o| sum.saturating_add(o.value.to_sat())),
    })
}

/// What a round of resolution gives: the entries to add, and how many were left out because
/// an input was found neither in the mempool nor unspent in the store (retried next round).
pub(super) struct Resolved {
    pub added: Vec<(Hash32, Entry)>,
    pub unresolved: usize,
}

/// Resolves `parsed` against `state` and `snap`. `ids` is the node's whole mempool: an
/// outpoint of a transaction in it is looked up in the mempool (already held, or resolved
/// earlier this round: parents are taken before their children), any other in the store.
pub(super) fn resolve(
    parsed: Vec<Parsed>,
    ids: &HashSet<Hash32>,
    state: &State,
    snap: &Snapshot,
) -> Result<Resolved, ferrum_storage::Error> {
    let order = parents_first(&parsed);
    let unordered = parsed.len() - order.len();
    let mut slots: Vec<Option<Parsed>> = parsed.into_iter().map(Some).collect();
    let mut added: Vec<(Hash32, Entry)> = Vec::with_capacity(order.len());
    let mut accepted: HashMap<Hash32, usize> = HashMap::with_capacity(order.len());
    let mut unresolved = unordered;
    for i in order {
        let Some(tx) = slots[i].take() else {
            continue;
        };
        let mut inputs = Vec::with_capacity(tx.prevouts.len());
        for &(ptxid, vout) in &tx.prevouts {
            let found = if ids.contains(&ptxid) {
                let parent = match accepted.get(&ptxid) {
                    Some(&k) => Some(&added[k].1),
                    None => state.get(&ptxid),
                };
                parent.and_then(|p| p.outputs.get(vout as usize).copied().flatten())
            } else {
                snap.unspent(&ptxid, vout)?
                    .map(|(hashx, utxo)| (hashx, utxo.value))
            };
            match found {
                Some(input) => inputs.push(input),
                None => break,
            }
        }
        if inputs.len() < tx.prevouts.len() {
            unresolved += 1;
            continue;
        }
        let spent = inputs
            .iter()
            .fold(0u64, |sum, (_, value)| sum.saturating_add(*value));
        let entry = Entry {
            fee: spent.saturating_sub(tx.paid),
            vsize: tx.vsize,
            prevouts: tx.prevouts.into(),
            inputs: inputs.into(),
            outputs: tx.outputs.into(),
        };
        accepted.insert(tx.txid, added.len());
        added.push((tx.txid, entry));
    }
    Ok(Resolved { added, unresolved })
}

/// Indexes of `txs` with each one after those of its parents that are among `txs` (Kahn's
/// algorithm). Transactions in a cycle, which real txids cannot form, are left out.
fn parents_first(txs: &[Parsed]) -> Vec<usize> {
    let index: HashMap<&Hash32, usize> =
        txs.iter().enumerate().map(|(i, t)| (&t.txid, i)).collect();
    let mut waiting = vec![0usize; txs.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); txs.len()];
    for (i, tx) in txs.iter().enumerate() {
        let parents: HashSet<usize> = tx
            .prevouts
            .iter()
            .filter_map(|(p, _)| index.get(p).copied())
            .collect();
        waiting[i] = parents.len();
        for p in parents {
            children[p].push(i);
        }
    }
    let mut ready: VecDeque<usize> = (0..txs.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(txs.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &c in &children[i] {
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.push_back(c);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(txid: u8, parents: &[u8]) -> Parsed {
        Parsed {
            txid: [txid; 32],
            vsize: 100,
            prevouts: parents.iter().map(|p| ([*p; 32], 0)).collect(),
            outputs: vec![Some(([txid; 11], 1))],
            paid: 1,
        }
    }

    #[test]
    fn parents_come_first() {
        // 3 spends 1 and 2; 2 spends 1; 4 spends something outside.
        let txs = vec![
            parsed(3, &[1, 2]),
            parsed(2, &[1]),
            parsed(4, &[9]),
            parsed(1, &[]),
        ];
        let order: Vec<u8> = parents_first(&txs)
            .into_iter()
            .map(|i| txs[i].txid[0])
            .collect();
        assert_eq!(order, [4, 1, 2, 3]);
        // A cycle (impossible with real txids) is left out rather than looping.
        let cycle = vec![parsed(1, &[2]), parsed(2, &[1]), parsed(3, &[])];
        assert_eq!(parents_first(&cycle), [2]);
    }

    #[test]
    fn parse_refuses_junk_and_a_wrong_txid() {
        assert_eq!(
            parse(&[1; 32], &[0xde, 0xad]).unwrap_err(),
            format!(
                "transaction {} does not parse: {}",
                hash_hex(&[1; 32]),
                deserialize::<Transaction>(&[0xde, 0xad]).unwrap_err()
            )
        );
        let tx = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest).txdata[0]
            .clone();
        let raw = bitcoin::consensus::serialize(&tx);
        let txid = tx.compute_txid().to_byte_array();
        assert!(parse(&[1; 32], &raw)
            .unwrap_err()
            .starts_with(&format!("the node sent transaction {}", hash_hex(&txid))));
        // The genesis coinbase: its null input is dropped, its output counted.
        let p = parse(&txid, &raw).unwrap();
        assert!(p.prevouts.is_empty());
        assert_eq!(p.paid, 50 * 100_000_000);
        assert_eq!(p.vsize, tx.vsize() as u64);
        assert_eq!(
            p.outputs,
            [Some((script_hashx(&tx.output[0].script_pubkey), p.paid))]
        );
    }
}
