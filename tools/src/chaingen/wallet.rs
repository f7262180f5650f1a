//! The generator's wallet: script ids mapped to deterministic keys and output scripts of every
//! kind, and the code that signs (or fakes signatures for) inputs spending them.

use std::collections::HashMap;
use std::sync::Arc;

use bitcoin::hashes::{sha256, Hash, HashEngine};
use bitcoin::key::TapTweak;
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::secp256k1::{All, Keypair, Message, PublicKey, Secp256k1, SecretKey};

use super::ladder::KeyLadder;
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache};
use bitcoin::{opcodes, Amount, CompressedPublicKey, ScriptBuf, Transaction, TxOut, Witness};

/// The spendable output kinds the generator creates (OP_RETURN outputs are made separately:
/// they are never spent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputKind {
    P2pk,
    P2pkh,
    P2shP2wpkh,
    P2wpkh,
    /// Witness script `<pubkey> OP_CHECKSIG`.
    P2wsh,
    /// BIP86-style key-path output (no script tree).
    P2tr,
    /// Bare 1-of-2 `OP_CHECKMULTISIG`.
    BareMultisig,
}

impl OutputKind {
    pub const ALL: [OutputKind; 7] = [
        OutputKind::P2pk,
        OutputKind::P2pkh,
        OutputKind::P2shP2wpkh,
        OutputKind::P2wpkh,
        OutputKind::P2wsh,
        OutputKind::P2tr,
        OutputKind::BareMultisig,
    ];
}

/// Ids below this keep their derived keys in memory: Zipf reuse makes them the hot ones.
const CACHED_SCRIPT_IDS: u64 = 8192;
/// Other ids stay cached while recently used, in two generations of this many entries: fresh
/// outputs are often spent soon, and deriving keys is most of the cost of a transaction.
const RECENT_GENERATION: usize = 1 << 15;

/// Largest DER ECDSA signature plus its sighash byte; placeholders use it so fee estimates
/// made with placeholders are upper bounds for real signatures.
const MAX_ECDSA_SIG_LEN: usize = 73;

/// Everything needed to pay to and spend from one script id.
pub(crate) struct ScriptKeys {
    pub(crate) kind: OutputKind,
    pub(crate) script_pubkey: ScriptBuf,
    secret: SecretKey,
    public: PublicKey,
    /// Witness script (P2WSH), redeem script (P2SH-P2WPKH) or the multisig script itself.
    inner_script: ScriptBuf,
}

fn tagged_hash(seed: u64, tag: &[u8], id: u64, index: u32) -> [u8; 32] {
    let mut engine = sha256::Hash::engine();
    engine.input(b"ferrum-chaingen/");
    engine.input(tag);
    engine.input(&seed.to_le_bytes());
    engine.input(&id.to_le_bytes());
    engine.input(&index.to_le_bytes());
    sha256::Hash::from_engine(engine).to_byte_array()
}

/// The base secret of ladder `index`, from the seed.
fn seed_secret(seed: u64, index: u32) -> SecretKey {
    let mut counter = 0;
    loop {
        // An invalid scalar has probability ~2^-128; retrying keeps derivation total.
        if let Ok(key) = SecretKey::from_slice(&tagged_hash(seed, b"ladder", counter, index)) {
            return key;
        }
        counter += 1;
    }
}

/// Derives keys for script ids from the seed; caches the popular (low) and recent ids.
#[derive(Clone)]
pub(crate) struct Wallet {
    seed: u64,
    secp: Secp256k1<All>,
    kind_weights: Vec<(OutputKind, u32)>,
    /// Ladders of the first key of every script and of the second key of multisig ones.
    ladders: [KeyLadder; 2],
    popular: HashMap<u64, Arc<ScriptKeys>>,
    recent: HashMap<u64, Arc<ScriptKeys>>,
    older: HashMap<u64, Arc<ScriptKeys>>,
}

impl Wallet {
    pub(crate) fn new(seed: u64, kind_weights: Vec<(OutputKind, u32)>) -> Self {
        assert!(
            kind_weights.iter().any(|(_, w)| *w > 0),
            "ChainParams::output_mix needs a non-zero weight"
        );
        let secp = Secp256k1::new();
        let low = KeyLadder::low_table(&secp);
        let ladders =
            [0, 1].map(|index| KeyLadder::new(&secp, seed_secret(seed, index), low.clone()));
        Self {
            seed,
            secp,
            kind_weights,
            ladders,
            popular: HashMap::new(),
            recent: HashMap::new(),
            older: HashMap::new(),
        }
    }

