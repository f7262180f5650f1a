//! Mempool test support: the real `ferrum` binary with fast polling on an emulated or real
//! node, a wallet client that keeps notifications apart from answers, transactions made to
//! order, and the answers a wallet must get, computed here from the node's chain and mempool
//! alone (never with ferrum's code).
#![allow(dead_code)] // each test binary uses a different part

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin::hashes::{sha256, Hash};
use bitcoin::hex::DisplayHex;
use bitcoin::{
    absolute, transaction, Amount, Block, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut,
    Txid, WPubkeyHash, Witness,
};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[path = "../e2e_support/mod.rs"]
pub mod e2e_support;
pub use e2e_support::{free_port, node_call, node_chain, script_hash, Model};

/// How long the server may take to index the chain and open its wallet port.
const START_WAIT: Duration = Duration::from_secs(60);
/// Liveness bound on any one answer or awaited notification (not a performance figure).
pub const WAIT: Duration = Duration::from_secs(30);

/// A running `ferrum` process (killed on drop) serving TCP wallets and the local RPC.
pub struct Ferrum {
    child: Child,
    pub tcp: SocketAddr,
    pub rpc: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ferrum {
    /// Starts the binary on the node at `port` (cookie auth) with a fresh store, polling the
    /// node's tip every 100 ms; `extra` adds environment variables (e.g. the mempool poll
    /// interval). Returns once the wallet port accepts connections (the index caught up).
    pub fn start(port: u16, cookie: &Path, extra: &[(&str, &str)]) -> Ferrum {
        let mut server = Ferrum::spawn(&format!("127.0.0.1:{port}"), cookie, extra);
        let start = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("ferrum exited with {status}:\n{}", server.log_text());
            }
            if std::net::TcpStream::connect(server.tcp).is_ok() {
                return server;
            }
            assert!(
                start.elapsed() < START_WAIT,
                "wallet port not open after {START_WAIT:?}:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the binary on the nodes of `daemon_url` as [`Ferrum::start`] does, without
    /// waiting for anything.
    pub fn spawn(daemon_url: &str, cookie: &Path, extra: &[(&str, &str)]) -> Ferrum {
        let dir = tempfile::tempdir().unwrap();
        let tcp = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let rpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.path().join("ferrum.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferrum"));
        command
            .env_clear()
            .envs(e2e_support::index_mode())
            .env("DB_DIRECTORY", dir.path().join("db"))
            .env("NET", "regtest")
            .env("DAEMON_URL", daemon_url)
            .env("DAEMON_COOKIE_FILE", cookie)
            .env("SERVICES", format!("tcp://{tcp},rpc://{rpc}"))
            .env("PEER_DISCOVERY", "off")
            .env("DAEMON_POLL_INTERVAL_BLOCKS", "100")
            // The tests' hundreds of queries a session would otherwise be throttled.
            .env("COST_SOFT_LIMIT", "0")
            .env("COST_HARD_LIMIT", "0");
        for (name, value) in extra {
            command.env(name, value);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Ferrum {
            child,
            tcp,
            rpc,
            log,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server with SIGTERM and waits for it (bounded; SIGKILL after 20 s).
    pub fn stop(self) {
        let _ = self.terminate();
    }

    /// Sends SIGTERM and waits for the exit, at most 20 s: the status (None if it did not
    /// exit; it is killed on drop) and the log.
    pub fn terminate(self) -> (Option<std::process::ExitStatus>, String) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.exit()
    }

    /// Waits for the server to exit by itself, at most 20 s, as [`Ferrum::terminate`] does.
    pub fn exit(mut self) -> (Option<std::process::ExitStatus>, String) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (Some(status), self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (None, self.log_text())
    }
}

impl Drop for Ferrum {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A wallet session over TCP. A reader task parses every line, so answers are matched to
/// requests by id and notifications queue up in arrival order, stamped with when they came.
pub struct Wallet {
    writer: tokio::net::tcp::OwnedWriteHalf,
    incoming: mpsc::UnboundedReceiver<(Instant, Value)>,
    notes: VecDeque<(Instant, Value)>,
    next_id: u64,
}

impl Wallet {
    /// Connects and negotiates `protocol` with `server.version`.
    pub async fn connect(addr: SocketAddr, protocol: &str) -> Wallet {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (read, writer) = stream.into_split();
        let (tx, incoming) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("bad JSON from the server {line}: {e}"));
                if tx.send((Instant::now(), value)).is_err() {
                    return;
                }
            }
        });
        let mut wallet = Wallet {
            writer,
            incoming,
            notes: VecDeque::new(),
            next_id: 0,
        };
        wallet
            .call("server.version", json!(["mptest", protocol]))
            .await;
        wallet
    }

