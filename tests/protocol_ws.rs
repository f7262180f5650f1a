//! The protocol over ws://: one JSON-RPC message per WebSocket message, no newlines.

mod protocol_support;

use ferrum::services::Protocol;
use protocol_support::{error_of, Client, TestServer};
use serde_json::{json, Value};

#[tokio::test]
async fn websocket_sessions() {
    let s = TestServer::start(&["ws"], &[]).await;
    let mut c = Client::ws(s.addr(Protocol::Ws)).await;
    let reply = c.call(1, "blockchain.headers.subscribe", json!([])).await;
    assert_eq!(
        error_of(&reply),
        (1, "use server.version to identify client".into())
    );
    c.assert_closed().await;

    let mut c = Client::ws(s.addr(Protocol::Ws)).await;
    c.send(r#"{"jsonrpc":"2.0","method":"server.version","params":["ws client",["1.4","1.6"]],"id":0}"#).await;
    assert_eq!(
        c.recv().await.unwrap(),
        format!(
            r#"{{"jsonrpc":"2.0","result":["ferrum {}","1.6"],"id":0}}"#,
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(
        c.call(1, "server.ping", json!([])).await["result"],
        Value::Null
    );
    assert_eq!(
        c.call(2, "test.echo", json!({"value": 5})).await["result"]["value"],
        5
    );
    c.send(r#"[{"jsonrpc":"2.0","method":"server.donation_address","id":1},{"jsonrpc":"2.0","method":"test.fail","id":2}]"#).await;
    let reply = c.recv_json().await;
    assert_eq!(reply[0]["result"], "");
    assert_eq!(error_of(&reply[1]), (1, "test failure".into()));
    c.send("nonsense").await;
    assert_eq!(
        error_of(&c.recv_json().await),
        (-32700, "invalid JSON".into())
    );
    // Binary messages are read as text.
    c.send_raw(br#"{"jsonrpc":"2.0","method":"server.ping","id":9}"#)
        .await;
    assert_eq!(c.recv_json().await["id"], 9);
}

#[tokio::test]
async fn websocket_oversized_message_closes() {
    let s = TestServer::start(&["ws"], &[("MAX_RECV", "1000".into())]).await;
    let mut c = Client::ws(s.addr(Protocol::Ws)).await;
    c.hello("1.6").await;
    c.send(&"x".repeat(5000)).await;
    assert_eq!(
        c.recv().await.unwrap(),
        r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"request too large (over 1,000 bytes)"},"id":null}"#
    );
    c.assert_closed().await;
}

#[tokio::test]
async fn websocket_max_send() {
    let s = TestServer::start(&["ws"], &[("MAX_SEND", "350000".into())]).await;
    let mut c = Client::ws(s.addr(Protocol::Ws)).await;
    c.hello("1.6").await;
    let reply = c.call(5, "test.big", json!([360_000])).await;
    assert_eq!(
        reply,
        json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "response too large (over 350,000 bytes"}, "id": 5})
    );
}