    fn hash(&self, tag: &[u8], id: u64, index: u32) -> [u8; 32] {
        tagged_hash(self.seed, tag, id, index)
    }

    /// The kind of a script id: a pure function of (seed, id), so reused ids keep their kind.
    pub(crate) fn kind_of(&self, id: u64) -> OutputKind {
        let h = self.hash(b"kind", id, 0);
        let total: u64 = self.kind_weights.iter().map(|(_, w)| *w as u64).sum();
        let mut pick = u64::from_le_bytes(h[..8].try_into().expect("8 bytes")) % total;
        for (kind, weight) in &self.kind_weights {
            if pick < *weight as u64 {
                return *kind;
            }
            pick -= *weight as u64;
        }
        unreachable!("pick < total weight")
    }

    pub(crate) fn keys(&mut self, id: u64) -> Arc<ScriptKeys> {
        if id < CACHED_SCRIPT_IDS {
            if let Some(keys) = self.popular.get(&id) {
                return keys.clone();
            }
            let keys = Arc::new(self.derive(id));
            self.popular.insert(id, keys.clone());
            return keys;
        }
        if let Some(keys) = self.recent.get(&id) {
            return keys.clone();
        }
        let keys = match self.older.remove(&id) {
            Some(keys) => keys,
            None => Arc::new(self.derive(id)),
        };
        if self.recent.len() >= RECENT_GENERATION {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(id, keys.clone());
        keys
    }

    fn derive(&mut self, id: u64) -> ScriptKeys {
        let kind = self.kind_of(id);
        let (secret, public) = self.ladders[0].key(&self.secp, id);
        let compressed = CompressedPublicKey(public);
        let mut inner_script = ScriptBuf::new();

        let script_pubkey = match kind {
            OutputKind::P2pk => ScriptBuf::new_p2pk(&bitcoin::PublicKey::new(public)),
            OutputKind::P2pkh => ScriptBuf::new_p2pkh(&compressed.pubkey_hash()),
            OutputKind::P2wpkh => ScriptBuf::new_p2wpkh(&compressed.wpubkey_hash()),
            OutputKind::P2shP2wpkh => {
                inner_script = ScriptBuf::new_p2wpkh(&compressed.wpubkey_hash());
                ScriptBuf::new_p2sh(&inner_script.script_hash())
            }
            OutputKind::P2wsh => {
                inner_script = Builder::new()
                    .push_slice(public.serialize())
                    .push_opcode(opcodes::all::OP_CHECKSIG)
                    .into_script();
                ScriptBuf::new_p2wsh(&inner_script.wscript_hash())
            }
            OutputKind::P2tr => {
                let (output_key, _) = public.x_only_public_key().0.tap_tweak(&self.secp, None);
                ScriptBuf::new_p2tr_tweaked(output_key)
            }
            OutputKind::BareMultisig => {
                let (_, second) = self.ladders[1].key(&self.secp, id);
                inner_script = Builder::new()
                    .push_opcode(opcodes::all::OP_PUSHNUM_1)
                    .push_slice(public.serialize())
                    .push_slice(second.serialize())
                    .push_opcode(opcodes::all::OP_PUSHNUM_2)
                    .push_opcode(opcodes::all::OP_CHECKMULTISIG)
                    .into_script();
                inner_script.clone()
            }
        };
        ScriptKeys {
            kind,
            script_pubkey,
            secret,
            public,
            inner_script,
        }
    }

    /// Fills in scriptSigs and witnesses for every input of `tx`, whose spent outputs are
    /// `prevouts` (same order) owned by `owners`. With `placeholder`, signatures are fixed
    /// dummy bytes of the maximum size: the transaction then has its final size but is invalid.
    pub(crate) fn sign(
        &self,
        tx: &mut Transaction,
        prevouts: &[TxOut],
        owners: &[Arc<ScriptKeys>],
        placeholder: bool,
    ) {
        let sigs: Vec<Vec<u8>> = if placeholder {
            owners
                .iter()
                .map(|keys| match keys.kind {
                    OutputKind::P2tr => vec![0x01; 64],
                    _ => {
                        let mut sig = vec![0x30; MAX_ECDSA_SIG_LEN];
                        sig[MAX_ECDSA_SIG_LEN - 1] = EcdsaSighashType::All as u8;
                        sig
                    }
                })
                .collect()
        } else {
            self.real_signatures(tx, prevouts, owners)
        };
        for ((input, keys), sig) in tx.input.iter_mut().zip(owners).zip(sigs) {
            let sig = PushBytesBuf::try_from(sig).expect("a signature fits a push");
            let pubkey = keys.public.serialize();
            match keys.kind {
                OutputKind::P2pk => input.script_sig = Builder::new().push_slice(sig).into_script(),
                OutputKind::P2pkh => {
                    input.script_sig = Builder::new()
                        .push_slice(sig)
                        .push_slice(pubkey)
                        .into_script()
                }
                OutputKind::BareMultisig => {
                    input.script_sig = Builder::new()
                        .push_opcode(opcodes::OP_0)
                        .push_slice(sig)
                        .into_script()
                }
                OutputKind::P2wpkh => {
                    input.witness = Witness::from_slice(&[sig.as_bytes(), &pubkey])
                }
                OutputKind::P2shP2wpkh => {
                    let redeem = PushBytesBuf::try_from(keys.inner_script.to_bytes())
                        .expect("a redeem script fits a push");
                    input.script_sig = Builder::new().push_slice(redeem).into_script();
                    input.witness = Witness::from_slice(&[sig.as_bytes(), &pubkey]);
                }
                OutputKind::P2wsh => {
                    input.witness =
                        Witness::from_slice(&[sig.as_bytes(), keys.inner_script.as_bytes()])
                }
                OutputKind::P2tr => input.witness = Witness::from_slice(&[sig.as_bytes()]),
            }
        }
    }

    fn real_signatures(
        &self,
        tx: &Transaction,
        prevouts: &[TxOut],
        owners: &[Arc<ScriptKeys>],
    ) -> Vec<Vec<u8>> {
        let all = EcdsaSighashType::All;
        let mut cache = SighashCache::new(tx);
        let mut sigs = Vec::with_capacity(owners.len());
        for (index, (keys, prevout)) in owners.iter().zip(prevouts).enumerate() {
            let value: Amount = prevout.value;
            let digest: [u8; 32] = match keys.kind {
                OutputKind::P2tr => {
                    let hash = cache
                        .taproot_key_spend_signature_hash(
                            index,
                            &Prevouts::All(prevouts),
                            bitcoin::TapSighashType::Default,
                        )
                        .expect("prevouts match inputs");
                    let msg = Message::from_digest(hash.to_byte_array());
                    let pair = Keypair::from_secret_key(&self.secp, &keys.secret)
                        .tap_tweak(&self.secp, None);
                    let sig = self.secp.sign_schnorr_no_aux_rand(&msg, pair.as_keypair());
                    sigs.push(sig.as_ref().to_vec());
                    continue;
                }
                OutputKind::P2pk | OutputKind::P2pkh | OutputKind::BareMultisig => cache
                    .legacy_signature_hash(index, &keys.script_pubkey, all.to_u32())
                    .expect("input index in range")
                    .to_byte_array(),
                OutputKind::P2wpkh => cache
                    .p2wpkh_signature_hash(index, &keys.script_pubkey, value, all)
                    .expect("a P2WPKH script")
                    .to_byte_array(),
                OutputKind::P2shP2wpkh => cache
                    .p2wpkh_signature_hash(index, &keys.inner_script, value, all)
                    .expect("a P2WPKH redeem script")
                    .to_byte_array(),
                OutputKind::P2wsh => cache
                    .p2wsh_signature_hash(index, &keys.inner_script, value, all)
                    .expect("input index in range")
                    .to_byte_array(),
            };
            let sig = self
                .secp
                .sign_ecdsa(&Message::from_digest(digest), &keys.secret);
            sigs.push(
                bitcoin::ecdsa::Signature {
                    signature: sig,
                    sighash_type: all,
                }
                .to_vec(),
            );
        }
        sigs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_kinds_follow_the_weights() {
        let only_p2tr = Wallet::new(1, vec![(OutputKind::P2tr, 1), (OutputKind::P2pk, 0)]);
        assert!((0..100).all(|id| only_p2tr.kind_of(id) == OutputKind::P2tr));
        let mut wallet = Wallet::new(1, OutputKind::ALL.iter().map(|k| (*k, 1)).collect());
        let kinds: std::collections::HashSet<_> = (0..200).map(|id| wallet.keys(id).kind).collect();
        assert_eq!(kinds.len(), OutputKind::ALL.len());
    }
}
