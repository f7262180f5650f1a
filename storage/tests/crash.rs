//! Crash test: a child process (this test binary, re-executed) applies a deterministic chain
//! and commits, rolls back and compacts in a loop while the parent SIGKILLs it at random
//! moments. Every reopen must succeed and equal the model at the recovered height, which must
//! be at least the last height the child reported as committed (or the floor it announced
//! before a rollback, which lowers the committed height). It runs for a full store and for a
//! lean one, which must keep its mode across every crash.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{check, Chain, Rng};
use ferrum_storage::{Options, Store};

const CHILD_ENV: &str = "FERRUM_CRASH_CHILD_DIR";
/// Set (to anything) when the child's store is lean.
const LEAN_ENV: &str = "FERRUM_CRASH_CHILD_LEAN";
const SEED: u64 = 0x5eed_c4a5;
const KILLS: usize = 60;

fn options(lean: bool) -> Options {
    Options {
        undo_blocks: 6,
        compaction_memory: 1 << 16,
        store_txids: !lean,
        background_merge_bytes: 0,
    }
}

/// The child's loop. Runs only when re-executed by `kill_during_commits`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    // libtest has printed "test crash_child ... " without a newline: end that line first.
    println!();
    let lean = std::env::var_os(LEAN_ENV).is_some();
    let mut store = Store::open(dir.as_ref(), options(lean)).expect("reopen in child");
    println!("opened {}", store.height().map_or(-1, i64::from));
    let mut chain = Chain::new(SEED);
    let mut rng = Rng(std::process::id() as u64);
    loop {
        let next = store.height().map_or(0, |h| h + 1);
        for h in next..next + 1 + rng.below(3) as u32 {
            store.apply_block(chain.block(h)).expect("apply");
        }
        let op = rng.below(8);
        println!("applied {} op {op}", store.height().unwrap());
        match op {
            0 => {
                let n = (rng.below(4) as u32).min(store.height().unwrap());
                // A rollback lowers the committed height: announce the floor first.
                println!("floor {}", store.height().unwrap() - n);
                let top = store.height().unwrap() + 1;
                let spent = chain.rollback_txids(top, n, lean);
                store.rollback(n, &spent).expect("rollback");
            }
            1 if rng.below(2) == 0 => {
                store.compact().expect("compact");
            }
            1 => {
                store.compact_at_tip().expect("compact_at_tip");
            }
            2 => {
                store.compact_all().expect("compact_all");
            }
            _ => store.commit().expect("commit"),
        }
        println!("committed {}", store.height().unwrap());
    }
}

#[test]
fn kill_during_commits() {
    kill_during_commits_in(false, KILLS);
}

#[test]
fn kill_during_commits_of_a_lean_store() {
    kill_during_commits_in(true, KILLS / 2);
}

/// The two tests take turns: a child spawned by one inherits, until it execs, the writer
/// lock the other holds while it checks a reopen, and that other's next child then finds its
/// store locked.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn kill_during_commits_in(lean: bool, kills: usize) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut chain = Chain::new(SEED);
    let mut rng = Rng(0xc0ffee);
    let started = Instant::now();
    let mut recovered_heights = Vec::new();
    for round in 0..kills {
        let mut child = Command::new(&exe);
        child
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path());
        if lean {
            child.env(LEAN_ENV, "1");
        }
        let mut child = child
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        std::thread::sleep(Duration::from_millis(20 + rng.below(120)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        reader.join().unwrap();
        let printed: Vec<String> = rx.try_iter().collect();
        // The lowest height a reopen may find: the last commit the child reported, or the
        // target of a rollback it announced after that (a rollback commits pending blocks,
        // then the lower height). -1 = empty.
        let mut floor: Option<i64> = None;
        for line in &printed {
            let Some((what, h)) = line.split_once(' ') else {
                continue;
            };
            match what {
                "opened" | "committed" => floor = Some(h.parse().unwrap()),
                "floor" => floor = floor.min(Some(h.parse().unwrap())),
                _ => {}
            }
        }
        // Only the kill may end the child: a panic (an operation that failed) exits with 101.
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: child ended by itself ({status}; it printed {printed:?})"
        );

        let store = Store::open(dir.path(), options(lean))
            .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        assert_eq!(store.snapshot().stores_txids(), !lean, "round {round}");
        let height = store.height();
        let recovered = height.map_or(-1, i64::from);
        if let Some(floor) = floor {
            assert!(
                recovered >= floor,
                "round {round}: recovered {recovered}, below {floor} (child printed {printed:?})"
            );
        }
        let blocks = height.map_or(0, |h| h as usize + 1);
        check(&store.snapshot(), chain.state(blocks), &[]).unwrap();
        recovered_heights.push(height);
    }
    let progressed = recovered_heights.iter().filter(|h| h.is_some()).count();
    let err = Store::open(dir.path(), options(!lean)).err().unwrap();
    assert!(err.to_string().contains(" was built "), "{err}");
    assert!(
        progressed > kills / 2,
        "child rarely committed: {recovered_heights:?}"
    );
    eprintln!(
        "{kills} kills in {:?}; recovered heights {recovered_heights:?}",
        started.elapsed()
    );
}
