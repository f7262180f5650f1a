//! A blocking HTTP/1.1 keep-alive client for the emulator's (and Core's) RPC and REST ports:
//! what the tests, the conformance check and the serving benchmark talk through.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bitcoin::base64::engine::general_purpose::STANDARD as BASE64;
use bitcoin::base64::Engine;
use serde_json::{json, Value};

pub use super::jsonrpc::RpcError;

pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> io::Result<Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// One keep-alive connection.
pub struct HttpClient {
    reader: BufReader<TcpStream>,
    auth: Option<String>,
    next_id: u64,
}

impl HttpClient {
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(HttpClient {
            reader: BufReader::with_capacity(256 * 1024, stream),
            auth: None,
            next_id: 0,
        })
    }

    /// Sends `Authorization: Basic` with this `user:password`.
    pub fn with_auth(mut self, user_pass: &str) -> Self {
        self.auth = Some(basic_auth(user_pass));
        self
    }

    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<HttpResponse> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(auth) = &self.auth {
            head.push_str(&format!("Authorization: Basic {auth}\r\n"));
        }
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        let mut all = head.into_bytes();
        all.extend_from_slice(body);
        stream.write_all(&all)?;
        self.read_response()
    }

    pub fn get(&mut self, path: &str) -> io::Result<HttpResponse> {
        self.request("GET", path, &[])
    }

    fn read_response(&mut self) -> io::Result<HttpResponse> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').ok_or_else(|| bad("bad header"))?;
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        if status == 204 {
            return Ok(HttpResponse {
                status,
                headers,
                body: Vec::new(),
            });
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| bad("no content-length"))?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    /// A JSON-RPC 1.0-style call (Core's legacy framing): the result or the RPC error.
    pub fn call(&mut self, method: &str, params: Value) -> io::Result<Result<Value, RpcError>> {
        self.next_id += 1;
        let body =
            json!({"jsonrpc": "1.0", "id": self.next_id, "method": method, "params": params});
        let response = self.request("POST", "/", body.to_string().as_bytes())?;
        let reply = response.json()?;
        Ok(match reply.get("error") {
            Some(e) if !e.is_null() => Err(RpcError {
                code: e["code"].as_i64().unwrap_or(0) as i32,
                message: e["message"].as_str().unwrap_or_default().to_string(),
            }),
            _ => Ok(reply.get("result").cloned().unwrap_or(Value::Null)),
        })
    }
}

/// The `Authorization: Basic` value for `user:password`.
pub fn basic_auth(user_pass: &str) -> String {
    BASE64.encode(user_pass)
}

/// Reads a Core-style cookie file into `user:password`.
pub fn read_cookie(path: &std::path::Path) -> io::Result<String> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// The node's whole active chain, genesis first, read over its RPC (`getblockcount`,
/// `getblockhash`) and REST (`/rest/block/<hash>.bin`): what tests check an index against.
/// Works on the emulator and on a real bitcoind alike.
pub fn node_chain(addr: SocketAddr, user_pass: &str) -> io::Result<Vec<bitcoin::Block>> {
    let fail = |what: String| io::Error::other(what);
    let mut client = HttpClient::connect(addr)?.with_auth(user_pass);
    let height = client
        .call("getblockcount", Value::Array(vec![]))?
        .map_err(|e| fail(format!("getblockcount: {e:?}")))?
        .as_u64()
        .ok_or_else(|| fail("getblockcount: not a number".into()))?;
    (0..=height)
        .map(|h| {
            let hash = client
                .call("getblockhash", Value::Array(vec![h.into()]))?
                .map_err(|e| fail(format!("getblockhash {h}: {e:?}")))?;
            let hash = hash
                .as_str()
                .ok_or_else(|| fail(format!("getblockhash {h}: {hash}")))?;
            let resp = client.get(&format!("/rest/block/{hash}.bin"))?;
            if resp.status != 200 {
                return Err(fail(format!("block {hash}: HTTP {}", resp.status)));
            }
            bitcoin::consensus::deserialize(&resp.body)
                .map_err(|e| fail(format!("block {hash}: {e}")))
        })
        .collect()
}