    async fn next_message(&mut self, wait: Duration) -> Option<(Instant, Value)> {
        match tokio::time::timeout(wait, self.incoming.recv()).await {
            Ok(Some(message)) => Some(message),
            Ok(None) => panic!("the server closed the connection"),
            Err(_) => None,
        }
    }

    /// Sends a request; its result, or its error object.
    pub async fn request(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let text = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut line = text.to_string().into_bytes();
        line.push(b'\n');
        self.writer.write_all(&line).await.unwrap();
        loop {
            let (at, message) = self
                .next_message(WAIT)
                .await
                .unwrap_or_else(|| panic!("no answer to {method}({params}) in {WAIT:?}"));
            if message.get("id") == Some(&json!(id)) {
                return match message.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(message["result"].clone()),
                };
            }
            assert!(
                message.get("method").is_some(),
                "unexpected message {message}"
            );
            self.notes.push_back((at, message));
        }
    }

    /// The result of a request that must succeed.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.request(method, params.clone()).await {
            Ok(result) => result,
            Err(e) => panic!("{method}({params}) failed: {e}"),
        }
    }

    /// The next notification, waiting at most `wait`.
    pub async fn notification_within(&mut self, wait: Duration) -> Option<(Instant, Value)> {
        if let Some(note) = self.notes.pop_front() {
            return Some(note);
        }
        let (at, message) = self.next_message(wait).await?;
        assert!(
            message.get("method").is_some() && message.get("id").is_none(),
            "unexpected message {message}"
        );
        Some((at, message))
    }

    /// Asserts that no notification comes for `quiet`.
    pub async fn assert_quiet(&mut self, quiet: Duration, what: &str) {
        if let Some((_, note)) = self.notification_within(quiet).await {
            panic!("{what}: unexpected notification {note}");
        }
    }

    /// Subscribes to `scripts`' statuses; returns them.
    pub async fn subscribe(&mut self, scripts: &[&ScriptBuf]) -> Vec<Value> {
        let mut statuses = Vec::new();
        for script in scripts {
            statuses.push(
                self.call(
                    "blockchain.scripthash.subscribe",
                    json!([script_hash(script)]),
                )
                .await,
            );
        }
        statuses
    }

    /// Collects script-hash notifications until each script hash in `expected` has had one,
    /// then for `quiet` more. Each script must be notified exactly once, with its expected
    /// status (a transient status or a repeat fails).
    pub async fn expect_statuses(
        &mut self,
        expected: &BTreeMap<String, Value>,
        quiet: Duration,
        what: &str,
    ) -> Notified {
        let mut seen: HashMap<String, Value> = HashMap::new();
        let mut notified = Notified::default();
        let deadline = Instant::now() + WAIT;
        loop {
            let done = seen.len() == expected.len();
            let wait = if done {
                quiet
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            let Some((at, note)) = self.notification_within(wait).await else {
                let missing: Vec<&String> =
                    expected.keys().filter(|k| !seen.contains_key(*k)).collect();
                assert!(
                    done,
                    "{what}: {} of {} changed scripts not notified in {WAIT:?}, e.g. {:?}",
                    missing.len(),
                    expected.len(),
                    &missing[..missing.len().min(3)]
                );
                return notified;
            };
            match note["method"].as_str() {
                Some("blockchain.headers.subscribe") => {
                    notified.headers.push(note["params"][0].clone())
                }
                Some("blockchain.scripthash.subscribe") => {
                    let sh = note["params"][0].as_str().unwrap().to_string();
                    let status = note["params"][1].clone();
                    match expected.get(&sh) {
                        None => panic!("{what}: {sh} notified ({status}), not expected to change"),
                        Some(want) => assert_eq!(
                            &status, want,
                            "{what}: {sh} notified with a status other than its final one"
                        ),
                    }
                    if let Some(before) = seen.insert(sh.clone(), status) {
                        panic!(
                            "{what}: {sh} notified twice, both times with its final status \
                             {before} (one notification expected)"
                        );
                    }
                    notified.at.insert(sh, at);
                }
                _ => panic!("{what}: unexpected notification {note}"),
            }
        }
    }
}

