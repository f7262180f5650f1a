//! DESIGN.md's target "a server with 1,000 idle sessions, each subscribed to 10 script hashes,
//! stays responsive", against the real binary on the emulator: 1,000 TCP sessions negotiate
//! and subscribe to the headers and 10 distinct scripts each; a fresh session is then answered
//! (ping, get_balance), and a mined block reaches every session as a header notification and
//! the sessions holding a script it touches as that script's new status, no one else.
//!
//! All sessions come from 127.0.0.1, as an operator's load test would: loopback is exempt from
//! the per-subnet cost groups, and `MAX_SESSIONS` is raised above the 1,001 wallet sessions.
//! The test process and the server each hold one descriptor per session, so the soft
//! `ulimit -n` must allow it (checked first). Response times and the server's RSS are printed
//! (`-- --nocapture`), never asserted; docs/BENCHMARKS.md ("Idle sessions") records them.

mod e2e_support;
mod protocol_support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin::hashes::{sha256, Hash};
use bitcoin::{Block, ScriptBuf};
use e2e_support::{free_port, node_chain, script_hash, Model};
use ferrum_tools::chaingen::{ChainGenerator, ChainParams};
use ferrum_tools::emulator::{ChainSource, Emulator, EmulatorConfig};
use protocol_support::Client;
use serde_json::{json, Value};
use tokio::task::JoinSet;

const SEED: u64 = 11;
const BLOCKS: u32 = 60;
const SESSIONS: usize = 1000;
const SCRIPTS_PER_SESSION: usize = 10;
/// Every tenth session holds one script the mined block touches.
const TOUCHED_EVERY: usize = 10;
/// Bound on everything after the server is up: sessions, probes and notifications.
const TEST_BOUND: Duration = Duration::from_secs(60);
/// Sessions being set up at once.
const CONNECTING: usize = 50;
/// Requests timed on the fresh session, per method.
const PROBES: usize = 200;

/// The `ferrum` binary on the emulator, TCP only, with the session limit an operator raises
/// for this many connections; killed on drop.
struct Server {
    child: Child,
    tcp: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(emu: &Emulator) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let tcp = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.path().join("ferrum.log");
        let child = Command::new(env!("CARGO_BIN_EXE_ferrum"))
            .env_clear()
            .env("DB_DIRECTORY", dir.path().join("db"))
            .env("NET", "regtest")
            .env("DAEMON_URL", format!("127.0.0.1:{}", emu.rpc_addr().port()))
            .env("DAEMON_COOKIE_FILE", emu.cookie_path().unwrap())
            .env("SERVICES", format!("tcp://{tcp}"))
            .env("PEER_DISCOVERY", "off")
            .env("MAX_SESSIONS", (SESSIONS + 100).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            tcp,
            log,
            _dir: dir,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(tcp).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("ferrum exited with {status}:\n{}", server.log_text());
            }
            assert!(
                start.elapsed() < TEST_BOUND,
                "wallet port not open after {TEST_BOUND:?}:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process's resident set, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The soft limit on open files, from /proc/self/limits.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files in /proc/self/limits");
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// A script no block pays: P2WPKH of a hash of `n`.
fn unused_script(n: usize) -> ScriptBuf {
    let hash = sha256::Hash::hash(format!("idle session script {n}").as_bytes());
    let mut bytes = vec![0x00, 0x14];
    bytes.extend_from_slice(&hash.to_byte_array()[..20]);
    ScriptBuf::from_bytes(bytes)
}

/// Every script a block touches: those its outputs pay and those its inputs spend from.
fn touched_by(block: &Block, model: &Model) -> Vec<ScriptBuf> {
    let mut seen = HashSet::new();
    let paid = block
        .txdata
        .iter()
        .flat_map(|t| &t.output)
        .map(|o| &o.script_pubkey);
    let spent = block.txdata[1..]
        .iter()
        .flat_map(|t| &t.input)
        .filter_map(|i| model.output(&i.previous_output))
        .map(|o| &o.script_pubkey);
    paid.chain(spent)
        .filter(|s| !s.is_op_return())
        .filter(|s| seen.insert((*s).clone()))
        .cloned()
        .collect()
}

/// Session `i`'s scripts: chain scripts the next block leaves alone (then never-used ones),
/// and for every tenth session one the block touches, first.
fn session_scripts(i: usize, untouched: &[ScriptBuf], touched: &[ScriptBuf]) -> Vec<ScriptBuf> {
    let mut scripts: Vec<ScriptBuf> = (0..SCRIPTS_PER_SESSION)
        .map(|j| {
            let k = i * SCRIPTS_PER_SESSION + j;
            untouched
                .get(k)
                .cloned()
                .unwrap_or_else(|| unused_script(k))
        })
        .collect();
    if i.is_multiple_of(TOUCHED_EVERY) {
        scripts[0] = touched[(i / TOUCHED_EVERY) % touched.len()].clone();
    }
    scripts
}

async fn connect(addr: SocketAddr) -> Client {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    Client::from_tcp(stream)
}

/// Opens a session: server.version, then the header and script subscriptions pipelined;
/// checks each script's status against the model.
async fn open_session(addr: SocketAddr, scripts: Vec<(String, Value)>) -> Client {
    let mut c = connect(addr).await;
    c.hello("1.4").await;
    c.send(
        &json!({"jsonrpc": "2.0", "id": 0, "method": "blockchain.headers.subscribe", "params": []})
            .to_string(),
    )
    .await;
    for (n, (hash, _)) in scripts.iter().enumerate() {
        let request = json!({"jsonrpc": "2.0", "id": n + 1, "method": "blockchain.scripthash.subscribe",
                             "params": [hash]});
        c.send(&request.to_string()).await;
    }
    for _ in 0..=scripts.len() {
        let reply = c.recv_json().await;
        let id = reply["id"].as_u64().unwrap() as usize;
        assert!(reply.get("error").is_none(), "{reply}");
        if id > 0 {
            assert_eq!(
                reply["result"],
                scripts[id - 1].1,
                "status of {}",
                scripts[id - 1].0
            );
        }
    }
    c
}

/// Median, 99th percentile and maximum of the times, in ms.
fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(*times.last().unwrap())
    )
}

