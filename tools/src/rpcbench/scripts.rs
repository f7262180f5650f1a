//! What a chain file says about each script: history length (transactions touching it),
//! unspent outputs and their sum, as an Electrum server indexes them (OP_RETURN outputs and
//! the genesis coinbase left out); and the choice of scripts by history size.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use bitcoin::hashes::{sha256, Hash};
use bitcoin::{Block, OutPoint, ScriptBuf};

use crate::chainfile::ChainReader;

/// One script's figures at the chain tip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptStats {
    /// The Electrum script hash: sha256 of the script, hex in reversed byte order.
    pub scripthash: String,
    /// Transactions paying to or spending from the script.
    pub history: usize,
    pub utxos: usize,
    /// Sum of the unspent outputs, in satoshis.
    pub balance: u64,
}

#[derive(Default)]
struct Tally {
    script: ScriptBuf,
    history: usize,
    utxos: usize,
    balance: u64,
    /// Last tx (by chain position) counted in `history`, so a tx counts once.
    last_tx: Option<u64>,
}

/// Script figures of `blocks` (genesis first), in no particular order.
pub fn scan(blocks: impl Iterator<Item = io::Result<Block>>) -> io::Result<Vec<ScriptStats>> {
    let mut ids: HashMap<ScriptBuf, usize> = HashMap::new();
    let mut tallies: Vec<Tally> = Vec::new();
    let mut unspent: HashMap<OutPoint, (usize, u64)> = HashMap::new();
    let mut txnum = 0u64;
    for (height, block) in blocks.enumerate() {
        let block = block?;
        for tx in &block.txdata {
            let touch = |id: usize, tallies: &mut Vec<Tally>| {
                let t = &mut tallies[id];
                if t.last_tx != Some(txnum) {
                    t.last_tx = Some(txnum);
                    t.history += 1;
                }
            };
            if !tx.is_coinbase() {
                for input in &tx.input {
                    if let Some((id, value)) = unspent.remove(&input.previous_output) {
                        touch(id, &mut tallies);
                        tallies[id].utxos -= 1;
                        tallies[id].balance -= value;
                    }
                }
            }
            // The genesis coinbase is unspendable, so not indexed.
            if height > 0 {
                let txid = tx.compute_txid();
                for (vout, output) in tx.output.iter().enumerate() {
                    if output.script_pubkey.is_op_return() {
                        continue;
                    }
                    let next = tallies.len();
                    let id = *ids.entry(output.script_pubkey.clone()).or_insert(next);
                    if id == next {
                        tallies.push(Tally {
                            script: output.script_pubkey.clone(),
                            ..Tally::default()
                        });
                    }
                    touch(id, &mut tallies);
                    let value = output.value.to_sat();
                    tallies[id].utxos += 1;
                    tallies[id].balance += value;
                    unspent.insert(OutPoint::new(txid, vout as u32), (id, value));
                }
            }
            txnum += 1;
        }
    }
    Ok(tallies
        .into_iter()
        .map(|t| ScriptStats {
            scripthash: scripthash(&t.script),
            history: t.history,
            utxos: t.utxos,
            balance: t.balance,
        })
        .collect())
}

/// Script figures of a chain file.
pub fn scan_file(path: &Path) -> io::Result<Vec<ScriptStats>> {
    scan(ChainReader::open(path)?)
}

/// The Electrum script hash of `script`.
pub fn scripthash(script: &ScriptBuf) -> String {
    let mut hash = sha256::Hash::hash(script.as_bytes()).to_byte_array();
    hash.reverse();
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// A group of scripts to query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeClass {
    /// Histories as close as possible to this many entries (among equals, most unspent
    /// outputs first, so that `listunspent` has something to list).
    Near(usize),
    /// Histories of at least this many entries, longest first.
    AtLeast(usize),
    /// The longest histories.
    Heaviest,
}

impl std::fmt::Display for SizeClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SizeClass::Near(n) => write!(f, "~{n}"),
            SizeClass::AtLeast(n) => write!(f, "≥{n}"),
            SizeClass::Heaviest => write!(f, "heaviest"),
        }
    }
}

/// Up to `count` scripts of `class`; ties are broken by script hash, so the choice is
/// deterministic.
pub fn pick(stats: &[ScriptStats], class: SizeClass, count: usize) -> Vec<ScriptStats> {
    let mut chosen: Vec<&ScriptStats> = stats.iter().collect();
    match class {
        SizeClass::Near(n) => {
            chosen.sort_by(|a, b| {
                (a.history.abs_diff(n), b.utxos, &a.scripthash).cmp(&(
                    b.history.abs_diff(n),
                    a.utxos,
                    &b.scripthash,
                ))
            });
        }
        SizeClass::AtLeast(n) => {
            chosen.retain(|s| s.history >= n);
            chosen.sort_by(|a, b| (b.history, &a.scripthash).cmp(&(a.history, &b.scripthash)));
        }
        SizeClass::Heaviest => {
            chosen.sort_by(|a, b| (b.history, &a.scripthash).cmp(&(a.history, &b.scripthash)));
        }
    }
    chosen.into_iter().take(count).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaingen::{ChainGenerator, ChainParams};

    #[test]
    fn scan_matches_the_generators_utxo_set_and_picks_by_size() {
        let mut g = ChainGenerator::new(ChainParams::small(3));
        let mut blocks = vec![g.genesis().clone()];
        for _ in 0..150 {
            blocks.push(g.next_block());
        }
        let stats = scan(blocks.into_iter().map(Ok)).unwrap();
        // Every live output counted once; the genesis coinbase is not among them.
        let utxos: usize = stats.iter().map(|s| s.utxos).sum();
        assert_eq!(utxos, g.utxo_count());
        assert!(stats
            .iter()
            .all(|s| s.history >= 1 && s.scripthash.len() == 64));
        let heaviest = pick(&stats, SizeClass::Heaviest, 3);
        let max = stats.iter().map(|s| s.history).max().unwrap();
        assert_eq!(heaviest[0].history, max);
        assert!(heaviest.windows(2).all(|w| w[0].history >= w[1].history));
        let near = pick(&stats, SizeClass::Near(2), 5);
        let best = stats.iter().map(|s| s.history.abs_diff(2)).min().unwrap();
        assert_eq!(near[0].history.abs_diff(2), best);
        assert_eq!(near.len(), 5);
        let near_two = near.iter().filter(|s| s.history == near[0].history);
        assert!(near_two
            .collect::<Vec<_>>()
            .windows(2)
            .all(|w| w[0].utxos >= w[1].utxos));
        let long = pick(&stats, SizeClass::AtLeast(max), 5);
        assert!(!long.is_empty() && long.iter().all(|s| s.history == max));
        assert!(pick(&stats, SizeClass::AtLeast(max + 1), 5).is_empty());
    }

    #[test]
    fn scripthash_matches_the_protocol_docs_example() {
        // P2PKH of 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa, from the Electrum protocol docs.
        let script = ScriptBuf::from_bytes(
            (0..25)
                .map(|i| {
                    let hex = "76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac";
                    u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()
                })
                .collect(),
        );
        assert_eq!(
            scripthash(&script),
            "8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161"
        );
    }
}
