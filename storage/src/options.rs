//! Tuning knobs of a store, fixed when it is opened.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Keep undo records for this many most recent blocks (the reorg limit).
    pub undo_blocks: u32,
    /// Bound on the memory a merge (compaction) uses, in bytes.
    pub compaction_memory: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            undo_blocks: 200,
            compaction_memory: 64 << 20,
        }
    }
}