impl Wallet {
    /// Collects notifications until every script hash's last status (its last notification,
    /// or its status in `before` if none came) is its status in `after`, and `quiet` passes
    /// without more (statuses on the way are allowed, as when a reorg is followed block by
    /// block); returns the last header notified.
    pub async fn settle_statuses(
        &mut self,
        before: &BTreeMap<String, Value>,
        after: &BTreeMap<String, Value>,
        quiet: Duration,
        what: &str,
    ) -> Option<Value> {
        let mut last: HashMap<String, Value> = HashMap::new();
        let mut header = None;
        let deadline = Instant::now() + WAIT;
        loop {
            let done = after
                .iter()
                .all(|(sh, want)| last.get(sh).or_else(|| before.get(sh)) == Some(want));
            let wait = if done {
                quiet
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            let Some((_, note)) = self.notification_within(wait).await else {
                assert!(done, "{what}: last statuses {last:?}, expected {after:?}");
                return header;
            };
            match note["method"].as_str() {
                Some("blockchain.headers.subscribe") => header = Some(note["params"][0].clone()),
                Some("blockchain.scripthash.subscribe") => {
                    let sh = note["params"][0].as_str().unwrap().to_string();
                    last.insert(sh, note["params"][1].clone());
                }
                _ => panic!("{what}: unexpected notification {note}"),
            }
        }
    }
}

/// What [`Wallet::expect_statuses`] saw besides the statuses it checked.
#[derive(Default)]
pub struct Notified {
    /// Header notifications, in order.
    pub headers: Vec<Value>,
    /// When each script hash's notification arrived.
    pub at: HashMap<String, Instant>,
}

/// Electrum's status of a history: sha256 of "txid:height:" over the entries, or null.
pub fn status_of(entries: &[(Txid, i64)]) -> Value {
    if entries.is_empty() {
        return Value::Null;
    }
    let text: String = entries.iter().map(|(t, h)| format!("{t}:{h}:")).collect();
    json!(sha256::Hash::hash(text.as_bytes())
        .to_byte_array()
        .to_lower_hex_string())
}

/// A fresh P2WPKH script no chain pays, told apart by `tag`.
pub fn fresh_script(tag: u8) -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([tag; 20]))
}

/// A version-2 transaction spending `inputs` with empty scripts (the emulator checks no
/// script) that signals replaceability.
pub fn spend(inputs: &[OutPoint], outputs: Vec<(ScriptBuf, u64)>) -> Transaction {
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: inputs
            .iter()
            .map(|op| TxIn {
                previous_output: *op,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            })
            .collect(),
        output: outputs
            .into_iter()
            .map(|(script_pubkey, value)| TxOut {
                value: Amount::from_sat(value),
                script_pubkey,
            })
            .collect(),
    }
}

pub fn raw_hex(tx: &Transaction) -> String {
    bitcoin::consensus::encode::serialize_hex(tx)
}

/// ElectrumX's unspendable outputs, which it never indexes.
fn unspendable(script: &ScriptBuf) -> bool {
    let b = script.as_bytes();
    b.first() == Some(&0x6a) || b.starts_with(&[0x00, 0x6a])
}

/// A confirmed unspent output.
#[derive(Clone, Debug)]
pub struct Coin {
    pub outpoint: OutPoint,
    pub script: ScriptBuf,
    pub value: u64,
    pub height: u32,
}

