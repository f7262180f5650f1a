//! Indexer against the emulated node: initial sync checked against state computed from the
//! blocks, following the tip, restart, REST and JSON-RPC routes, and a DB of another network.

mod indexer_support;

use indexer_support::*;

use ferrum::indexer::{open_store, IndexError};

#[test]
fn initial_sync_then_follow_the_tip() {
    let emu = emulator(1, 130, 10);
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let run = start_indexer(dir.path(), emulator_daemon(&emu), settings(10));
        let tip = wait_for_tip(&run.handle, emu.best_hash()).await;
        assert_eq!(tip.height, 130);
        tokio::time::timeout(WAIT, run.handle.caught_up().wait_for(|c| *c))
            .await
            .unwrap()
            .unwrap();
        assert_index_matches(&run.reader.snapshot(), &emulator_chain(&emu));

        // New blocks are picked up by polling and committed at once, and their scripts are
        // announced.
        let mut changes = run.handle.subscribe_changes();
        for _ in 0..3 {
            let hashes = emu.mine(2).unwrap();
            let tip = wait_for_tip(&run.handle, *hashes.last().unwrap()).await;
            assert_eq!(tip.height, emu.height());
            assert_eq!(run.reader.snapshot().height(), Some(tip.height));
            let mut announced = std::collections::BTreeSet::new();
            loop {
                let change = changes.recv().await.unwrap();
                announced.extend(change.touched.as_deref().unwrap().iter().copied());
                if change.tip == Some(tip) {
                    break;
                }
            }
            let chain = emulator_chain(&emu);
            let new_blocks = &chain[chain.len() - 2..];
            assert_eq!(announced, touched_by(&chain[..chain.len() - 2], new_blocks));
        }
        assert_index_matches(&run.reader.snapshot(), &emulator_chain(&emu));
        run.stop().await;
    });
}

#[test]
fn restart_resumes_from_the_last_commit() {
    let emu = emulator(2, 120, 10);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let first_tip = rt.block_on(index_to_tip(dir.path(), &emu, settings(10)));
    emu.mine(15).unwrap();
    rt.block_on(async {
        let run = start_indexer(dir.path(), emulator_daemon(&emu), settings(10));
        assert_eq!(run.handle.current_tip(), Some(first_tip));
        wait_for_tip(&run.handle, emu.best_hash()).await;
        assert_index_matches(&run.reader.snapshot(), &emulator_chain(&emu));
        run.stop().await;
    });
}

#[test]
fn json_rpc_hex_route_when_rest_is_off() {
    let emu = emulator(3, 110, 10);
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let proxy = Proxy::start(emu.rpc_addr()).await;
        *proxy.rest.lock().unwrap() = false;
        let daemon = daemon_for(format!("{}@127.0.0.1:{}", emu.credentials(), proxy.port));
        let run = start_indexer(dir.path(), daemon.clone(), settings(10));
        wait_for_tip(&run.handle, emu.best_hash()).await;
        assert!(!daemon.rest_enabled());
        assert_index_matches(&run.reader.snapshot(), &emulator_chain(&emu));
        run.stop().await;
    });
}

#[test]
fn an_index_of_another_network_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let testnet = ferrum::coin::Network::lookup("Bitcoin", Some("testnet")).unwrap();
    // Without blocks a store takes the network it is opened for, back and forth.
    drop(open_store(dir.path(), testnet, 10, 100).unwrap());
    drop(open_store(dir.path(), regtest(), 10, 100).unwrap());
    drop(open_store(dir.path(), testnet, 10, 100).unwrap());
    let emu = emulator(3, 5, 5);
    runtime().block_on(index_to_tip(dir.path(), &emu, settings(10)));
    match open_store(dir.path(), testnet, 10, 100) {
        Err(IndexError::WrongDatabase(m)) => assert_eq!(
            m,
            format!(
                "DB_DIRECTORY {} holds an index of Bitcoin regtest, not Bitcoin testnet: use \
                 another DB_DIRECTORY or set COIN/NET to match",
                dir.path().display()
            )
        ),
        other => panic!("expected WrongDatabase, got {:?}", other.err()),
    }
}

#[test]
fn stopping_and_resuming_mid_sync_gives_the_same_index() {
    let emu = emulator(11, 150, 10);
    let (straight, resumed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    runtime().block_on(async {
        index_to_tip(straight.path(), &emu, settings(10)).await;

        // A tiny cache commits often; stop at a few points of the sync, then finish.
        let mut small_cache = settings(10);
        small_cache.cache_mb = 0;
        for delay_ms in [1, 5, 20] {
            let run = start_indexer(resumed.path(), emulator_daemon(&emu), small_cache.clone());
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            run.stop().await;
        }
        index_to_tip(resumed.path(), &emu, small_cache).await;
    });
    assert_eq!(
        verify_digest(straight.path()),
        verify_digest(resumed.path())
    );
}

#[test]
fn ferrum_db_info_lists_components() {
    let emu = emulator(12, 105, 10);
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(index_to_tip(dir.path(), &emu, settings(10)));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrum-db"))
        .arg("info")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with("height: 105\ntx count: "), "{stdout}");
    assert!(stdout.contains("network: Bitcoin regtest\n"), "{stdout}");
    assert!(stdout.contains("\n  total "), "{stdout}");

    // A reader that goes away (`| head`) ends it quietly, by SIGPIPE, with no panic. The
    // reader is gone before it starts, so that its first line meets the closed pipe.
    for command in ["info", "verify"] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrum-db"))
            .arg(command)
            .arg(dir.path())
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{command}: {stderr}"
        );
        assert!(stderr.is_empty(), "{command}: {stderr}");
    }
}