/// Times `PROBES` calls of `method` on a session, checking each answer.
async fn probe(c: &mut Client, method: &str, params: Value, expected: &Value) -> Vec<Duration> {
    let mut times = Vec::with_capacity(PROBES);
    for id in 0..PROBES {
        let start = Instant::now();
        let reply = c.call(id as u64, method, params.clone()).await;
        times.push(start.elapsed());
        assert_eq!(&reply["result"], expected, "{method}: {reply}");
    }
    times
}

/// A new session's first answer (server.version), then `PROBES` pings and get_balance calls
/// of `script`, timed; printed under `label`.
async fn time_a_new_session(addr: SocketAddr, label: &str, script: &ScriptBuf, balance: Value) {
    let mut c = connect(addr).await;
    let started = Instant::now();
    c.hello("1.4").await;
    let first_answer = started.elapsed();
    let pings = probe(&mut c, "server.ping", json!([]), &Value::Null).await;
    let params = json!([script_hash(script)]);
    let method = "blockchain.scripthash.get_balance";
    let balances = probe(&mut c, method, params, &balance).await;
    println!(
        "{label}: server.version {:.2} ms; server.ping {}; get_balance {}",
        first_answer.as_secs_f64() * 1000.0,
        summary(pings),
        summary(balances)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_sessions_stay_responsive() {
    let needed = (SESSIONS + 200) as u64;
    let limit = open_files_limit();
    assert!(
        limit >= needed,
        "this test holds {SESSIONS} connections (and the server as many): raise the soft \
         open-files limit (ulimit -n) from {limit} to at least {needed}"
    );

    let emu = Emulator::start(EmulatorConfig::new(ChainSource::Generated {
        params: ChainParams::medium(SEED),
        blocks: BLOCKS,
    }))
    .unwrap();
    let model = Model::new(node_chain(&emu));
    // The emulator keeps mining with the same generator: the next block is known now.
    let mut gen = ChainGenerator::new(ChainParams::medium(SEED));
    for _ in 0..BLOCKS {
        gen.next_block();
    }
    let next = gen.next_block();
    let touched = touched_by(&next, &model);
    let touched_set: HashSet<&ScriptBuf> = touched.iter().collect();
    let untouched: Vec<ScriptBuf> = model
        .scripts_by_reuse()
        .into_iter()
        .filter(|s| !touched_set.contains(s))
        .collect();
    let heaviest = untouched[0].clone();

    let server = Server::start(&emu);
    let balance = model.balance_json(&heaviest);
    let outcome = tokio::time::timeout(TEST_BOUND, async {
        println!(
            "get_balance of a script with {} history entries",
            model.histories[&heaviest].len()
        );
        time_a_new_session(server.tcp, "alone", &heaviest, balance.clone()).await;
        let rss_before = server.rss_kib();

        // 1,000 sessions, 10 scripts each.
        let opened = Instant::now();
        let mut sessions: Vec<Option<Client>> = (0..SESSIONS).map(|_| None).collect();
        let mut setting_up = JoinSet::new();
        for i in 0..SESSIONS {
            if setting_up.len() == CONNECTING {
                let (i, c) = setting_up.join_next().await.unwrap().unwrap();
                sessions[i] = Some(c);
            }
            let scripts: Vec<(String, Value)> = session_scripts(i, &untouched, &touched)
                .iter()
                .map(|s| (script_hash(s), model.status(s)))
                .collect();
            let addr = server.tcp;
            setting_up.spawn(async move { (i, open_session(addr, scripts).await) });
        }
        while let Some(joined) = setting_up.join_next().await {
            let (i, c) = joined.unwrap();
            sessions[i] = Some(c);
        }
        let mut sessions: Vec<Client> = sessions.into_iter().map(Option::unwrap).collect();
        let open_time = opened.elapsed();
        let rss_idle = server.rss_kib();

        // A fresh session among them is answered.
        let label = format!("with {SESSIONS} idle sessions");
        time_a_new_session(server.tcp, &label, &heaviest, balance).await;

        // A mined block: the header to all, each touched script's status to its holders.
        let after = Model::new(model.blocks.iter().chain([&next]).cloned().collect());
        let tip = after.tip();
        let header = json!({"jsonrpc": "2.0", "method": "blockchain.headers.subscribe",
                            "params": [{"hex": after.header_hex(tip), "height": tip}]});
        let mined = Instant::now();
        emu.mine(1).unwrap();
        let mut listening = JoinSet::new();
        for (i, mut c) in sessions.drain(..).enumerate() {
            let mut expected = vec![header.clone()];
            if i.is_multiple_of(TOUCHED_EVERY) {
                let script = &session_scripts(i, &untouched, &touched)[0];
                assert_ne!(after.status(script), model.status(script));
                expected.push(json!({"jsonrpc": "2.0",
                                     "method": "blockchain.scripthash.subscribe",
                                     "params": [script_hash(script), after.status(script)]}));
            }
            listening.spawn(async move {
                let mut got = Vec::new();
                for _ in 0..expected.len() {
                    got.push(c.recv_json().await);
                }
                let key = |v: &Value| v.to_string();
                got.sort_by_key(key);
                expected.sort_by_key(key);
                assert_eq!(got, expected, "session {i}");
                (i, c, mined.elapsed())
            });
        }
        assert_eq!(
            node_chain(&emu).last(),
            Some(&next),
            "the generator predicted the block"
        );
        let (mut first_notified, mut last_notified) = (Duration::MAX, Duration::ZERO);
        let mut notified = Vec::new();
        while let Some(joined) = listening.join_next().await {
            let (i, c, at) = joined.unwrap();
            first_notified = first_notified.min(at);
            last_notified = last_notified.max(at);
            notified.push((i, c));
        }
        // Nothing more for anyone (a second of quiet, all sessions at once).
        let mut quiet = JoinSet::new();
        for (i, mut c) in notified {
            quiet.spawn(async move {
                let extra = tokio::time::timeout(Duration::from_secs(1), c.recv()).await;
                assert!(extra.is_err(), "session {i} got more: {extra:?}");
            });
        }
        while let Some(joined) = quiet.join_next().await {
            joined.unwrap();
        }
        println!(
            "{SESSIONS} sessions x {SCRIPTS_PER_SESSION} scripts opened in {:.2} s",
            open_time.as_secs_f64()
        );
        println!(
            "mined block: first session notified {:.0} ms after the mine call (the server polls \
             the node each second), the last {:.0} ms after the first",
            first_notified.as_secs_f64() * 1000.0,
            (last_notified - first_notified).as_secs_f64() * 1000.0
        );
        println!(
            "server RSS: {} KiB before the sessions, {} KiB with them ({:.1} KiB a session)",
            rss_before,
            rss_idle,
            (rss_idle.saturating_sub(rss_before)) as f64 / SESSIONS as f64
        );
    })
    .await;
    assert!(
        outcome.is_ok(),
        "not done within {TEST_BOUND:?}:\n{}",
        server.log_text()
    );
}
