//! Shared helpers for the protocol tests: a fixed-answer backend, a server on free
//! 127.0.0.1 ports, and line/WebSocket clients over plain TCP or TLS.
#![allow(dead_code)] // each test crate uses a different part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrum::config::Config;
use ferrum::jsonrpc::{Params, RawJson, RpcError, Signature};
use ferrum::server::Server;
use ferrum::services::Protocol;
use ferrum::session::{Backend, DaemonVersion, SessionContext};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const GENESIS: &str = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206";
const WAIT: Duration = Duration::from_secs(10);

/// Answers a few made-up methods with fixed values.
#[derive(Default)]
pub struct TestBackend {
    pub opened: Mutex<Vec<Arc<SessionContext>>>,
    pub closed: Mutex<Vec<u64>>,
}

const ONE_ARG: Signature = Signature::new(&["value"], 1);

impl Backend for TestBackend {
    type Session = ();

    fn open_session(&self, session: &Arc<SessionContext>) {
        self.opened.lock().unwrap().push(session.clone());
    }

    async fn call(
        &self,
        session: &Arc<SessionContext>,
        _state: &(),
        method: &str,
        params: Params,
    ) -> Result<Value, RpcError> {
        match method {
            // Echoes its one argument, with the negotiated version.
            "test.echo" => {
                let args = params.bind(method, &ONE_ARG)?;
                let version = session.protocol_version().map(|v| v.to_string());
                Ok(json!({"value": args[0], "version": version}))
            }
            // A string of the requested length.
            "test.big" => {
                let n = params.bind(method, &ONE_ARG)?[0]
                    .as_ref()
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                Ok(Value::String("x".repeat(n as usize)))
            }
            // Sleeps for the given milliseconds.
            "test.sleep" => {
                let ms = params.bind(method, &ONE_ARG)?[0]
                    .as_ref()
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!(ms))
            }
            "test.fail" => Err(RpcError::bad_request("test failure")),
            "test.panic" => panic!("test panic"),
            // Sends a notification with the argument, then answers true.
            "test.notify" => {
                let args = params.bind(method, &ONE_ARG)?;
                Ok(json!(session.notify(
                    "test.event",
                    &[args[0].clone().unwrap_or(Value::Null)]
                )))
            }
            // Counts a transaction sent, as a broadcast does.
            "test.sent" => {
                session.add_tx_sent();
                Ok(json!(true))
            }
            "test.cost" => {
                let amount = params.bind(method, &ONE_ARG)?[0]
                    .as_ref()
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                session.bump_cost(amount);
                Ok(json!(session.cost()))
            }
            _ => Err(RpcError::unknown_method(method)),
        }
    }

    /// "test.raw" answers pre-serialized JSON text of the requested length (at least 2).
    async fn call_raw(
        &self,
        session: &Arc<SessionContext>,
        state: &(),
        method: &str,
        params: Params,
    ) -> Result<RawJson, RpcError> {
        if method != "test.raw" {
            return self
                .call(session, state, method, params)
                .await
                .map(RawJson::from);
        }
        let n = params.bind(method, &ONE_ARG)?[0]
            .as_ref()
            .and_then(Value::as_u64)
            .unwrap_or(2)
            .max(2);
        Ok(RawJson::from_json_unchecked(format!(
            "\"{}\"",
            "r".repeat(n as usize - 2)
        )))
    }

    fn close_session(&self, session: &SessionContext, _state: &()) {
        self.closed.lock().unwrap().push(session.id());
    }

    async fn daemon_version(&self) -> Result<DaemonVersion, RpcError> {
        Ok(DaemonVersion {
            version: 290100,
            subversion: "/Satoshi:29.1.0/".into(),
        })
    }

    async fn admin_call(&self, method: &str, params: Params) -> Result<Value, RpcError> {
        match method {
            "daemon_url" => Ok(json!(format!("daemon_url called with {params:?}"))),
            _ => Err(RpcError::unknown_method(method)),
        }
    }

    fn info(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("db height".into(), json!(7));
        map
    }
}

pub use ferrum_tools::ports::free_port;

pub struct TestServer {
    pub server: Arc<Server<TestBackend>>,
    pub backend: Arc<TestBackend>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts with the given protocols on free ports plus extra variables.
    pub async fn start(protocols: &[&str], extra: &[(&str, String)]) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let services: Vec<String> = protocols
            .iter()
            .map(|p| format!("{p}://127.0.0.1:{}", free_port()))
            .collect();
        let mut vars: Vec<(String, String)> = vec![
            ("DB_DIRECTORY".into(), dir.path().display().to_string()),
            ("DAEMON_URL".into(), "u:p@127.0.0.1:1".into()),
            ("SERVICES".into(), services.join(",")),
            ("PEER_DISCOVERY".into(), "off".into()),
        ];
        for (k, v) in extra {
            vars.retain(|(name, _)| name != k);
            vars.push((k.to_string(), v.clone()));
        }
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let config = Arc::new(Config::from_pairs(&pairs).unwrap());
        let backend = Arc::new(TestBackend::default());
        let server = Server::new(config, backend.clone(), GENESIS).unwrap();
        server.start_rpc().await.unwrap();
        server.start_wallets().await.unwrap();
        TestServer {
            server,
            backend,
            dir,
        }
    }

    pub fn addr(&self, protocol: Protocol) -> SocketAddr {
        self.server
            .listening()
            .into_iter()
            .find(|(s, _)| s.protocol == protocol)
            .unwrap()
            .1
    }

    pub async fn tcp(&self) -> Client {
        Client::tcp(self.addr(Protocol::Tcp)).await
    }

    pub async fn rpc(&self) -> Client {
        Client::tcp(self.addr(Protocol::Rpc)).await
    }
}

