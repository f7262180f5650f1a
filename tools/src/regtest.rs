//! A real Bitcoin Core regtest node for tests: started through `tools/bitcoind.sh` in its own
//! temporary data directory (stopped and removed on drop), with a small blocking JSON-RPC client.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bitcoin::base64::engine::general_purpose::STANDARD as BASE64;
use bitcoin::base64::Engine;
use bitcoin::consensus::encode::serialize_hex;
use serde_json::{json, Value};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bitcoind.sh");

/// An error answered by the node, or a transport failure (code `RpcError::TRANSPORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    /// Code of errors that never reached a JSON-RPC answer (connection, HTTP, parse).
    pub const TRANSPORT: i64 = 0;

    fn transport(message: impl Into<String>) -> Self {
        Self {
            code: Self::TRANSPORT,
            message: message.into(),
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RPC error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for RpcError {}

/// A running regtest `bitcoind`.
pub struct RegtestNode {
    datadir: PathBuf,
    rpc_port: u16,
    p2p_port: u16,
    cookie: PathBuf,
}

/// Path of the cached `bitcoind`, building it first if needed (slow the first time).
pub fn bitcoind_path() -> io::Result<PathBuf> {
    let output = Command::new("bash").arg(SCRIPT).arg("path").output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "bitcoind.sh path failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

fn fresh_datadir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!(
        "ferrum-regtest-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

fn parse_start_line(line: &str) -> Option<(u16, u16, PathBuf)> {
    let mut rpc = None;
    let mut p2p = None;
    let mut cookie = None;
    for field in line.split_whitespace() {
        match field.split_once('=')? {
            ("rpc", port) => rpc = port.parse().ok(),
            ("p2p", port) => p2p = port.parse().ok(),
            ("cookie", path) => cookie = Some(PathBuf::from(path)),
            _ => {}
        }
    }
    Some((rpc?, p2p?, cookie?))
}

impl RegtestNode {
    pub fn start() -> io::Result<Self> {
        Self::start_with_args(&[])
    }

    /// Starts a node with extra `bitcoind` arguments (e.g. `-blockfilterindex=1`).
    /// Retries twice: the free ports the script picks can be taken by someone else before
    /// bitcoind binds them.
    pub fn start_with_args(args: &[&str]) -> io::Result<Self> {
        let mut attempt = 0;
        loop {
            match Self::start_once(args) {
                Err(e) if attempt < 2 => {
                    tracing::warn!("regtest node did not start, retrying: {e}");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once(args: &[&str]) -> io::Result<Self> {
        let datadir = fresh_datadir();
        let output = Command::new("bash")
            .arg(SCRIPT)
            .arg("start")
            .arg(&datadir)
            .args(args)
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let parsed = parse_start_line(stdout.trim());
        let (rpc_port, p2p_port, cookie) = match (output.status.success(), parsed) {
            (true, Some(parsed)) => parsed,
            _ => {
                let _ = Command::new("bash")
                    .arg(SCRIPT)
                    .arg("stop")
                    .arg(&datadir)
                    .status();
                let _ = std::fs::remove_dir_all(&datadir);
                return Err(io::Error::other(format!(
                    "bitcoind.sh start failed: {}{}",
                    stdout,
                    String::from_utf8_lossy(&output.stderr)
                )));
            }
        };
        let node = Self {
            datadir,
            rpc_port,
            p2p_port,
            cookie,
        };
        node.wait_ready()?;
        Ok(node)
    }

    /// Waits out the warm-up (-28) answers some RPCs give right after start.
    fn wait_ready(&self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.rpc("getblockchaininfo", json!([])) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(io::Error::other(format!("regtest node not ready: {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    pub fn rpc_port(&self) -> u16 {
        self.rpc_port
    }

    pub fn p2p_port(&self) -> u16 {
        self.p2p_port
    }

    pub fn cookie_path(&self) -> &Path {
        &self.cookie
    }

    pub fn datadir(&self) -> &Path {
        &self.datadir
    }

    /// One JSON-RPC 1.0 call over a fresh HTTP/1.1 connection with cookie authentication.
    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let cookie = std::fs::read_to_string(&self.cookie)
            .map_err(|e| RpcError::transport(format!("reading {}: {e}", self.cookie.display())))?;
        let body =
            json!({"jsonrpc": "1.0", "id": 1, "method": method, "params": params}).to_string();
        let request = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            BASE64.encode(cookie.trim()),
            body.len()
        );
        let mut stream = TcpStream::connect(("127.0.0.1", self.rpc_port)).map_err(|e| {
            RpcError::transport(format!("connecting to port {}: {e}", self.rpc_port))
        })?;
        let mut response = Vec::new();
        stream
            .write_all(request.as_bytes())
            .and_then(|_| stream.read_to_end(&mut response))
            .map_err(|e| RpcError::transport(format!("{method}: {e}")))?;
        parse_response(method, &response)
    }

    /// `submitblock`: Ok when the node accepted the block (it answered null).
    pub fn submit_block(&self, block: &bitcoin::Block) -> Result<(), RpcError> {
        match self.rpc("submitblock", json!([serialize_hex(block)]))? {
            Value::Null => Ok(()),
            other => Err(RpcError {
                code: -1,
                message: format!("submitblock rejected: {other}"),
            }),
        }
    }
}

fn parse_response(method: &str, response: &[u8]) -> Result<Value, RpcError> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| RpcError::transport(format!("{method}: truncated HTTP response")))?;
    let status = head.lines().next().unwrap_or_default();
    let reply: Value = serde_json::from_str(body).map_err(|_| {
        RpcError::transport(format!(
            "{method}: HTTP answer `{status}` without JSON body: {body:?}"
        ))
    })?;
    match reply.get("error") {
        Some(error) if !error.is_null() => Err(RpcError {
            code: error
                .get("code")
                .and_then(Value::as_i64)
                .unwrap_or(RpcError::TRANSPORT),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        }),
        _ => Ok(reply.get("result").cloned().unwrap_or(Value::Null)),
    }
}

impl Drop for RegtestNode {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(&self.datadir)
            .status();
        let _ = std::fs::remove_dir_all(&self.datadir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_map_to_results_and_errors() {
        let ok =
            b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n{\"result\":5,\"error\":null,\"id\":1}";
        assert_eq!(parse_response("m", ok), Ok(json!(5)));
        let err = b"HTTP/1.1 500 Internal\r\n\r\n{\"result\":null,\"error\":{\"code\":-8,\"message\":\"bad\"},\"id\":1}";
        assert_eq!(
            parse_response("m", err),
            Err(RpcError {
                code: -8,
                message: "bad".into()
            })
        );
        let denied = b"HTTP/1.1 401 Unauthorized\r\n\r\n";
        let e = parse_response("m", denied).unwrap_err();
        assert_eq!(e.code, RpcError::TRANSPORT);
        assert_eq!(
            e.message,
            "m: HTTP answer `HTTP/1.1 401 Unauthorized` without JSON body: \"\""
        );
    }

    #[test]
    fn start_line_parses() {
        assert_eq!(
            parse_start_line("rpc=1 p2p=2 cookie=/x/.cookie"),
            Some((1, 2, PathBuf::from("/x/.cookie")))
        );
        assert_eq!(parse_start_line("rpc=1 cookie=/x"), None);
    }
}