/// Confirmed outputs unspent at the tip that a transaction may spend now: coinbase outputs
/// only once mature. Largest first.
pub fn spendable_coins(blocks: &[Block]) -> Vec<Coin> {
    let tip = blocks.len() as u32 - 1;
    let mut unspent: HashMap<OutPoint, (Coin, bool)> = HashMap::new();
    for (height, block) in blocks.iter().enumerate().skip(1) {
        for tx in &block.txdata {
            if !tx.is_coinbase() {
                for input in &tx.input {
                    unspent.remove(&input.previous_output);
                }
            }
            let txid = tx.compute_txid();
            for (vout, out) in tx.output.iter().enumerate() {
                if unspendable(&out.script_pubkey) {
                    continue;
                }
                let coin = Coin {
                    outpoint: OutPoint::new(txid, vout as u32),
                    script: out.script_pubkey.clone(),
                    value: out.value.to_sat(),
                    height: height as u32,
                };
                unspent.insert(coin.outpoint, (coin, tx.is_coinbase()));
            }
        }
    }
    let mut coins: Vec<Coin> = unspent
        .into_values()
        .filter(|(c, coinbase)| !coinbase || tip + 1 - c.height >= 100)
        .map(|(c, _)| c)
        .collect();
    coins.sort_by(|a, b| b.value.cmp(&a.value).then(a.outpoint.cmp(&b.outpoint)));
    coins
}

/// A mempool transaction as the expectations see it.
struct Pooled {
    tx: Transaction,
    txid: Txid,
    fee: u64,
    /// Some input spends another mempool transaction's output.
    unconfirmed_inputs: bool,
}

/// What a wallet must be told about any script, from the node's chain (blocks, genesis
/// first) and mempool (its transactions), with ElectrumX's semantics.
pub struct Expected {
    pub chain: Model,
    pool: Vec<Pooled>,
    /// Outputs of mempool transactions.
    pool_outputs: HashMap<OutPoint, TxOut>,
    /// Every outpoint a mempool transaction spends.
    pool_spends: HashSet<OutPoint>,
}

impl Expected {
    pub fn new(blocks: Vec<Block>, mempool: Vec<Transaction>) -> Expected {
        let chain = Model::new(blocks);
        let ids: HashSet<Txid> = mempool.iter().map(Transaction::compute_txid).collect();
        let mut pool_outputs = HashMap::new();
        for tx in &mempool {
            let txid = tx.compute_txid();
            for (vout, out) in tx.output.iter().enumerate() {
                pool_outputs.insert(OutPoint::new(txid, vout as u32), out.clone());
            }
        }
        let mut pool_spends = HashSet::new();
        let mut pool = Vec::new();
        for tx in mempool {
            let txid = tx.compute_txid();
            let value_in: u64 = tx
                .input
                .iter()
                .map(|i| {
                    pool_spends.insert(i.previous_output);
                    pool_outputs
                        .get(&i.previous_output)
                        .or_else(|| chain.output(&i.previous_output))
                        .unwrap_or_else(|| panic!("{txid} spends an unknown output"))
                        .value
                        .to_sat()
                })
                .sum();
            let value_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
            let unconfirmed_inputs = tx
                .input
                .iter()
                .any(|i| ids.contains(&i.previous_output.txid));
            pool.push(Pooled {
                fee: value_in - value_out,
                tx,
                txid,
                unconfirmed_inputs,
            });
        }
        Expected {
            chain,
            pool,
            pool_outputs,
            pool_spends,
        }
    }

    fn prevout(&self, op: &OutPoint) -> &TxOut {
        self.pool_outputs
            .get(op)
            .or_else(|| self.chain.output(op))
            .expect("a known output")
    }

    fn touches(&self, p: &Pooled, script: &ScriptBuf) -> bool {
        p.tx.output.iter().any(|o| &o.script_pubkey == script)
            || p.tx
                .input
                .iter()
                .any(|i| &self.prevout(&i.previous_output).script_pubkey == script)
    }

