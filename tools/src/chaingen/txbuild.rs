//! How the generator builds one transaction: its shape, the coins it spends, the scripts it
//! pays, a fee from an upper-bound size, value splitting and signing.

use std::sync::Arc;

use bitcoin::locktime::absolute::LockTime;
use bitcoin::script::PushBytesBuf;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};

use super::coins::Coin;
use super::wallet::ScriptKeys;
use super::{ChainGenerator, MIN_OUTPUT_VALUE};

/// OP_RETURN payloads are 0..=this many bytes: one small output is standard on every Core.
const MAX_OP_RETURN_DATA: u64 = 40;

/// A transaction's inputs while it is built: coins and, for unconfirmed ones, their cluster.
type Inputs = Vec<(Coin, Option<u32>)>;

impl ChainGenerator {
    /// A script id to pay: an existing one (Zipf by age rank) or a fresh one.
    pub(super) fn pick_script(&mut self) -> u64 {
        if self.next_script > 0 && self.rng.chance(self.params.reuse_probability) {
            return self
                .rng
                .zipf_rank(self.next_script, self.params.zipf_exponent);
        }
        self.next_script += 1;
        self.next_script - 1
    }

    /// Input and output counts: mostly payments, some sweeps, merges and batch payouts.
    fn shape(&mut self) -> (usize, usize) {
        let (max_in, max_out) = (
            self.params.max_inputs.max(1),
            self.params.max_outputs.max(1),
        );
        let r = self.rng.unit();
        let (ins, outs) = if r < 0.55 {
            (if self.rng.chance(0.8) { 1 } else { 2 }, 2)
        } else if r < 0.72 {
            (1, 1)
        } else if r < 0.87 {
            (self.rng.range(2, 5) as usize, self.rng.range(1, 2) as usize)
        } else if r < 0.93 {
            (
                self.rng.range((max_in / 2) as u64, max_in as u64) as usize,
                1,
            )
        } else {
            (
                self.rng.range(1, 2) as usize,
                self.rng.range(3, max_out as u64) as usize,
            )
        };
        (ins.clamp(1, max_in), outs.clamp(1, max_out))
    }

    /// Takes one input. `policy`: for a relayable mempool transaction, which may spend at most
    /// one unconfirmed output, from a cluster with room.
    fn take_input(&mut self, policy: bool, inputs: &Inputs) -> Option<(Coin, Option<u32>)> {
        let may_chain = !policy || inputs.iter().all(|(_, cluster)| cluster.is_none());
        if may_chain
            && (self.coins.is_empty() || self.rng.chance(self.params.unconfirmed_spend_probability))
        {
            if let Some((coin, cluster)) = self.mempool.take(&mut self.rng, policy) {
                return Some((coin, Some(cluster)));
            }
        }
        if let Some(coin) = self.coins.take(&mut self.rng) {
            return Some((coin, None));
        }
        None
    }

    fn give_back(&mut self, inputs: Inputs) {
        for (coin, cluster) in inputs {
            match cluster {
                Some(cluster) => self.mempool.untake(coin, cluster),
                None => self.coins.add(coin),
            }
        }
    }

    /// Builds, signs and adds one pending transaction. False when the wallet cannot fund one.
    pub(super) fn make_tx(&mut self, policy: bool) -> bool {
        let (wanted_inputs, wanted_outputs) = self.shape();
        let mut inputs: Inputs = Vec::with_capacity(wanted_inputs);
        while inputs.len() < wanted_inputs {
            match self.take_input(policy, &inputs) {
                Some(input) => inputs.push(input),
                None => break,
            }
        }
        if inputs.is_empty() {
            return false;
        }
        let scripts: Vec<u64> = (0..wanted_outputs).map(|_| self.pick_script()).collect();
        let op_return = self.rng.chance(self.params.op_return_probability).then(|| {
            let mut data = vec![0u8; self.rng.range(0, MAX_OP_RETURN_DATA) as usize];
            self.rng.fill(&mut data);
            ScriptBuf::new_op_return(PushBytesBuf::try_from(data).expect("small data"))
        });
        let feerate = self
            .rng
            .range(self.params.feerate.0.max(1), self.params.feerate.1);

        let mut outputs = scripts.len();
        loop {
            let (tx, owners, prevouts) = self.unsigned_tx(&inputs, &scripts[..outputs], &op_return);
            let mut sized = tx;
            self.wallet.sign(&mut sized, &prevouts, &owners, true);
            let fee = feerate * sized.vsize() as u64;
            let total_in: u64 = inputs.iter().map(|(c, _)| c.value).sum();
            let available = total_in.saturating_sub(fee);
            if available >= outputs as u64 * MIN_OUTPUT_VALUE {
                self.finish_tx(
                    sized,
                    owners,
                    prevouts,
                    inputs,
                    &scripts[..outputs],
                    available,
                    policy,
                );
                return true;
            }
            if available >= MIN_OUTPUT_VALUE {
                outputs = (available / MIN_OUTPUT_VALUE) as usize;
                continue;
            }
            match (inputs.len() < self.params.max_inputs.max(1))
                .then(|| self.take_input(policy, &inputs))
                .flatten()
            {
                Some(input) => inputs.push(input),
                None => {
                    self.give_back(inputs);
                    return false;
                }
            }
        }
    }

