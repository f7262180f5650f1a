//! End-to-end test support: the real `ferrum` binary against the node emulator, and an
//! in-test model of what every Electrum method must answer, computed from the blocks alone
//! with the bitcoin crate (never with ferrum's own code).
#![allow(dead_code)] // each test uses a different part

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bitcoin::hashes::{sha256, sha256d, Hash};
use bitcoin::hex::DisplayHex;
use bitcoin::{Block, OutPoint, ScriptBuf, TxOut, Txid};
use ferrum_tools::emulator::client::{self, HttpClient};
use ferrum_tools::emulator::Emulator;
use serde_json::{json, Value};

/// How long the server may take to index the chain and open its wallet ports.
const START_WAIT: Duration = Duration::from_secs(60);

pub use ferrum_tools::ports::free_port;

/// The emulator's whole active chain, genesis first, read over its RPC and REST interfaces.
pub fn node_chain(emu: &Emulator) -> Vec<Block> {
    client::node_chain(emu.rpc_addr(), emu.credentials()).unwrap()
}

/// One JSON-RPC call to the emulated node, which must succeed.
pub fn node_call(emu: &Emulator, method: &str, params: Value) -> Value {
    HttpClient::connect(emu.rpc_addr())
        .unwrap()
        .with_auth(emu.credentials())
        .call(method, params.clone())
        .unwrap()
        .unwrap_or_else(|e| panic!("node {method}({params}): {e:?}"))
}

/// One JSON-RPC call to the emulated node, which must fail: its (code, message).
pub fn node_error(emu: &Emulator, method: &str, params: Value) -> (i32, String) {
    let e = HttpClient::connect(emu.rpc_addr())
        .unwrap()
        .with_auth(emu.credentials())
        .call(method, params.clone())
        .unwrap()
        .expect_err("the node refuses the call");
    (e.code, e.message)
}

/// `INDEX_MODE` for the servers the tests start: `FERRUM_TEST_INDEX_MODE` when set (run a
/// suite against a lean index with `FERRUM_TEST_INDEX_MODE=lean`), else the default.
pub fn index_mode() -> Option<(&'static str, String)> {
    std::env::var("FERRUM_TEST_INDEX_MODE")
        .ok()
        .map(|mode| ("INDEX_MODE", mode))
}

