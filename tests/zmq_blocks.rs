//! New blocks announced over ZMQ: the real `ferrum` binary, polling the node for blocks only
//! every 10 minutes, learns of a block as soon as a real libzmq publisher
//! (`tools/zmq_publisher.py`, the library bitcoind publishes with) sends its `hashblock`,
//! finding the publisher through the node's `getzmqnotifications`; it subscribes again after
//! the publisher restarts, and moves to the new node's publisher when another node takes over
//! (the `daemon_url` command, failover) while the old one's is still up. Nodes without ZMQ,
//! and endpoints that refuse, get log lines that say what to change.

mod mempool_support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use ferrum_tools::emulator::{Auth, Emulator, EmulatorConfig};
use ferrum_tools::regtest::RegtestNode;
use mempool_support::*;
use serde_json::{json, Value};

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

/// A node of a chain both such nodes share, publishing `hashblock` through its own publisher;
/// the node's credentials are `auth`'s.
fn node_with_publisher(auth: Auth) -> (Emulator, Publisher) {
    let publisher = Publisher::bind("tcp://127.0.0.1:*");
    let mut config = EmulatorConfig::generated(5, 110);
    config.auth = auth;
    config.zmq_pubhashblock = Some(format!("tcp://127.0.0.1:{}", publisher.port));
    (Emulator::start(config).unwrap(), publisher)
}

/// The line the server logs when it subscribes at `publisher`.
fn subscribed_at(publisher: &Publisher) -> String {
    format!(
        "subscribed to the node's block notifications at tcp://127.0.0.1:{}",
        publisher.port
    )
}

/// The line the server logs when the node at `emu` takes over.
fn moved_to(emu: &Emulator) -> String {
    format!(
        "the node in use changed to 127.0.0.1:{}/: looking up its ZMQ publisher again",
        emu.rpc_addr().port()
    )
}

/// One call to the server's local RPC: its reply.
fn local_rpc(server: &Ferrum, method: &str, params: Value) -> Value {
    let mut stream = TcpStream::connect(server.rpc).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(stream, "{request}").unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
}

/// `daemon_url` switches to another node while the first one's publisher stays up: the next
/// block, announced only by the new node's publisher, still reaches wallets without polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_url_moves_the_subscription_to_the_new_nodes_publisher() {
    let (first, mut first_publisher) = node_with_publisher(Auth::Cookie(None));
    let (second, mut second_publisher) =
        node_with_publisher(Auth::UserPass("alice".into(), "secret".into()));
    let server = Ferrum::start(
        first.rpc_addr().port(),
        first.cookie_path().unwrap(),
        &[("DAEMON_POLL_INTERVAL_BLOCKS", NO_POLLING)],
    );
    wait_for_log(&server, &subscribed_at(&first_publisher), 1);
    let mut wallet = Wallet::connect(server.tcp, "1.4").await;
    let tip = wallet.call("blockchain.headers.subscribe", json!([])).await;
    assert_eq!(tip["height"], json!(110));
    mine_and_announce(&first, &mut first_publisher, &mut wallet).await;
    // The second node catches up: the same generated chain, so the same block.
    assert_eq!(second.mine(1).unwrap(), [first.best_hash()]);

    let port = second.rpc_addr().port();
    let url = format!("alice:secret@127.0.0.1:{port}");
    let reply = local_rpc(&server, "daemon_url", json!([url]));
    assert_eq!(
        reply["result"],
        format!("now using daemon at 127.0.0.1:{port}/"),
        "{reply}"
    );
    wait_for_log(&server, &moved_to(&second), 1);
    wait_for_log(&server, &subscribed_at(&second_publisher), 1);
    mine_and_announce(&second, &mut second_publisher, &mut wallet).await;
    assert_eq!(
        wallet.call("blockchain.headers.subscribe", json!([])).await["height"],
        json!(112)
    );
    // The first publisher was left when the node changed, not because it failed.
    assert!(
        !server.log_text().contains("stopped"),
        "{}",
        server.log_text()
    );
    server.stop();
}

/// The node in use goes down and the client fails over (found by mempool polling) while that
/// node's publisher stays up: the subscription moves to the next node's publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_moves_the_subscription_to_the_next_nodes_publisher() {
    let (first, first_publisher) = node_with_publisher(Auth::Cookie(None));
    let (second, mut second_publisher) =
        node_with_publisher(Auth::UserPass("alice".into(), "secret".into()));
    let urls = format!(
        "127.0.0.1:{},alice:secret@127.0.0.1:{}",
        first.rpc_addr().port(),
        second.rpc_addr().port()
    );
    let server = Ferrum::start(
        first.rpc_addr().port(),
        first.cookie_path().unwrap(),
        &[
            ("DAEMON_URL", &urls),
            ("DAEMON_POLL_INTERVAL_BLOCKS", NO_POLLING),
        ],
    );
    wait_for_log(&server, &subscribed_at(&first_publisher), 1);
    let mut wallet = Wallet::connect(server.tcp, "1.4").await;
    let tip = wallet.call("blockchain.headers.subscribe", json!([])).await;
    assert_eq!(tip["height"], json!(110));

    first.set_online(false).unwrap();
    wait_for_log(&server, &moved_to(&second), 1);
    wait_for_log(&server, &subscribed_at(&second_publisher), 1);
    mine_and_announce(&second, &mut second_publisher, &mut wallet).await;
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
