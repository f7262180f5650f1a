//! Header notifications from the real `ferrum` binary on the emulator: a mined block is
//! announced once; a reorg (two blocks replaced by three, or one by one at the same height)
//! is announced once, for the new tip only; sessions that subscribed to nothing hear nothing.

mod e2e_support;
mod protocol_support;

use std::time::Duration;

use e2e_support::{node_chain, FerrumProcess, Model};
use ferrum_tools::emulator::{Emulator, EmulatorConfig};
use protocol_support::{make_cert, Client};
use serde_json::{json, Value};

const SEED: u64 = 11;
const BLOCKS: u32 = 60;

/// Notifications until none came for `quiet` (the first may take up to 8 s: the indexer
/// polls the node).
async fn notifications(c: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    let mut wait = Duration::from_secs(8);
    while let Ok(note) = tokio::time::timeout(wait, c.recv_json()).await {
        out.push(note);
        wait = quiet;
    }
    out
}

fn header_note(model: &Model) -> Value {
    let tip = model.tip();
    json!({"jsonrpc": "2.0", "method": "blockchain.headers.subscribe",
           "params": [{"hex": model.header_hex(tip), "height": tip}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_new_tip_is_announced_once() {
    let emu = Emulator::start(EmulatorConfig::generated(SEED, BLOCKS)).unwrap();
    let cert_dir = tempfile::tempdir().unwrap();
    let Some((cert, key)) = make_cert(cert_dir.path()) else {
        return;
    };
    let server = FerrumProcess::start(&emu, &cert, &key);
    let mut c = Client::tcp(server.tcp).await;
    c.hello("1.6").await;
    let reply = c.call(1, "blockchain.headers.subscribe", json!([])).await;
    let model = Model::new(node_chain(&emu));
    assert_eq!(reply["result"], header_note(&model)["params"][0]);
    let mut silent = Client::tcp(server.tcp).await;
    silent.hello("1.6").await;
    let quiet = Duration::from_millis(1500);

    emu.mine(1).unwrap();
    let model = Model::new(node_chain(&emu));
    assert_eq!(notifications(&mut c, quiet).await, [header_note(&model)]);

    // Two blocks replaced by three: one announcement, of the new tip.
    emu.reorg(2, 3, 99).unwrap();
    let before = model;
    let model = Model::new(node_chain(&emu));
    assert_eq!(model.tip(), before.tip() + 1);
    assert_eq!(notifications(&mut c, quiet).await, [header_note(&model)]);

    // One block replaced at the same height: announced, though the height is unchanged.
    emu.reorg(1, 1, 7).unwrap();
    let same_height = Model::new(node_chain(&emu));
    assert_eq!(same_height.tip(), model.tip());
    assert_ne!(
        same_height.header_hex(model.tip()),
        model.header_hex(model.tip())
    );
    assert_eq!(
        notifications(&mut c, quiet).await,
        [header_note(&same_height)]
    );

    assert!(
        tokio::time::timeout(Duration::from_millis(200), silent.recv_json())
            .await
            .is_err(),
        "a session without subscriptions is not notified"
    );
}