    fn unsigned_tx(
        &mut self,
        inputs: &Inputs,
        scripts: &[u64],
        op_return: &Option<ScriptBuf>,
    ) -> (Transaction, Vec<Arc<ScriptKeys>>, Vec<TxOut>) {
        let owners: Vec<_> = inputs
            .iter()
            .map(|(c, _)| self.wallet.keys(c.script))
            .collect();
        let prevouts: Vec<TxOut> = inputs
            .iter()
            .zip(&owners)
            .map(|((coin, _), keys)| TxOut {
                value: Amount::from_sat(coin.value),
                script_pubkey: keys.script_pubkey.clone(),
            })
            .collect();
        let mut output: Vec<TxOut> = scripts
            .iter()
            .map(|&id| TxOut {
                value: Amount::ZERO,
                script_pubkey: self.wallet.keys(id).script_pubkey.clone(),
            })
            .collect();
        if let Some(script) = op_return {
            output.push(TxOut {
                value: Amount::ZERO,
                script_pubkey: script.clone(),
            });
        }
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: inputs
                .iter()
                .map(|(coin, _)| TxIn {
                    previous_output: coin.outpoint,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    witness: Witness::new(),
                })
                .collect(),
            output,
        };
        (tx, owners, prevouts)
    }

    /// Splits `available` over the payment outputs, signs, and records the transaction.
    #[allow(clippy::too_many_arguments)]
    fn finish_tx(
        &mut self,
        mut tx: Transaction,
        owners: Vec<Arc<ScriptKeys>>,
        prevouts: Vec<TxOut>,
        inputs: Inputs,
        scripts: &[u64],
        available: u64,
        policy: bool,
    ) {
        let weights: Vec<u64> = scripts.iter().map(|_| self.rng.range(1, 1000)).collect();
        let total_weight: u64 = weights.iter().sum();
        let spare = available - scripts.len() as u64 * MIN_OUTPUT_VALUE;
        let mut left = spare;
        for (index, weight) in weights.iter().enumerate() {
            let share = if index + 1 == weights.len() {
                left
            } else {
                (spare as u128 * *weight as u128 / total_weight as u128) as u64
            };
            left -= share;
            tx.output[index].value = Amount::from_sat(MIN_OUTPUT_VALUE + share);
        }
        if !self.params.placeholder_signatures {
            self.wallet.sign(&mut tx, &prevouts, &owners, false);
        }
        let sigop_cost = tx.total_sigop_cost(|outpoint| {
            tx.input
                .iter()
                .position(|input| input.previous_output == *outpoint)
                .map(|index| prevouts[index].clone())
        }) as u64;
        let txid = tx.compute_txid();
        let coins: Vec<Coin> = scripts
            .iter()
            .enumerate()
            .map(|(index, &script)| Coin {
                outpoint: OutPoint::new(txid, index as u32),
                value: tx.output[index].value.to_sat(),
                script,
            })
            .collect();
        let total_in: u64 = inputs.iter().map(|(c, _)| c.value).sum();
        let total_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        let parents: Vec<u32> = inputs.iter().filter_map(|(_, cluster)| *cluster).collect();
        let spent = inputs.into_iter().map(|(coin, _)| coin).collect();
        self.mempool.add(
            tx,
            spent,
            &parents,
            policy,
            total_in - total_out,
            sigop_cost,
            coins,
        );
    }
}
