//! Tuning knobs of a store, fixed when it is opened.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Keep undo records for this many most recent blocks (the reorg limit).
    pub undo_blocks: u32,
    /// Bound on the memory a merge (compaction) uses, in bytes.
    pub compaction_memory: usize,
    /// Keep every txid (32 bytes per tx, "full" mode). Without them ("lean" mode) the store
    /// cannot map a tx number to its txid; the txid index then holds whole txids, for the txs
    /// with unspent outputs only. Fixed when the first block is stored: opening a non-empty
    /// store in the other mode fails.
    pub store_txids: bool,
    /// Merges reading at least this many bytes run on a thread of their own and are
    /// installed by a later compaction, so that following the tip is not held up by a merge
    /// of a whole structure: history merges from any `Store::compact`, UTXO and txid index
    /// merges (which sort, in memory that is free only between blocks) from
    /// `Store::compact_at_tip`. `u64::MAX` runs every merge in the caller. The default, 4 MiB,
    /// keeps the merges that would hold a block at the tip for more than a few times its
    /// commit off the indexer's thread (docs/BENCHMARKS.md, "Following the tip").
    pub background_merge_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            undo_blocks: 200,
            compaction_memory: 64 << 20,
            store_txids: true,
            background_merge_bytes: 4 << 20,
        }
    }
}
