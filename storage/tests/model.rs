//! Property test: random sequences of apply_block, commit, rollback, compact, compact_all, set_meta, reopen
//! and invalid blocks drive the Store and an in-memory model; after every step the latest
//! snapshot, and an older snapshot kept across steps, must equal the model. Each sequence
//! runs against a full store and a lean one (no txids stored), which must answer alike.

mod common;

use common::{check, Model};
use ferrum_storage::{BlockData, Error, Hash32, Options, Snapshot, Store};
use proptest::prelude::*;

const UNDO: u32 = 4;

#[derive(Clone, Debug)]
enum Op {
    Apply { seed: u64, blocks: u8 },
    Commit,
    Rollback(u8),
    Compact,
    CompactAtTip,
    CompactAll,
    Reopen,
    Meta(u8),
    BadSpend(u64),
    KeepSnapshot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u64>(), 1u8..4).prop_map(|(seed, blocks)| Op::Apply { seed, blocks }),
        3 => Just(Op::Commit),
        2 => (0u8..7).prop_map(Op::Rollback),
        2 => Just(Op::Compact),
        2 => Just(Op::CompactAtTip),
        1 => Just(Op::CompactAll),
        1 => Just(Op::Reopen),
        1 => any::<u8>().prop_map(Op::Meta),
        1 => any::<u64>().prop_map(Op::BadSpend),
        1 => Just(Op::KeepSnapshot),
    ]
}

fn options(lean: bool) -> Options {
    Options {
        undo_blocks: UNDO,
        compaction_memory: 1 << 16,
        store_txids: !lean,
        background_merge_bytes: 0,
    }
}

/// What opening a store with blocks in the other mode says.
fn mode_error(dir: &std::path::Path, lean: bool) -> String {
    let built = if lean {
        "without txids (lean)"
    } else {
        "with txids stored"
    };
    format!(
        "the store in {} was built {built}; open it in the same mode or delete the directory \
         and resync",
        dir.display()
    )
}

struct Harness {
    dir: tempfile::TempDir,
    lean: bool,
    store: Option<Store>,
    /// `states[n]` = model after the first n applied blocks (committed or not).
    states: Vec<Model>,
    /// The applied blocks (committed or not), by height: a lean rollback is given their
    /// spends.
    blocks: Vec<BlockData>,
    committed: usize,
    meta_pending: Vec<(String, Vec<u8>)>,
    /// Lowest height whose undo record the store must still hold.
    undo_low: usize,
    all_txids: Vec<Hash32>,
    kept: Option<(Snapshot, Model)>,
}

impl Harness {
    fn store(&mut self) -> &mut Store {
        self.store.as_mut().expect("open")
    }

    fn applied(&self) -> usize {
        self.states.len() - 1
    }

    fn commit_model(&mut self) {
        self.committed = self.applied();
        let pending = std::mem::take(&mut self.meta_pending);
        for state in &mut self.states {
            for (k, v) in &pending {
                state.meta.insert(k.clone(), v.clone());
            }
        }
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Apply { seed, blocks } => {
                for i in 0..*blocks {
                    let tip = self.states.last().unwrap().clone();
                    let block = tip.gen_block(seed.wrapping_add(u64::from(i)));
                    let mut next = tip.clone();
                    next.apply(&block);
                    self.all_txids.extend(block.txs.iter().map(|t| t.txid));
                    self.store().apply_block(&block).unwrap();
                    assert_eq!(self.store().height(), next.height());
                    self.states.push(next);
                    self.blocks.push(block);
                }
            }
            Op::Commit => {
                self.store().commit().unwrap();
                self.commit_model();
            }
            Op::Rollback(n) => {
                let n = usize::from(*n);
                let blocks = self.applied();
                let guaranteed = (UNDO as usize).min(blocks.saturating_sub(self.undo_low));
                let spent: Vec<Vec<Hash32>> = match self.lean {
                    true => self.blocks[blocks.saturating_sub(n)..]
                        .iter()
                        .rev()
                        .map(BlockData::spent_txids)
                        .collect(),
                    false => Vec::new(),
                };
                let result = self.store().rollback(n as u32, &spent);
                self.commit_model();
                match result {
                    Ok(()) => {
                        assert!(n <= blocks);
                        self.undo_low = self
                            .undo_low
                            .max(blocks.saturating_sub(UNDO as usize))
                            .min(blocks - n);
                        self.states.truncate(blocks - n + 1);
                        self.blocks.truncate(blocks - n);
                        self.committed = blocks - n;
                    }
                    Err(Error::Invalid(msg)) => {
                        assert!(n > guaranteed, "rollback of {n} within {guaranteed}: {msg}");
                        assert!(msg.starts_with("cannot roll back"), "{msg}");
                    }
                    Err(e) => panic!("rollback: {e}"),
                }
            }
            Op::Compact => {
                self.store().compact().unwrap();
                self.commit_model();
            }
            Op::CompactAtTip => {
                self.store().compact_at_tip().unwrap();
                self.commit_model();
            }
            Op::CompactAll => {
                self.store().compact_all().unwrap();
                self.commit_model();
            }
            Op::Reopen => {
                drop(self.store.take());
                if self.committed > 0 {
                    let err = Store::open(self.dir.path(), options(!self.lean))
                        .err()
                        .unwrap();
                    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
                    assert_eq!(err.to_string(), mode_error(self.dir.path(), self.lean));
                }
                self.store = Some(Store::open(self.dir.path(), options(self.lean)).unwrap());
                assert_eq!(self.store().snapshot().stores_txids(), !self.lean);
                self.states.truncate(self.committed + 1);
                self.blocks.truncate(self.committed);
                self.meta_pending.clear();
            }
            Op::Meta(v) => {
                let key = format!("k{}", v % 3);
                self.store().set_meta(&key, &[*v; 3]);
                self.meta_pending.push((key, vec![*v; 3]));
            }
            Op::BadSpend(seed) => {
                let tip = self.states.last().unwrap().clone();
                let mut block = tip.gen_block(*seed);
                let missing = match tip.txids.first() {
                    Some(t) if seed % 2 == 0 => (*t, 9),
                    _ => ([0xee; 32], 0),
                };
                block.txs[0].spends.push(missing);
                let height = self.applied();
                let err = self.store().apply_block(&block).unwrap_err().to_string();
                let want = format!("block {height} tx ");
                assert!(err.starts_with(&want), "{err}");
                assert!(err.contains(" spends missing output "), "{err}");
                assert_eq!(self.store().height(), tip.height());
            }
            Op::KeepSnapshot => {
                let snap = self.store().snapshot();
                self.kept = Some((snap, self.states[self.committed].clone()));
            }
        }
    }

    fn verify(&mut self) {
        let model = self.states[self.committed].clone();
        let store = self.store.as_ref().unwrap();
        check(&store.snapshot(), &model, &self.all_txids).unwrap();
        assert_eq!(store.reader().snapshot().height(), model.height());
        if let Some((snap, model)) = &self.kept {
            check(snap, model, &[]).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        for lean in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), options(lean)).unwrap();
            let mut h = Harness {
                dir,
                lean,
                store: Some(store),
                states: vec![Model::default()],
                blocks: Vec::new(),
                committed: 0,
                meta_pending: Vec::new(),
                undo_low: 0,
                all_txids: Vec::new(),
                kept: None,
            };
            for op in &ops {
                h.step(op);
                h.verify();
            }
            h.step(&Op::Reopen);
            h.verify();
        }
    }
}
