//! The protocol over ssl:// and wss:// (TLS with a self-signed certificate made by the
//! openssl CLI), and start-up errors for bad certificate files.

mod protocol_support;

use std::sync::Arc;

use ferrum::config::Config;
use ferrum::server::Server;
use ferrum::services::Protocol;
use protocol_support::{error_of, make_cert, Client, TestBackend, TestServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn tls_server(dir: &std::path::Path) -> Option<(TestServer, std::path::PathBuf)> {
    let (cert, key) = make_cert(dir)?;
    let server = TestServer::start(
        &["ssl", "wss"],
        &[
            ("SSL_CERTFILE", cert.display().to_string()),
            ("SSL_KEYFILE", key.display().to_string()),
        ],
    )
    .await;
    Some((server, cert))
}

#[tokio::test]
async fn ssl_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let Some((s, cert)) = tls_server(dir.path()).await else {
        return;
    };
    let mut c = Client::tls(s.addr(Protocol::Ssl), &cert).await;
    let reply = c.call(1, "server.ping", json!([])).await;
    assert_eq!(
        error_of(&reply),
        (1, "use server.version to identify client".into())
    );
    c.assert_closed().await;

    let mut c = Client::tls(s.addr(Protocol::Ssl), &cert).await;
    assert_eq!(c.hello("1.6").await["result"][1], "1.6");
    assert_eq!(
        c.call(2, "test.echo", json!({"value": "tls"})).await["result"]["value"],
        "tls"
    );
    c.send("{").await;
    assert_eq!(
        error_of(&c.recv_json().await),
        (-32700, "invalid JSON".into())
    );
    c.send(r#"[{"jsonrpc":"2.0","method":"server.ping","id":1},{"jsonrpc":"2.0","method":"x.y","id":2}]"#).await;
    let reply = c.recv_json().await;
    assert_eq!(reply[0]["result"], Value::Null);
    assert_eq!(
        error_of(&reply[1]),
        (-32601, "unknown method \"x.y\"".into())
    );
    assert_eq!(s.server.sessions()[0].kind(), Protocol::Ssl);
}

#[tokio::test]
async fn wss_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let Some((s, cert)) = tls_server(dir.path()).await else {
        return;
    };
    let mut c = Client::wss(s.addr(Protocol::Wss), &cert).await;
    assert_eq!(c.hello("1.5").await["result"][1], "1.5");
    c.send(r#"{"jsonrpc":"2.0","method":"test.notify","params":["n"],"id":3}"#)
        .await;
    assert_eq!(
        c.recv().await.unwrap(),
        r#"{"jsonrpc":"2.0","method":"test.event","params":["n"]}"#
    );
    assert_eq!(
        c.recv().await.unwrap(),
        r#"{"jsonrpc":"2.0","result":true,"id":3}"#
    );
    let reply = c.call(4, "server.version", json!(["again"])).await;
    assert_eq!(error_of(&reply), (1, "server.version already sent".into()));
}

#[tokio::test]
async fn plain_tcp_to_ssl_port_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let Some((s, _cert)) = tls_server(dir.path()).await else {
        return;
    };
    let mut stream = tokio::net::TcpStream::connect(s.addr(Protocol::Ssl))
        .await
        .unwrap();
    stream
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"server.version\",\"id\":1}\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // A TLS alert at most, then the connection ends (or is reset); never a JSON-RPC answer.
    let ended = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(ended.is_ok(), "the server ends the connection");
    assert!(!String::from_utf8_lossy(&answer).contains("jsonrpc"));
}

fn config_with_files(
    dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Arc<Config> {
    let services = format!("ssl://127.0.0.1:{}", protocol_support::free_port());
    let (db, cert, key) = (
        dir.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let pairs = [
        ("DB_DIRECTORY", db.as_str()),
        ("DAEMON_URL", "u:p@h"),
        ("SERVICES", services.as_str()),
        ("SSL_CERTFILE", cert.as_str()),
        ("SSL_KEYFILE", key.as_str()),
    ];
    Arc::new(Config::from_pairs(&pairs).unwrap())
}

#[test]
fn bad_certificate_files_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let backend = Arc::new(TestBackend::default());
    let start = |cert: &std::path::Path, key: &std::path::Path| {
        Server::new(
            config_with_files(dir.path(), cert, key),
            backend.clone(),
            "00",
        )
        .err()
        .unwrap()
    };
    let e = start(&missing, &missing);
    assert!(
        e.starts_with(&format!("SSL_CERTFILE {}: ", missing.display())),
        "{e}"
    );
    assert_eq!(
        start(&garbage, &missing),
        format!("SSL_CERTFILE {}: no certificate found", garbage.display())
    );
    if let Some((cert, _key)) = make_cert(dir.path()) {
        let e = start(&cert, &missing);
        assert!(
            e.starts_with(&format!("SSL_KEYFILE {}: ", missing.display())),
            "{e}"
        );
        let e = start(&cert, &garbage);
        assert!(
            e.starts_with(&format!("SSL_KEYFILE {}: ", garbage.display())),
            "{e}"
        );
    }
}