    /// The script's mempool transactions in canonical order: (txid, height, fee).
    pub fn mempool_entries(&self, script: &ScriptBuf) -> Vec<(Txid, i64, u64)> {
        let mut entries: Vec<(Txid, i64, u64)> = self
            .pool
            .iter()
            .filter(|p| self.touches(p, script))
            .map(|p| (p.txid, -i64::from(p.unconfirmed_inputs), p.fee))
            .collect();
        // Height 0 before -1, then txid as displayed.
        entries.sort_by_key(|(txid, height, _)| (-height, txid.to_string()));
        entries
    }

    fn confirmed(&self, script: &ScriptBuf) -> Vec<(Txid, i64)> {
        self.chain
            .histories
            .get(script)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|(t, h)| (*t, i64::from(*h)))
            .collect()
    }

    pub fn status(&self, script: &ScriptBuf) -> Value {
        let mut entries = self.confirmed(script);
        entries.extend(
            self.mempool_entries(script)
                .into_iter()
                .map(|(t, h, _)| (t, h)),
        );
        status_of(&entries)
    }

    pub fn history(&self, script: &ScriptBuf) -> Value {
        let mut items: Vec<Value> = self
            .confirmed(script)
            .into_iter()
            .map(|(t, h)| json!({"tx_hash": t.to_string(), "height": h}))
            .collect();
        items.extend(self.mempool(script).as_array().unwrap().iter().cloned());
        Value::Array(items)
    }

    /// `get_mempool`: the mempool entries with fees.
    pub fn mempool(&self, script: &ScriptBuf) -> Value {
        self.mempool_entries(script)
            .into_iter()
            .map(|(t, h, fee)| json!({"tx_hash": t.to_string(), "height": h, "fee": fee}))
            .collect()
    }

    /// Confirmed outputs not spent in the mempool in chain order, then mempool outputs not
    /// spent in the mempool at height 0, by (txid as displayed, vout).
    pub fn listunspent(&self, script: &ScriptBuf) -> Value {
        let mut items: Vec<Value> = self
            .chain
            .listunspent_json(script)
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| {
                let op = OutPoint::new(
                    u["tx_hash"].as_str().unwrap().parse().unwrap(),
                    u["tx_pos"].as_u64().unwrap() as u32,
                );
                !self.pool_spends.contains(&op)
            })
            .cloned()
            .collect();
        let mut outs: Vec<(String, u32, u64)> = self
            .pool_outputs
            .iter()
            .filter(|(op, out)| &out.script_pubkey == script && !self.pool_spends.contains(op))
            .map(|(op, out)| (op.txid.to_string(), op.vout, out.value.to_sat()))
            .collect();
        outs.sort();
        items.extend(outs.into_iter().map(|(txid, vout, value)| {
            json!({"tx_hash": txid, "tx_pos": vout, "height": 0, "value": value})
        }));
        Value::Array(items)
    }

    /// `confirmed`: the confirmed UTXOs, whatever the mempool spends; `unconfirmed`: mempool
    /// outputs to the script minus the values mempool inputs take from it.
    pub fn balance(&self, script: &ScriptBuf) -> Value {
        let confirmed = self.chain.balance_json(script)["confirmed"]
            .as_i64()
            .unwrap();
        let mut delta: i64 = 0;
        for p in &self.pool {
            for out in &p.tx.output {
                if &out.script_pubkey == script {
                    delta += out.value.to_sat() as i64;
                }
            }
            for input in &p.tx.input {
                let prev = self.prevout(&input.previous_output);
                if &prev.script_pubkey == script {
                    delta -= prev.value.to_sat() as i64;
                }
            }
        }
        json!({"confirmed": confirmed, "unconfirmed": delta})
    }

    /// Every script a mempool transaction touches (unspendable outputs left out), sorted.
    pub fn mempool_scripts(&self) -> Vec<ScriptBuf> {
        let mut scripts: Vec<ScriptBuf> = self
            .pool
            .iter()
            .flat_map(|p| self.touched_scripts(&p.tx))
            .collect();
        scripts.sort();
        scripts.dedup();
        scripts
    }

    /// The scripts a transaction of the mempool or the chain pays or spends from
    /// (unspendable outputs and coinbase inputs left out).
    pub fn touched_scripts(&self, tx: &Transaction) -> Vec<ScriptBuf> {
        let mut scripts: Vec<ScriptBuf> = tx
            .output
            .iter()
            .map(|o| o.script_pubkey.clone())
            .filter(|s| !unspendable(s))
            .collect();
        if !tx.is_coinbase() {
            scripts.extend(
                tx.input
                    .iter()
                    .map(|i| self.prevout(&i.previous_output).script_pubkey.clone()),
            );
        }
        scripts
    }

    pub fn mempool_txids(&self) -> Vec<Txid> {
        self.pool.iter().map(|p| p.txid).collect()
    }

    /// The expected status of each script, keyed by script hash.
    pub fn statuses(&self, scripts: &[&ScriptBuf]) -> BTreeMap<String, Value> {
        scripts
            .iter()
            .map(|s| (script_hash(s), self.status(s)))
            .collect()
    }
}

