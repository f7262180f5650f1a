//! kill -9 at random moments of a sync: each restart resumes from the last commit, and the
//! finished index has the same `ferrum-db verify` digest as one built without interruption.
//! The killed indexer is this test binary run again as a child (`child_indexer`).

mod indexer_support;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indexer_support::*;

const CHILD_DB: &str = "FERRUM_TEST_CHILD_DB";
const CHILD_URL: &str = "FERRUM_TEST_CHILD_URL";

/// Indexes into `$FERRUM_TEST_CHILD_DB` from `$FERRUM_TEST_CHILD_URL` until killed. Only
/// meaningful when started by `kill_9_during_sync`.
#[test]
#[ignore = "run as a child process by kill_9_during_sync"]
fn child_indexer() {
    let (Ok(db), Ok(url)) = (std::env::var(CHILD_DB), std::env::var(CHILD_URL)) else {
        return;
    };
    runtime().block_on(async {
        let mut small_cache = settings(10);
        small_cache.cache_mb = 0; // commit after every block: many commit points to land in
        let run = start_indexer(db.as_ref(), daemon_for(url), small_cache);
        run.task.await.unwrap().unwrap();
    });
}

#[test]
fn kill_9_during_sync() {
    let emu = emulator(13, 400, 10);
    let url = format!("{}@{}", emu.credentials(), emu.rpc_addr());
    let (straight, killed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    runtime().block_on(index_to_tip(straight.path(), &emu, settings(10)));

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    println!("kill delays seeded with {seed}");
    let mut state = seed | 1;
    let mut heights = Vec::new();
    for _ in 0..8 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(5 + (state >> 33) % 250);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_indexer", "--nocapture"])
            .env(CHILD_DB, killed.path())
            .env(CHILD_URL, &url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let store = ferrum::indexer::open_store(killed.path(), regtest(), 10, 100).unwrap();
        heights.push(store.height());
    }
    println!("heights after each kill: {heights:?}");

    runtime().block_on(index_to_tip(killed.path(), &emu, settings(10)));
    assert_eq!(verify_digest(straight.path()), verify_digest(killed.path()));
}