/// A self-signed certificate for localhost/127.0.0.1 made with the openssl CLI, or None
/// (with a message) when openssl is not installed.
pub fn make_cert(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        // An end-entity certificate: rustls refuses a CA certificate as a server's.
        .args([
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    match status {
        Ok(out) if out.status.success() => Some((cert, key)),
        Ok(out) => panic!("openssl failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => {
            eprintln!("SKIPPED: TLS tests need the openssl CLI to make a certificate: {e}");
            None
        }
    }
}

fn tls_connector(cert: &Path) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

enum Inner {
    Lines(BufReader<Box<dyn Stream>>),
    Ws(Box<WebSocketStream<Box<dyn Stream>>>),
}

/// A test client: sends raw text, receives one message at a time.
pub struct Client {
    inner: Inner,
}

impl Client {
    pub async fn tcp(addr: SocketAddr) -> Client {
        let stream: Box<dyn Stream> = Box::new(TcpStream::connect(addr).await.unwrap());
        Client {
            inner: Inner::Lines(BufReader::new(stream)),
        }
    }

    pub fn from_tcp(stream: TcpStream) -> Client {
        let stream: Box<dyn Stream> = Box::new(stream);
        Client {
            inner: Inner::Lines(BufReader::new(stream)),
        }
    }

    pub async fn tls(addr: SocketAddr, cert: &Path) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tls_connector(cert)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let stream: Box<dyn Stream> = Box::new(tls);
        Client {
            inner: Inner::Lines(BufReader::new(stream)),
        }
    }

    pub async fn ws(addr: SocketAddr) -> Client {
        let stream: Box<dyn Stream> = Box::new(TcpStream::connect(addr).await.unwrap());
        let (ws, _) =
            tokio_tungstenite::client_async(format!("ws://localhost:{}/", addr.port()), stream)
                .await
                .unwrap();
        Client {
            inner: Inner::Ws(Box::new(ws)),
        }
    }

    pub async fn wss(addr: SocketAddr, cert: &Path) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tls_connector(cert)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let stream: Box<dyn Stream> = Box::new(tls);
        let (ws, _) =
            tokio_tungstenite::client_async(format!("wss://localhost:{}/", addr.port()), stream)
                .await
                .unwrap();
        Client {
            inner: Inner::Ws(Box::new(ws)),
        }
    }

    /// Sends one message (a line, or one WebSocket text message).
    pub async fn send(&mut self, text: &str) {
        match &mut self.inner {
            Inner::Lines(s) => {
                let s = s.get_mut();
                s.write_all(text.as_bytes()).await.unwrap();
                s.write_all(b"\n").await.unwrap();
                s.flush().await.unwrap();
            }
            Inner::Ws(ws) => ws.send(Message::text(text)).await.unwrap(),
        }
    }

    /// Sends bytes as they are (no framing added).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.inner {
            Inner::Lines(s) => {
                let _ = s.get_mut().write_all(bytes).await;
                let _ = s.get_mut().flush().await;
            }
            Inner::Ws(ws) => ws.send(Message::binary(bytes.to_vec())).await.unwrap(),
        }
    }

    /// The next message, or None when the server closed the connection.
    pub async fn recv(&mut self) -> Option<String> {
        let next = async {
            match &mut self.inner {
                Inner::Lines(s) => {
                    let mut line = String::new();
                    match s.read_line(&mut line).await {
                        Ok(0) | Err(_) => None,
                        Ok(_) => {
                            assert!(line.ends_with('\n'), "unterminated message: {line}");
                            Some(line.trim_end_matches('\n').to_string())
                        }
                    }
                }
                Inner::Ws(ws) => loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => {
                            let text = t.to_string();
                            assert!(
                                !text.ends_with('\n'),
                                "websocket message must not be newline-terminated"
                            );
                            break Some(text);
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        _ => break None,
                    }
                },
            }
        };
        tokio::time::timeout(WAIT, next)
            .await
            .expect("timed out waiting for the server")
    }

    pub async fn recv_json(&mut self) -> Value {
        let text = self.recv().await.expect("connection closed");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON {text}: {e}"))
    }

    /// Sends a JSON-RPC 2.0 request and returns the response.
    pub async fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string(),
        )
        .await;
        self.recv_json().await
    }

    /// Negotiates the protocol with server.version.
    pub async fn hello(&mut self, version: &str) -> Value {
        let reply = self
            .call(0, "server.version", json!(["test client", version]))
            .await;
        assert!(reply.get("result").is_some(), "{reply}");
        reply
    }

    /// Asserts the server closed the connection.
    pub async fn assert_closed(&mut self) {
        assert_eq!(self.recv().await, None);
    }
}

/// The error object of a response, as (code, message).
pub fn error_of(reply: &Value) -> (i64, String) {
    let e = &reply["error"];
    (
        e["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no error in {reply}")),
        e["message"].as_str().unwrap().to_string(),
    )
}
