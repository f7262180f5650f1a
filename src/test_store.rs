//! Test support: a committed store in a fresh directory.

use ferrum_storage::{BlockData, Options, Store};
use tempfile::TempDir;

/// A store holding `blocks`, committed. Keep the directory for as long as the store is used.
pub(crate) fn committed_store(blocks: impl IntoIterator<Item = BlockData>) -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), Options::default()).unwrap();
    for block in blocks {
        store.apply_block(&block).unwrap();
    }
    store.commit().unwrap();
    (dir, store)
}