/// The statuses that differ between two states, with their new values.
pub fn changed(
    before: &BTreeMap<String, Value>,
    after: &BTreeMap<String, Value>,
) -> BTreeMap<String, Value> {
    after
        .iter()
        .filter(|(sh, status)| before.get(*sh) != Some(*status))
        .map(|(sh, status)| (sh.clone(), status.clone()))
        .collect()
}

/// Asserts every per-script answer (status, history, mempool, unspent outputs, balance).
pub async fn assert_answers(
    w: &mut Wallet,
    expected: &Expected,
    scripts: &[&ScriptBuf],
    what: &str,
) {
    for script in scripts {
        let sh = json!([script_hash(script)]);
        let got = [
            w.call("blockchain.scripthash.get_history", sh.clone())
                .await,
            w.call("blockchain.scripthash.get_mempool", sh.clone())
                .await,
            w.call("blockchain.scripthash.listunspent", sh.clone())
                .await,
            w.call("blockchain.scripthash.get_balance", sh.clone())
                .await,
        ];
        let want = [
            expected.history(script),
            expected.mempool(script),
            expected.listunspent(script),
            expected.balance(script),
        ];
        for (i, name) in ["get_history", "get_mempool", "listunspent", "get_balance"]
            .iter()
            .enumerate()
        {
            assert_eq!(got[i], want[i], "{what}: {name} of {}", sh[0]);
        }
    }
}

/// ElectrumX's compact fee histogram (`_compress_histogram` over rates rounded down to
/// 0.1 sat/vB): from (fee, vsize) pairs, bins of at least `bin_size` vbytes, growing by 1.1.
pub fn compact_histogram(txs: &[(u64, u64)], bin_size: f64) -> Vec<(f64, u64)> {
    // Keyed by tenths of a sat/vB, so the map sorts exactly.
    let mut histogram: BTreeMap<u64, u64> = BTreeMap::new();
    for &(fee, vsize) in txs {
        let tenths = (10.0 * (fee as f64 / vsize as f64)).floor() as u64;
        *histogram.entry(tenths).or_default() += vsize;
    }
    let mut bin_size = bin_size;
    let mut compact = Vec::new();
    let mut cum_size = 0u64;
    let mut prev_rate: Option<f64> = None;
    for (&tenths, &size) in histogram.iter().rev() {
        let rate = tenths as f64 / 10.0;
        if size as f64 > 2.0 * bin_size && cum_size > 0 {
            if let Some(prev) = prev_rate {
                compact.push((prev, cum_size));
                cum_size = 0;
                bin_size *= 1.1;
            }
        }
        cum_size += size;
        if cum_size as f64 > bin_size {
            compact.push((rate, cum_size));
            cum_size = 0;
            bin_size *= 1.1;
        }
        prev_rate = Some(rate);
    }
    compact
}

/// What the emulated node holds now: its chain and its mempool's transactions.
pub fn node_state(emu: &ferrum_tools::emulator::Emulator) -> Expected {
    let txids = node_call(emu, "getrawmempool", json!([]));
    let mempool = txids
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let hex = node_call(emu, "getrawtransaction", json!([t]));
            bitcoin::consensus::encode::deserialize_hex(hex.as_str().unwrap()).unwrap()
        })
        .collect();
    Expected::new(node_chain(emu), mempool)
}
