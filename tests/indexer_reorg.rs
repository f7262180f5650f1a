//! Reorganisations against the emulated node: within REORG_LIMIT (index equals the new
//! chain), beyond it (the indexer stops, index untouched), and the admin forced rollback.

mod indexer_support;

use std::time::Duration;

use indexer_support::*;

use ferrum::indexer::IndexError;

#[test]
fn reorg_within_the_limit_follows_the_new_chain() {
    let emu = emulator(4, 120, 10);
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let run = start_indexer(dir.path(), emulator_daemon(&emu), settings(10));
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

#[test]
fn forced_rollback_then_resync() {
    let emu = emulator(6, 110, 10);
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let run = start_indexer(dir.path(), emulator_daemon(&emu), settings(10));
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
        let deadline = tokio::time::Instant::now() + WAIT;
        while run.reader.snapshot().height() != Some(tip.height)
            || run.handle.current_tip() != Some(tip)
        {
            assert!(tokio::time::Instant::now() < deadline, "resync timed out");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(run.handle.current_tip(), Some(tip));
        assert_index_matches(&run.reader.snapshot(), &emulator_chain(&emu));
        run.stop().await;
    });
}
