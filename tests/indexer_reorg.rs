//! Reorganisations against the emulated node: within REORG_LIMIT (index equals the new
//! chain), beyond it or beyond the undo records (the indexer stops, index untouched, and says
//! whether a higher REORG_LIMIT would do), and the admin forced rollback;
//! the rollbacks also in lean mode (no txids stored: the rolled-back blocks are fetched).

mod indexer_support;

use std::time::Duration;

use indexer_support::*;

use ferrum::config::IndexMode;
use ferrum::indexer::{IndexError, Tip};
use ferrum_tools::emulator::Emulator;

/// Waits until the indexer, after a forced rollback, has synced back to `tip`.
async fn wait_for_resync(run: &Running, tip: Tip) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while run.reader.snapshot().height() != Some(tip.height)
        || run.handle.current_tip() != Some(tip)
    {
        assert!(tokio::time::Instant::now() < deadline, "resync timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn reorg_within_the_limit_follows_the_new_chain() {
    reorg_within_the_limit_follows_the_new_chain_in(IndexMode::Full);
}

#[test]
fn reorg_within_the_limit_follows_the_new_chain_in_lean_mode() {
    reorg_within_the_limit_follows_the_new_chain_in(IndexMode::Lean);
}

fn reorg_within_the_limit_follows_the_new_chain_in(mode: IndexMode) {
    let emu = emulator(4, 120, 10);
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let run = start_indexer_in(dir.path(), emulator_daemon(&emu), settings(10), mode);
        wait_for_tip(&run.handle, emu.best_hash()).await;
        let old_chain = emulator_chain(&emu);
        // Replace the last 3 blocks with 5 others, then with a shorter branch of 2.
        let mut changes = run.handle.subscribe_changes();
        for (depth, blocks, salt) in [(3, 5, 7), (4, 2, 8)] {
            let new = emu.reorg(depth, blocks, salt).unwrap();
            let tip = wait_for_tip(&run.handle, *new.last().unwrap()).await;
            // What changed is unknown once blocks are undone: the first change after the
            // rollback tells clients to check everything.
            let first = changes.recv().await.unwrap();
            assert!(first.touched.is_none(), "{first:?}");
            let mut last = first;
            while last.tip != Some(tip) {
                last = changes.recv().await.unwrap();
            }
            assert_eq!(tip.height, emu.height());
            let chain = emulator_chain(&emu);
            assert_ne!(
                chain.last().unwrap().block_hash(),
                old_chain.last().unwrap().block_hash()
            );
            assert_index_matches(&run.reader.snapshot(), &chain);
        }
        run.stop().await;
    });
}

#[test]
fn reorg_beyond_the_limit_stops_and_leaves_the_index_alone() {
    let emu = emulator(5, 115, 10);
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let run = start_indexer(dir.path(), emulator_daemon(&emu), settings(3));
        let tip = wait_for_tip(&run.handle, emu.best_hash()).await;
        let chain = emulator_chain(&emu);
        emu.reorg(5, 6, 11).unwrap();
        let err = tokio::time::timeout(WAIT, run.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        match &err {
            IndexError::ReorgTooDeep(m) => assert_eq!(
                m,
                &format!(
                    "the node's chain forked from ours at height {}, 5 blocks under our tip at \
                     height {}, more than REORG_LIMIT (3); the index is left unchanged at that \
                     height: rebuild it in an empty DB_DIRECTORY",
                    tip.height - 5,
                    tip.height
                )
            ),
            other => panic!("expected ReorgTooDeep, got {other}"),
        }
        assert_eq!(run.handle.current_tip(), Some(tip));
        assert_index_matches(&run.reader.snapshot(), &chain);
    });
}

/// Runs the indexer on `dir` with `limit` after the node's chain was reorganised `depth`
/// blocks under its tip, and returns why it stopped.
async fn stopped_by_reorg(dir: &std::path::Path, emu: &Emulator, limit: u32) -> String {
    let run = start_indexer(dir, emulator_daemon(emu), settings(limit));
    match tokio::time::timeout(WAIT, run.task).await.unwrap().unwrap() {
        Err(IndexError::ReorgTooDeep(m)) => m,
        other => panic!("expected ReorgTooDeep, got {other:?}"),
    }
}

