//! Bad data and an unready node: a malformed block, a block other than the one asked for, a
//! missing block (each: retried, then a clear stop with only whole blocks indexed, and a
//! clean resume once the node behaves), and a node warming up at start.

mod indexer_support;

use std::time::Duration;

use indexer_support::*;

use ferrum::indexer::IndexError;
use ferrum_tools::emulator::{Emulator, EmulatorConfig};

/// Syncs through a proxy that applies `fault` to the block at height 60; returns the error.
fn sync_with_fault(
    seed: u64,
    mut fault: impl FnMut(&[bitcoin::Block]) -> Fault,
) -> (String, String) {
    let emu = emulator(seed, 80, 10);
    let chain = emulator_chain(&emu);
    let bad = chain[60].block_hash();
    let dir = tempfile::tempdir().unwrap();
    let message = runtime().block_on(async {
        let proxy = Proxy::start(emu.rpc_addr()).await;
        proxy.faults.lock().unwrap().insert(bad, fault(&chain));
        let daemon = daemon_for(format!("{}@127.0.0.1:{}", emu.credentials(), proxy.port));
        let run = start_indexer(dir.path(), daemon.clone(), settings(10));
        let err = tokio::time::timeout(WAIT, run.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        // Every block before the bad one is indexed, whole, and nothing after it.
        assert_index_matches(&run.reader.snapshot(), &chain[..60]);
        assert!(matches!(err, IndexError::BadBlock(_)), "{err}");

        // Once the node sends the right block, a restart picks up where it stopped.
        proxy.faults.lock().unwrap().clear();
        let run = start_indexer(dir.path(), daemon, settings(10));
        wait_for_tip(&run.handle, emu.best_hash()).await;
        assert_index_matches(&run.reader.snapshot(), &chain);
        run.stop().await;
        err.to_string()
    });
    (message, bad.to_string())
}

#[test]
fn malformed_block() {
    let (message, bad) = sync_with_fault(7, |_| Fault::Corrupt);
    assert!(
        message.starts_with(&format!(
            "malformed block {bad} at height 60 from the node: "
        )) && message.ends_with(" (3 attempts); the index stays at height 59"),
        "{message}"
    );
}

#[test]
fn wrong_block() {
    let mut other = String::new();
    let (message, bad) = sync_with_fault(8, |chain| {
        other = chain[61].block_hash().to_string();
        Fault::WrongBlock(chain[61].block_hash())
    });
    assert_eq!(
        message,
        format!(
            "the node sent block {other} when asked for block {bad} at height 60 (3 attempts); \
             the index stays at height 59"
        )
    );
}

#[test]
fn missing_block() {
    let (message, bad) = sync_with_fault(9, |_| Fault::Missing);
    assert_eq!(
        message,
        format!(
            "fetching block at height 60: the node has no block {bad} (3 attempts); the index \
             stays at height 59"
        )
    );
}

#[test]
fn node_warming_up_at_start() {
    let mut config = EmulatorConfig::generated(10, 105);
    config.warmup = Some((
        "Loading block index…".into(),
        Some(Duration::from_millis(1500)),
    ));
    let emu = Emulator::start(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let run = start_indexer(dir.path(), emulator_daemon(&emu), settings(10));
        wait_for_tip(&run.handle, emu.best_hash()).await;
        assert_index_matches(&run.reader.snapshot(), &emulator_chain(&emu));
        run.stop().await;
    });
}