/// A running `ferrum` process (killed on drop) with every wallet transport and the local RPC.
pub struct FerrumProcess {
    child: Child,
    pub tcp: SocketAddr,
    pub ssl: SocketAddr,
    pub ws: SocketAddr,
    pub wss: SocketAddr,
    pub rpc: SocketAddr,
    pub cert: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl FerrumProcess {
    /// Starts the binary on the emulator with a fresh store and waits until the wallet ports
    /// accept connections.
    pub fn start(emu: &Emulator, cert: &Path, key: &Path) -> FerrumProcess {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        Self::start_in(emu, cert, key, &db, dir)
    }

    /// The same with the store in `db` (which outlives the process); `dir` takes the log.
    pub fn start_in(
        emu: &Emulator,
        cert: &Path,
        key: &Path,
        db: &Path,
        dir: tempfile::TempDir,
    ) -> FerrumProcess {
        let addr = |_| SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (tcp, ssl, ws, wss, rpc) = (addr(0), addr(1), addr(2), addr(3), addr(4));
        let services = format!("tcp://{tcp},ssl://{ssl},ws://{ws},wss://{wss},rpc://{rpc}");
        let log = dir.path().join("ferrum.log");
        let child = Command::new(env!("CARGO_BIN_EXE_ferrum"))
            .env_clear()
            .envs(index_mode())
            .env("DB_DIRECTORY", db)
            .env("NET", "regtest")
            .env("DAEMON_URL", format!("127.0.0.1:{}", emu.rpc_addr().port()))
            .env("DAEMON_COOKIE_FILE", emu.cookie_path().unwrap())
            .env("SERVICES", services)
            .env("SSL_CERTFILE", cert)
            .env("SSL_KEYFILE", key)
            .env("PEER_DISCOVERY", "off")
            .env("DONATION_ADDRESS", "bcrt1qdonation")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = FerrumProcess {
            child,
            tcp,
            ssl,
            ws,
            wss,
            rpc,
            cert: cert.to_path_buf(),
            log,
            _dir: dir,
        };
        server.wait_for_wallets();
        server
    }

    fn wait_for_wallets(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("ferrum exited with {status}:\n{}", self.log_text());
            }
            let up = [self.tcp, self.ssl, self.ws, self.wss]
                .iter()
                .all(|a| std::net::TcpStream::connect(a).is_ok());
            if up {
                return;
            }
            assert!(
                start.elapsed() < START_WAIT,
                "wallet ports not open after {START_WAIT:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Killed (SIGKILL): no clean shutdown, as after a crash.
impl Drop for FerrumProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Double SHA-256 of two concatenated nodes.
fn hash_pair(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(left);
    both[32..].copy_from_slice(right);
    sha256d::Hash::hash(&both).to_byte_array()
}

/// Bitcoin's merkle branch of leaf `index` (odd levels duplicate their last node) and the
/// root, in internal byte order.
pub fn branch_and_root(leaves: &[[u8; 32]], mut index: usize) -> (Vec<[u8; 32]>, [u8; 32]) {
    let mut level = leaves.to_vec();
    let mut branch = Vec::new();
    while level.len() > 1 {
        if level.len() % 2 == 1 {
            level.push(*level.last().unwrap());
        }
        branch.push(level[index ^ 1]);
        level = level.chunks(2).map(|p| hash_pair(&p[0], &p[1])).collect();
        index /= 2;
    }
    (branch, level[0])
}

/// A hash as Electrum displays it: byte-reversed hex.
pub fn display_hex(hash: &[u8; 32]) -> String {
    let mut bytes = *hash;
    bytes.reverse();
    bytes.to_lower_hex_string()
}

fn from_display_hex(text: &str) -> [u8; 32] {
    let mut bytes: [u8; 32] =
        bitcoin::hex::FromHex::from_hex(text).unwrap_or_else(|e| panic!("bad hash {text}: {e}"));
    bytes.reverse();
    bytes
}

/// Folds a branch of display-hex hashes from a display-hex leaf at `index` up to the root.
pub fn fold_branch(leaf: &str, branch: &Value, mut index: u64) -> String {
    let mut node = from_display_hex(leaf);
    for sibling in branch.as_array().expect("branch is a list") {
        let sibling = from_display_hex(sibling.as_str().expect("branch item is a string"));
        node = if index & 1 == 1 {
            hash_pair(&sibling, &node)
        } else {
            hash_pair(&node, &sibling)
        };
        index >>= 1;
    }
    display_hex(&node)
}

/// Electrum's script hash: sha256 of the script, reversed, hex.
pub fn script_hash(script: &ScriptBuf) -> String {
    display_hex(&sha256::Hash::hash(script.as_bytes()).to_byte_array())
}

/// ElectrumX's "unspendable" outputs, which it never indexes.
fn unspendable(script: &ScriptBuf) -> bool {
    let b = script.as_bytes();
    b.first() == Some(&0x6a) || b.starts_with(&[0x00, 0x6a])
}

/// An unspent output: where it is, what it holds.
#[derive(Clone, Debug)]
pub struct Utxo {
    pub txid: Txid,
    pub vout: u32,
    pub height: u32,
    pub value: u64,
}

/// What the server must answer for a chain, from the blocks alone.
pub struct Model {
    pub blocks: Vec<Block>,
    /// Per script: the transactions touching it, once each, in chain order, with heights.
    pub histories: HashMap<ScriptBuf, Vec<(Txid, u32)>>,
    /// Unspent outputs keyed by (height, position in block, vout): the server's order.
    utxos: BTreeMap<(u32, u32, u32), (ScriptBuf, Utxo)>,
    /// Where each transaction is: (height, position in block).
    pub positions: HashMap<Txid, (u32, u32)>,
}

impl Model {
    /// Replays the chain; the genesis block's outputs are not indexed (as in ElectrumX).
    pub fn new(blocks: Vec<Block>) -> Model {
        let mut histories: HashMap<ScriptBuf, Vec<(Txid, u32)>> = HashMap::new();
        let mut utxos = BTreeMap::new();
        let mut where_out: HashMap<OutPoint, (u32, u32, u32)> = HashMap::new();
        let mut positions = HashMap::new();
        for (height, block) in blocks.iter().enumerate().skip(1) {
            let height = height as u32;
            for (pos, tx) in block.txdata.iter().enumerate() {
                let txid = tx.compute_txid();
                positions.insert(txid, (height, pos as u32));
                let mut touched: Vec<ScriptBuf> = Vec::new();
                if !tx.is_coinbase() {
                    for input in &tx.input {
                        let key = where_out
                            .remove(&input.previous_output)
                            .expect("input spends a known output");
                        let (script, _) = utxos.remove(&key).unwrap();
                        touched.push(script);
                    }
                }
                for (vout, out) in tx.output.iter().enumerate() {
                    if unspendable(&out.script_pubkey) {
                        continue;
                    }
                    let key = (height, pos as u32, vout as u32);
                    where_out.insert(OutPoint::new(txid, vout as u32), key);
                    let utxo = Utxo {
                        txid,
                        vout: vout as u32,
                        height,
                        value: out.value.to_sat(),
                    };
                    utxos.insert(key, (out.script_pubkey.clone(), utxo));
                    touched.push(out.script_pubkey.clone());
                }
                for script in touched {
                    let history = histories.entry(script).or_default();
                    if history.last() != Some(&(txid, height)) {
                        history.push((txid, height));
                    }
                }
            }
        }
        Model {
            blocks,
            histories,
            utxos,
            positions,
        }
    }

    /// The output an outpoint names, if the chain (past genesis) has it.
    pub fn output(&self, outpoint: &OutPoint) -> Option<&TxOut> {
        let (height, pos) = self.positions.get(&outpoint.txid)?;
        self.blocks[*height as usize].txdata[*pos as usize]
            .output
            .get(outpoint.vout as usize)
    }

    pub fn tip(&self) -> u32 {
        self.blocks.len() as u32 - 1
    }

    pub fn header_hex(&self, height: u32) -> String {
        bitcoin::consensus::serialize(&self.blocks[height as usize].header).to_lower_hex_string()
    }

    /// `{branch, root}` proving header `height` under headers 0..=cp_height.
    pub fn header_proof(&self, height: u32, cp_height: u32) -> Value {
        let leaves: Vec<[u8; 32]> = self.blocks[..=cp_height as usize]
            .iter()
            .map(|b| b.block_hash().to_byte_array())
            .collect();
        let (branch, root) = branch_and_root(&leaves, height as usize);
        // Cross-check our tree against the bitcoin crate's.
        let crate_root = bitcoin::merkle_tree::calculate_root(
            leaves
                .iter()
                .map(|l| bitcoin::TxMerkleNode::from_byte_array(*l)),
        )
        .unwrap();
        assert_eq!(crate_root.to_byte_array(), root);
        json!({
            "branch": branch.iter().map(display_hex).collect::<Vec<_>>(),
            "root": display_hex(&root),
        })
    }

    /// The merkle branch of transaction `pos` of block `height`, as display hex.
    pub fn tx_branch(&self, height: u32, pos: u32) -> Vec<String> {
        let block = &self.blocks[height as usize];
        let leaves: Vec<[u8; 32]> = block
            .txdata
            .iter()
            .map(|t| t.compute_txid().to_byte_array())
            .collect();
        let (branch, root) = branch_and_root(&leaves, pos as usize);
        assert_eq!(root, block.header.merkle_root.to_byte_array());
        branch.iter().map(display_hex).collect()
    }

    /// Scripts by history length, longest first (ties broken by script bytes).
    pub fn scripts_by_reuse(&self) -> Vec<ScriptBuf> {
        let mut scripts: Vec<&ScriptBuf> = self.histories.keys().collect();
        scripts.sort_by(|a, b| {
            self.histories[*b]
                .len()
                .cmp(&self.histories[*a].len())
                .then(a.cmp(b))
        });
        scripts.into_iter().cloned().collect()
    }

    pub fn history_json(&self, script: &ScriptBuf) -> Value {
        let history = self.histories.get(script).map_or(&[][..], Vec::as_slice);
        history
            .iter()
            .map(|(txid, height)| json!({"tx_hash": txid.to_string(), "height": height}))
            .collect()
    }

    /// The subscription status: sha256 of "txid:height:" over the history, or null.
    pub fn status(&self, script: &ScriptBuf) -> Value {
        match self.histories.get(script) {
            None => Value::Null,
            Some(history) => {
                let text: String = history
                    .iter()
                    .map(|(txid, height)| format!("{txid}:{height}:"))
                    .collect();
                json!(sha256::Hash::hash(text.as_bytes())
                    .to_byte_array()
                    .to_lower_hex_string())
            }
        }
    }

    fn unspent<'a>(&'a self, script: &'a ScriptBuf) -> impl Iterator<Item = &'a Utxo> {
        self.utxos
            .values()
            .filter(move |(s, _)| s == script)
            .map(|(_, u)| u)
    }

    pub fn balance_json(&self, script: &ScriptBuf) -> Value {
        let confirmed: u64 = self.unspent(script).map(|u| u.value).sum();
        json!({"confirmed": confirmed, "unconfirmed": 0})
    }

    pub fn listunspent_json(&self, script: &ScriptBuf) -> Value {
        self.unspent(script)
            .map(|u| {
                json!({"tx_hash": u.txid.to_string(), "tx_pos": u.vout,
                       "height": u.height, "value": u.value})
            })
            .collect()
    }
}