#[test]
fn a_reorg_past_the_limit_says_how_to_go_on() {
    let emu = emulator(7, 115, 10);
    let (kept, short) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    runtime().block_on(async {
        // Undo records for 10 blocks, then REORG_LIMIT lowered to 3.
        let tip = index_to_tip(kept.path(), &emu, settings(10)).await;
        // Undo records for 3 blocks, then REORG_LIMIT raised to 10.
        index_to_tip(short.path(), &emu, settings(3)).await;
        emu.reorg(5, 6, 12).unwrap();
        let forked = format!(
            "the node's chain forked from ours at height {}, 5 blocks under our tip at height {}",
            tip.height - 5,
            tip.height
        );

        // The records still reach the fork: a higher REORG_LIMIT is all it takes.
        assert_eq!(
            stopped_by_reorg(kept.path(), &emu, 3).await,
            format!(
                "{forked}, more than REORG_LIMIT (3); the index is left unchanged at that \
                 height: restart with REORG_LIMIT=5 or more to follow the node's chain, or \
                 rebuild the index in an empty DB_DIRECTORY"
            )
        );
        let run = start_indexer(kept.path(), emulator_daemon(&emu), settings(5));
        wait_for_tip(&run.handle, emu.best_hash()).await;
        assert_index_matches(&run.reader.snapshot(), &emulator_chain(&emu));
        run.stop().await;

        // Within the raised limit, but the records stop short of the fork.
        assert_eq!(
            stopped_by_reorg(short.path(), &emu, 10).await,
            format!(
                "{forked}, but undo records reach only 3 blocks back (they were written under a \
                 lower REORG_LIMIT); the index is left unchanged at that height: rebuild it in \
                 an empty DB_DIRECTORY"
            )
        );
    });
}

#[test]
fn forced_rollback_then_resync() {
    forced_rollback_then_resync_in(IndexMode::Full);
}

#[test]
fn forced_rollback_then_resync_in_lean_mode() {
    forced_rollback_then_resync_in(IndexMode::Lean);
}

fn forced_rollback_then_resync_in(mode: IndexMode) {
    let emu = emulator(6, 110, 10);
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let run = start_indexer_in(dir.path(), emulator_daemon(&emu), settings(10), mode);
        let tip = wait_for_tip(&run.handle, emu.best_hash()).await;
        match run.handle.force_rollback(11).await {
            Err(IndexError::Invalid(m)) => {
                assert_eq!(m, "cannot roll back 11 blocks: REORG_LIMIT is 10")
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        assert_eq!(
            run.handle.force_rollback(4).await.unwrap(),
            Some(tip.height - 4)
        );
        // The indexer syncs the same blocks again.
        wait_for_resync(&run, tip).await;
        assert_eq!(run.handle.current_tip(), Some(tip));
        assert_index_matches(&run.reader.snapshot(), &emulator_chain(&emu));
        run.stop().await;
    });
}

#[test]
fn a_lean_rollback_reads_the_blocks_from_the_node_in_chunks() {
    let emu = emulator(7, 110, 10);
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let proxy = Proxy::start(emu.rpc_addr()).await;
        let daemon = daemon_for(format!("{}@127.0.0.1:{}", emu.credentials(), proxy.port));
        let run = start_indexer_in(dir.path(), daemon, settings(200), IndexMode::Lean);
        let tip = wait_for_tip(&run.handle, emu.best_hash()).await;
        // A block the node cannot give: the rollback is refused, the index left as it was.
        let chain = emulator_chain(&emu);
        let missing = chain[tip.height as usize - 1].block_hash();
        proxy.faults.lock().unwrap().insert(missing, Fault::Missing);
        match run.handle.force_rollback(3).await {
            Err(IndexError::Invalid(m)) => assert_eq!(
                m,
                format!(
                    "cannot roll back block {missing} at height {}: the node cannot give it \
                     (the node has no block {missing}); a lean index (INDEX_MODE=lean) reads \
                     the blocks it rolls back from the node, which must keep them (bitcoind \
                     does, unless pruned): restore the block, or rebuild the index in an \
                     empty DB_DIRECTORY",
                    tip.height - 1
                )
            ),
            other => panic!("expected Invalid, got {other:?}"),
        }
        assert_eq!(run.reader.snapshot().height(), Some(tip.height));
        proxy.faults.lock().unwrap().clear();
        // 105 blocks: two store rollbacks (100, then 5), then the same blocks again.
        assert_eq!(
            run.handle.force_rollback(105).await.unwrap(),
            Some(tip.height - 105)
        );
        wait_for_resync(&run, tip).await;
        assert_index_matches(&run.reader.snapshot(), &chain);
        run.stop().await;
    });
}
