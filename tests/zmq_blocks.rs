//! New blocks announced over ZMQ: the real `ferrum` binary, polling the node for blocks only
//! every 10 minutes, learns of a block as soon as a real libzmq publisher
//! (`tools/zmq_publisher.py`, the library bitcoind publishes with) sends its `hashblock`,
//! finding the publisher through the node's `getzmqnotifications`; it subscribes again after
//! the publisher restarts. Nodes without ZMQ, and endpoints that refuse, get log lines that
//! say what to change.

mod mempool_support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use ferrum_tools::emulator::{Emulator, EmulatorConfig};
use ferrum_tools::regtest::RegtestNode;
use mempool_support::*;
use serde_json::json;

/// Long enough that no block in these tests can be found by polling.
const NO_POLLING: &str = "600000";

/// `tools/zmq_publisher.py` bound to `endpoint`; killed on drop.
struct Publisher {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    port: u16,
}

impl Publisher {
    fn bind(endpoint: &str) -> Publisher {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/zmq_publisher.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(endpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs tools/zmq_publisher.py");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let bound = lines
            .next()
            .expect("the publisher says where it bound")
            .unwrap();
        let port = bound
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("unexpected publisher output {bound:?}"));
        Publisher {
            child,
            stdin,
            lines,
            port,
        }
    }

    fn publish(&mut self, hash: &str) {
        writeln!(self.stdin, "{hash}").unwrap();
        let sent = self.lines.next().unwrap().unwrap();
        assert!(sent.starts_with("sent "), "{sent}");
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the server's log holds `text` `times` times.
fn wait_for_log(server: &Ferrum, text: &str, times: usize) {
    let start = Instant::now();
    while server.log_text().matches(text).count() < times {
        assert!(
            start.elapsed() < WAIT,
            "no {text:?} (x{times}) in the log after {WAIT:?}:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mines a block and publishes its hash until the wallet is notified of it. A PUB socket drops
/// messages sent before the subscription reaches it, so the hash is sent again every second.
async fn mine_and_announce(emu: &Emulator, publisher: &mut Publisher, wallet: &mut Wallet) {
    let hash = emu.mine(1).unwrap()[0].to_string();
    let height = emu.height();
    let start = Instant::now();
    loop {
        let sent = Instant::now();
        publisher.publish(&hash);
        if let Some((at, note)) = wallet.notification_within(Duration::from_secs(1)).await {
            assert_eq!(note["method"], "blockchain.headers.subscribe");
            assert_eq!(note["params"][0]["height"], json!(height));
            // For the record (run with --nocapture), not a bound: from publishing to the wallet.
            eprintln!(
                "block {height}: announced to the wallet {:.1} ms after its hashblock",
                at.duration_since(sent).as_secs_f64() * 1000.0
            );
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "block {height} not announced to the wallet within {WAIT:?} of mining it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_announced_over_zmq_reach_wallets_without_polling() {
    let mut publisher = Publisher::bind("tcp://127.0.0.1:*");
    let mut config = EmulatorConfig::generated(5, 110);
    // Bound to every interface, as bitcoin.conf often has it: reached at the RPC host.
    config.zmq_pubhashblock = Some(format!("tcp://0.0.0.0:{}", publisher.port));
    let emu = Emulator::start(config).unwrap();
    let server = Ferrum::start(
        emu.rpc_addr().port(),
        emu.cookie_path().unwrap(),
        &[("DAEMON_POLL_INTERVAL_BLOCKS", NO_POLLING)],
    );
    let endpoint = format!("tcp://127.0.0.1:{}", publisher.port);
    let subscribed = format!("subscribed to the node's block notifications at {endpoint}");
    wait_for_log(&server, &subscribed, 1);

    let mut wallet = Wallet::connect(server.tcp, "1.4").await;
    let tip = wallet.call("blockchain.headers.subscribe", json!([])).await;
    assert_eq!(tip["height"], json!(110));
    mine_and_announce(&emu, &mut publisher, &mut wallet).await;
    mine_and_announce(&emu, &mut publisher, &mut wallet).await;

    // The publisher restarts (bitcoind restarting): the server notices, subscribes again.
    drop(publisher);
    wait_for_log(
        &server,
        &format!(
            "block notifications from {endpoint} stopped: the publisher closed the connection; \
             polling the node for blocks, retrying ZMQ"
        ),
        1,
    );
    let mut publisher = Publisher::bind(&endpoint);
    wait_for_log(&server, &subscribed, 2);
    mine_and_announce(&emu, &mut publisher, &mut wallet).await;
    assert_eq!(
        wallet.call("blockchain.headers.subscribe", json!([])).await["height"],
        json!(113)
    );
    server.stop();
}

#[test]
fn nodes_without_zmq_are_polled_and_the_log_says_what_to_add() {
    let polling = "polling the node for blocks, retrying ZMQ";
    // Built with ZMQ, started without -zmqpubhashblock: getzmqnotifications answers [].
    let emu = Emulator::start(EmulatorConfig::generated(5, 5)).unwrap();
    let server = Ferrum::start(emu.rpc_addr().port(), emu.cookie_path().unwrap(), &[]);
    wait_for_log(
        &server,
        &format!(
            "the node publishes no hashblock over ZMQ; add \
             zmqpubhashblock=tcp://127.0.0.1:28332 to bitcoin.conf to learn of new blocks at \
             once; {polling}"
        ),
        1,
    );
    server.stop();

    // Our cached bitcoind is built without ZMQ: it has no getzmqnotifications.
    let node = RegtestNode::start().unwrap();
    let server = Ferrum::start(node.rpc_port(), node.cookie_path(), &[]);
    wait_for_log(
        &server,
        &format!(
            "the node was built without ZMQ (it has no getzmqnotifications): a bitcoind built \
             with ZMQ and zmqpubhashblock=tcp://127.0.0.1:28332 in bitcoin.conf announces new \
             blocks at once; {polling}"
        ),
        1,
    );
    server.stop();

    let server = Ferrum::start(
        emu.rpc_addr().port(),
        emu.cookie_path().unwrap(),
        &[("DAEMON_ZMQ", "off")],
    );
    wait_for_log(
        &server,
        "ZMQ block notifications off (DAEMON_ZMQ=off): polling the node for blocks",
        1,
    );
    assert!(!server.log_text().contains("getzmqnotifications"));
    server.stop();
}

#[test]
fn an_unreachable_endpoint_is_reported() {
    let emu = Emulator::start(EmulatorConfig::generated(5, 5)).unwrap();
    let closed = format!("tcp://127.0.0.1:{}", free_port());
    let server = Ferrum::start(
        emu.rpc_addr().port(),
        emu.cookie_path().unwrap(),
        &[("DAEMON_ZMQ", &closed)],
    );
    wait_for_log(
        &server,
        &format!(
            "cannot subscribe to {closed}: Connection refused (os error 111); polling the node \
             for blocks, retrying ZMQ"
        ),
        1,
    );
    server.stop();
}
