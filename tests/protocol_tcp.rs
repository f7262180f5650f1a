//! The Electrum protocol over plain TCP, on real sockets: version negotiation, JSON-RPC
//! dialects, batches, errors and their exact texts, limits, and the server.* methods.

mod protocol_support;

use std::time::Duration;

use protocol_support::{error_of, Client, TestServer};
use serde_json::{json, Value};

fn version() -> String {
    format!("ferrum {}", env!("CARGO_PKG_VERSION"))
}

async fn server() -> TestServer {
    TestServer::start(&["tcp", "rpc"], &[]).await
}

#[tokio::test]
async fn version_must_come_first() {
    let s = server().await;
    let mut c = s.tcp().await;
    let reply = c.call(1, "server.ping", json!([])).await;
    assert_eq!(
        reply,
        json!({"jsonrpc": "2.0", "error": {"code": 1, "message": "use server.version to identify client"}, "id": 1})
    );
    c.assert_closed().await;

    // Unknown methods too.
    let mut c = s.tcp().await;
    let reply = c.call(1, "no.such.method", json!([])).await;
    assert_eq!(
        error_of(&reply),
        (1, "use server.version to identify client".into())
    );
    c.assert_closed().await;
}

#[tokio::test]
async fn version_only_once() {
    let s = server().await;
    let mut c = s.tcp().await;
    assert_eq!(c.hello("1.4").await["result"], json!([version(), "1.4"]));
    let reply = c.call(1, "server.version", json!(["again", "1.4"])).await;
    assert_eq!(
        reply,
        json!({"jsonrpc": "2.0", "error": {"code": 1, "message": "server.version already sent"}, "id": 1})
    );
    // The session stays usable.
    assert_eq!(
        c.call(2, "server.ping", json!([])).await["result"],
        Value::Null
    );
}

#[tokio::test]
async fn version_ranges_and_extra_arguments() {
    let s = server().await;
    let cases = [
        (json!(["c", ["1.2", "1.6"]]), "1.6"),
        (json!(["c", ["1.4", "2.0"]]), "1.6"),
        (json!(["c", "1.4.2"]), "1.4.2"),
        (json!(["c", "1.5"]), "1.5"),
        (json!([]), "1.4"),
        (json!(["c", "1.6", "extra", {"x": 1}]), "1.6"),
        (
            json!({"client_name": "c", "protocol_version": "1.6", "future": true}),
            "1.6",
        ),
        (json!({}), "1.4"),
    ];
    for (params, expected) in cases {
        let mut c = s.tcp().await;
        let reply = c.call(3, "server.version", params.clone()).await;
        assert_eq!(reply["result"], json!([version(), expected]), "{params}");
        let echo = c.call(4, "test.echo", json!([1])).await;
        assert_eq!(
            echo["result"]["version"], expected,
            "the backend sees the negotiated version"
        );
    }
}

#[tokio::test]
async fn unsupported_versions_close_the_connection() {
    let s = server().await;
    for (requested, shown) in [
        (json!("1.3"), "1.3"),
        (json!("1.7"), "1.7"),
        (json!(["1.7", "1.8"]), "['1.7', '1.8']"),
        (json!("x"), "x"),
        (json!(1.4), "1.4"),
    ] {
        let mut c = s.tcp().await;
        let reply = c.call(1, "server.version", json!(["c", requested])).await;
        assert_eq!(
            error_of(&reply),
            (1, format!("unsupported protocol version: {shown}"))
        );
        c.assert_closed().await;
    }
}

#[tokio::test]
async fn client_name_is_truncated() {
    let s = server().await;
    let mut c = s.tcp().await;
    let long = "n".repeat(150);
    c.call(1, "server.version", json!([long, "1.6"])).await;
    let sessions = s.server.sessions();
    let wallet = sessions
        .iter()
        .find(|x| x.protocol_version().is_some())
        .unwrap();
    assert_eq!(wallet.client_name(), "n".repeat(100));
}

#[tokio::test]
async fn drop_client_regex() {
    let s = TestServer::start(&["tcp"], &[("DROP_CLIENT", r"bad\d".into())]).await;
    let mut c = s.tcp().await;
    let reply = c
        .call(1, "server.version", json!(["bad7 wallet", "1.4"]))
        .await;
    assert_eq!(
        error_of(&reply),
        (1, "unsupported client: bad7 wallet".into())
    );
    c.assert_closed().await;
    // Matched from the start of the name only, like Python's re.match.
    let mut c = s.tcp().await;
    c.call(1, "server.version", json!(["my bad7", "1.4"])).await;
    assert_eq!(
        c.call(2, "server.ping", json!([])).await["result"],
        Value::Null
    );
}

#[tokio::test]
async fn jsonrpc_1_0() {
    let s = server().await;
    let mut c = s.tcp().await;
    c.send(r#"{"jsonrpc":"1.0","method":"server.version","params":["c","1.6"],"id":"a"}"#)
        .await;
    assert_eq!(
        c.recv().await.unwrap(),
        format!(
            r#"{{"result":["{}","1.6"],"error":null,"id":"a"}}"#,
            version()
        )
    );
    c.send(r#"{"method":"nope","params":[],"id":2}"#).await;
    assert_eq!(
        c.recv().await.unwrap(),
        r#"{"result":null,"error":{"code":-32601,"message":"unknown method \"nope\""},"id":2}"#
    );
    c.send(r#"{"method":"server.ping","params":[]}"#).await;
    assert_eq!(
        c.recv().await.unwrap(),
        r#"{"result":null,"error":{"code":-32600,"message":"request has no \"id\""},"id":null}"#
    );
}

#[tokio::test]
async fn jsonrpc_2_0_and_loose() {
    let s = server().await;
    let mut c = s.tcp().await;
    c.send(r#"{"jsonrpc":"2.0","method":"server.version","params":["c","1.6"],"id":1}"#)
        .await;
    c.recv().await.unwrap();
    c.send(r#"{"jsonrpc":"2.0","method":"server.ping","id":5}"#)
        .await;
    assert_eq!(
        c.recv().await.unwrap(),
        r#"{"jsonrpc":"2.0","result":null,"id":5}"#
    );
    c.send(r#"{"method":"server.ping","id":6}"#).await;
    assert_eq!(
        c.recv().await.unwrap(),
        r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"\"jsonrpc\" is not \"2.0\""},"id":6}"#
    );

    // Without "jsonrpc" from the start: accepted, answered in 2.0 form.
    let mut c = s.tcp().await;
    c.send(r#"{"method":"server.version","params":["c","1.6"],"id":"v"}"#)
        .await;
    assert_eq!(
        c.recv().await.unwrap(),
        format!(
            r#"{{"jsonrpc":"2.0","result":["{}","1.6"],"id":"v"}}"#,
            version()
        )
    );
}

#[tokio::test]
async fn batches() {
    let s = server().await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    c.send(
        r#"[{"jsonrpc":"2.0","method":"server.ping","id":1},{"jsonrpc":"2.0","method":"test.echo","params":{"value":"v"},"id":2},{"jsonrpc":"2.0","method":"server.ping"},{"jsonrpc":"2.0","method":"foo.bar","id":3},{"jsonrpc":"2.0","id":4}]"#,
    )
    .await;
    let reply = c.recv().await.unwrap();
    assert!(
        reply.contains("}, {"),
        "aiorpcx joins batch members with \", \": {reply}"
    );
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(
        reply,
        json!([
            {"jsonrpc": "2.0", "result": null, "id": 1},
            {"jsonrpc": "2.0", "result": {"value": "v", "version": "1.6"}, "id": 2},
            {"jsonrpc": "2.0", "error": {"code": -32601, "message": "unknown method \"foo.bar\""}, "id": 3},
            {"jsonrpc": "2.0", "error": {"code": -32601, "message": "method must be a string"}, "id": 4},
        ])
    );
    // A batch of notifications only gets no answer.
    c.send(r#"[{"jsonrpc":"2.0","method":"server.ping"}]"#)
        .await;
    assert_eq!(c.call(9, "server.ping", json!([])).await["id"], 9);
    // Version negotiation inside the first batch.
    let mut c = s.tcp().await;
    c.send(r#"[{"jsonrpc":"2.0","method":"server.version","params":["c","1.5"],"id":1},{"jsonrpc":"2.0","method":"test.echo","params":[3],"id":2}]"#).await;
    let reply = c.recv_json().await;
    assert_eq!(reply[1]["result"], json!({"value": 3, "version": "1.5"}));
}

/// A batch of `count` `test.sleep` requests of `ms` milliseconds, ids 0 up.
fn sleep_batch(count: usize, ms: u64) -> String {
    let members: Vec<String> = (0..count)
        .map(|i| format!(r#"{{"jsonrpc":"2.0","method":"test.sleep","params":[{ms}],"id":{i}}}"#))
        .collect();
    format!("[{}]", members.join(","))
}

#[tokio::test]
async fn a_batch_counts_each_member_towards_the_pending_limit() {
    let s = server().await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    // 2,000 members are past the 1,024 pending requests: the ping behind the batch is read,
    // and answered, only once the batch is. (Counted as one, the batch let a client queue
    // batch after batch: 130 MB each.)
    c.send(&sleep_batch(2000, 5)).await;
    c.send(r#"{"jsonrpc":"2.0","method":"server.ping","id":"after"}"#)
        .await;
    let first = c.recv_json().await;
    assert_eq!(first.as_array().map(Vec::len), Some(2000), "{first}");
    assert_eq!(
        first[1999],
        json!({"jsonrpc": "2.0", "result": 5, "id": 1999})
    );
    assert_eq!(c.recv_json().await["id"], "after");
}

#[tokio::test]
async fn a_batch_shares_one_deadline() {
    let s = TestServer::start(&["tcp"], &[("REQUEST_TIMEOUT", "1".into())]).await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    // Ten at a time (INITIAL_CONCURRENT), 300 ms each: the last of 60 cannot make 1 s.
    c.send(&sleep_batch(60, 300)).await;
    let reply = c.recv_json().await;
    let busy = json!({"code": -102, "message": "server busy - request timed out"});
    assert_eq!(reply[0]["result"], 300, "{reply}");
    assert_eq!(reply[59]["error"], busy, "{reply}");
    // The session goes on.
    assert_eq!(c.call(61, "test.sleep", json!([10])).await["result"], 10);
}

#[tokio::test]
async fn named_parameters() {
    let s = server().await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    assert_eq!(
        c.call(1, "test.echo", json!({"value": [1, 2]})).await["result"]["value"],
        json!([1, 2])
    );
    let reply = c.call(2, "test.echo", json!({})).await;
    assert_eq!(
        error_of(&reply),
        (
            -32602,
            "method \"test.echo\" requires parameter \"value\"".into()
        )
    );
    let reply = c
        .call(3, "test.echo", json!({"value": 1, "other": 2}))
        .await;
    assert_eq!(
        error_of(&reply),
        (
            -32602,
            "method \"test.echo\" does not take parameter \"other\"".into()
        )
    );
    let reply = c.call(4, "server.ping", json!({"pong_len": 0})).await;
    assert_eq!(reply["result"], Value::Null);
}

#[tokio::test]
async fn invalid_json_and_requests() {
    let s = server().await;
    let mut c = s.tcp().await;
    // Parse errors are answered, even before server.version, and do not close.
    c.send("{bad").await;
    assert_eq!(
        c.recv().await.unwrap(),
        r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"invalid JSON"},"id":null}"#
    );
    c.send_raw(b"\"\xff\"\n").await;
    assert_eq!(
        c.recv_json().await["error"],
        json!({"code": -32700, "message": "messages must be encoded in UTF-8"})
    );
    c.hello("1.6").await;
    for (text, code, message) in [
        ("5", -32600, "request object must be a dictionary"),
        ("[]", -32600, "batch is empty"),
        (
            r#"{"jsonrpc":"2.0","method":1,"id":1}"#,
            -32601,
            "method must be a string",
        ),
        (
            r#"{"jsonrpc":"2.0","method":"server.ping","params":"x","id":1}"#,
            -32602,
            "invalid request arguments: x",
        ),
        (
            r#"{"jsonrpc":"2.0","method":"server.ping","id":{"a":1}}"#,
            -32600,
            "invalid \"id\": {'a': 1}",
        ),
    ] {
        c.send(text).await;
        assert_eq!(
            error_of(&c.recv_json().await),
            (code, message.to_string()),
            "{text}"
        );
    }
    // A response from the client is counted but not answered.
    c.send(r#"{"jsonrpc":"2.0","result":1,"id":1}"#).await;
    assert_eq!(c.call(7, "server.ping", json!([])).await["id"], 7);
}

#[tokio::test]
async fn unknown_method_and_wrong_parameter_counts() {
    let s = server().await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    let cases = [
        (
            "blockchain.nothing",
            json!([]),
            -32601,
            "unknown method \"blockchain.nothing\"",
        ),
        (
            "server.ping",
            json!([0, "", 3]),
            -32602,
            "3 arguments passed to method server.ping taking at most 2",
        ),
        (
            "server.banner",
            json!([1]),
            -32602,
            "1 argument passed to method server.banner taking at most 0",
        ),
        (
            "server.add_peer",
            json!([]),
            -32602,
            "0 arguments passed to method \"server.add_peer\" but it requires 1",
        ),
        (
            "test.echo",
            json!([]),
            -32602,
            "0 arguments passed to method \"test.echo\" but it requires 1",
        ),
        ("test.fail", json!([]), 1, "test failure"),
    ];
    for (method, params, code, message) in cases {
        let reply = c.call(1, method, params).await;
        assert_eq!(error_of(&reply), (code, message.to_string()), "{method}");
    }
}

#[tokio::test]
async fn oversized_request_closes() {
    let s = TestServer::start(&["tcp"], &[("MAX_RECV", "1000".into())]).await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    let fits = format!(
        r#"{{"jsonrpc":"2.0","method":"test.echo","params":["{}"],"id":1}}"#,
        "a".repeat(900)
    );
    c.send(&fits).await;
    assert!(c.recv_json().await.get("result").is_some());
    c.send(&"x".repeat(2000)).await;
    assert_eq!(
        c.recv().await.unwrap(),
        r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"request too large (over 1,000 bytes)"},"id":null}"#
    );
    c.assert_closed().await;
}

#[tokio::test]
async fn errors_eventually_disconnect() {
    let s = TestServer::start(
        &["tcp"],
        &[
            ("COST_SOFT_LIMIT", "100".into()),
            ("COST_HARD_LIMIT", "300".into()),
        ],
    )
    .await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    let mut answers = Vec::new();
    for id in 0..10 {
        let reply = c.call(id, "test.fail", json!([])).await;
        let error = error_of(&reply);
        answers.push(error.clone());
        if error.0 == -101 {
            break;
        }
    }
    assert_eq!(
        answers.last().unwrap(),
        &(-101, "excessive resource usage".to_string()),
        "{answers:?}"
    );
    assert!(
        answers.len() >= 3,
        "soft limit throttles before the hard limit disconnects: {answers:?}"
    );
    c.assert_closed().await;
}

#[tokio::test]
async fn parse_errors_cost_more() {
    let s = TestServer::start(
        &["tcp"],
        &[
            ("COST_SOFT_LIMIT", "1000".into()),
            ("COST_HARD_LIMIT", "5000".into()),
        ],
    )
    .await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    for _ in 0..5 {
        c.send("not json").await;
        assert_eq!(error_of(&c.recv_json().await).0, -32700);
    }
    let reply = c.call(1, "server.ping", json!([])).await;
    assert_eq!(error_of(&reply), (-101, "excessive resource usage".into()));
    c.assert_closed().await;
}

#[tokio::test]
async fn max_send_replaces_large_responses() {
    let s = TestServer::start(&["tcp"], &[("MAX_SEND", "350000".into())]).await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    let ok = c.call(1, "test.big", json!([300_000])).await;
    assert_eq!(ok["result"].as_str().unwrap().len(), 300_000);
    c.send(
        &json!({"jsonrpc": "2.0", "id": 2, "method": "test.big", "params": [400_000]}).to_string(),
    )
    .await;
    assert_eq!(
        c.recv().await.unwrap(),
        r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"response too large (over 350,000 bytes"},"id":2}"#
    );
    // Pre-serialized results are held to the same limit.
    assert_eq!(
        c.call(5, "test.raw", json!([12])).await["result"],
        "rrrrrrrrrr"
    );
    let reply = c.call(6, "test.raw", json!([400_000])).await;
    assert_eq!(
        error_of(&reply),
        (-32600, "response too large (over 350,000 bytes".into())
    );
    // In a batch the running total counts.
    c.send(r#"[{"jsonrpc":"2.0","method":"test.big","params":[200000],"id":3},{"jsonrpc":"2.0","method":"test.big","params":[200000],"id":4}]"#).await;
    let reply = c.recv_json().await;
    assert_eq!(reply[0]["result"].as_str().unwrap().len(), 200_000);
    assert_eq!(
        error_of(&reply[1]),
        (-32600, "response too large (over 350,000 bytes".into())
    );
    assert_eq!(reply[1]["id"], 4);
}

#[tokio::test]
async fn server_methods() {
    let s = TestServer::start(
        &["tcp"],
        &[
            ("DONATION_ADDRESS", "bc1qdonate".into()),
            (
                "REPORT_SERVICES",
                "tcp://example.com:50001,ssl://example.com:50002".into(),
            ),
        ],
    )
    .await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    assert_eq!(
        c.call(1, "server.ping", json!([])).await["result"],
        Value::Null
    );
    assert_eq!(
        c.call(2, "server.donation_address", json!([])).await["result"],
        "bc1qdonate"
    );
    assert_eq!(
        c.call(3, "server.banner", json!([])).await["result"],
        format!("You are connected to a {} server.", version())
    );
    assert_eq!(
        c.call(4, "server.peers.subscribe", json!([])).await["result"],
        json!([])
    );
    assert_eq!(
        c.call(5, "server.add_peer", json!([{"hosts": {}}])).await["result"],
        json!(false)
    );
    let features = c.call(6, "server.features", json!([])).await["result"].clone();
    assert_eq!(
        features,
        json!({
            "hosts": {"example.com": {"tcp_port": 50001, "ssl_port": 50002}},
            "pruning": null,
            "server_version": version(),
            "protocol_min": "1.4",
            "protocol_max": "1.6",
            "genesis_hash": protocol_support::GENESIS,
            "hash_function": "sha256",
            "services": ["tcp://example.com:50001", "ssl://example.com:50002"],
        })
    );
}

#[tokio::test]
async fn banner_file_substitutions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("banner"), "v=$SERVER_VERSION s=$SERVER_SUBVERSION d=$DAEMON_VERSION ds=$DAEMON_SUBVERSION a=$DONATION_ADDRESS").unwrap();
    std::fs::write(dir.path().join("tor"), "tor banner").unwrap();
    let banner = dir.path().join("banner").display().to_string();
    let s = TestServer::start(
        &["tcp"],
        &[
            ("BANNER_FILE", banner.clone()),
            ("DONATION_ADDRESS", "addr".into()),
        ],
    )
    .await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    let expected = format!(
        "v={} s={} d=29.1.0 ds=/Satoshi:29.1.0/ a=addr",
        env!("CARGO_PKG_VERSION"),
        version()
    );
    assert_eq!(
        c.call(1, "server.banner", json!([])).await["result"],
        expected
    );
    // Loopback clients are taken as arriving through the local Tor proxy.
    let tor = dir.path().join("tor").display().to_string();
    let s = TestServer::start(
        &["tcp"],
        &[("BANNER_FILE", banner), ("TOR_BANNER_FILE", tor)],
    )
    .await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    assert_eq!(
        c.call(1, "server.banner", json!([])).await["result"],
        "tor banner"
    );
    // An unreadable banner file falls back to the default banner.
    let s = TestServer::start(&["tcp"], &[("BANNER_FILE", "/nonexistent/banner".into())]).await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    assert_eq!(
        c.call(1, "server.banner", json!([])).await["result"],
        format!("You are connected to a {} server.", version())
    );
}

#[tokio::test]
async fn notifications_and_client_notifications() {
    let s = server().await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    c.send(r#"{"jsonrpc":"2.0","method":"test.notify","params":[7],"id":1}"#)
        .await;
    assert_eq!(
        c.recv().await.unwrap(),
        r#"{"jsonrpc":"2.0","method":"test.event","params":[7]}"#
    );
    assert_eq!(c.recv_json().await["result"], json!(true));
    // Notifications from the client get no answer.
    c.send(r#"{"jsonrpc":"2.0","method":"server.ping"}"#).await;
    assert_eq!(c.call(2, "server.ping", json!([])).await["id"], 2);
}

#[tokio::test]
async fn a_panicking_handler_answers_internal_error() {
    let s = server().await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    let reply = c.call(1, "test.panic", json!([])).await;
    assert_eq!(error_of(&reply), (-32603, "internal server error".into()));
    assert_eq!(
        c.call(2, "server.ping", json!([])).await["result"],
        Value::Null
    );
}

#[tokio::test]
async fn request_timeout() {
    let s = TestServer::start(&["tcp"], &[("REQUEST_TIMEOUT", "1".into())]).await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    let reply = c.call(1, "test.sleep", json!([3000])).await;
    assert_eq!(
        error_of(&reply),
        (-102, "server busy - request timed out".into())
    );
    assert_eq!(c.call(2, "test.sleep", json!([10])).await["result"], 10);
}

#[tokio::test]
async fn idle_sessions_are_closed() {
    let s = TestServer::start(&["tcp"], &[("SESSION_TIMEOUT", "1".into())]).await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    let started = std::time::Instant::now();
    c.assert_closed().await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    let closed = s.backend.closed.lock().unwrap().clone();
    assert_eq!(closed.len(), 1, "the backend hears of the closed session");
}

#[tokio::test]
async fn requests_pipelined_behind_version() {
    let s = server().await;
    for _ in 0..20 {
        let mut c = s.tcp().await;
        c.send_raw(b"{\"jsonrpc\":\"2.0\",\"method\":\"server.version\",\"params\":[\"c\",\"1.6\"],\"id\":1}\n{\"jsonrpc\":\"2.0\",\"method\":\"test.echo\",\"params\":[2],\"id\":2}\n").await;
        assert_eq!(c.recv_json().await["id"], 1);
        assert_eq!(
            c.recv_json().await["result"],
            json!({"value": 2, "version": "1.6"})
        );
    }
}

#[tokio::test]
async fn requests_run_concurrently() {
    let s = server().await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    c.send(r#"{"jsonrpc":"2.0","method":"test.sleep","params":[2000],"id":1}"#)
        .await;
    c.send(r#"{"jsonrpc":"2.0","method":"test.sleep","params":[1],"id":2}"#)
        .await;
    assert_eq!(
        c.recv_json().await["id"],
        2,
        "a slow request does not hold up the next"
    );
    assert_eq!(c.recv_json().await["id"], 1);
}

#[tokio::test]
async fn initial_concurrent_bounds_parallel_requests() {
    let s = TestServer::start(&["tcp"], &[("INITIAL_CONCURRENT", "1".into())]).await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    c.send(r#"{"jsonrpc":"2.0","method":"test.sleep","params":[300],"id":1}"#)
        .await;
    c.send(r#"{"jsonrpc":"2.0","method":"test.sleep","params":[1],"id":2}"#)
        .await;
    assert_eq!(c.recv_json().await["id"], 1, "one request at a time");
    assert_eq!(c.recv_json().await["id"], 2);
}

#[tokio::test]
async fn cost_over_soft_limit_delays_requests() {
    let vars = [
        ("COST_SOFT_LIMIT", "100".to_string()),
        ("COST_HARD_LIMIT", "1100".to_string()),
        ("REQUEST_SLEEP", "1000".to_string()),
    ];
    let s = TestServer::start(&["tcp"], &vars).await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    // 600 above the soft limit: 60% of the way to the hard limit.
    c.call(1, "test.cost", json!([700])).await;
    let started = std::time::Instant::now();
    assert_eq!(
        c.call(2, "server.ping", json!([])).await["result"],
        Value::Null
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "slept {:?}",
        started.elapsed()
    );
    let row = s.server.sessions()[0].max_concurrent();
    assert_eq!(row, 4, "concurrency falls with cost: ceil(0.4 * 10)");
}

#[tokio::test]
async fn half_closed_client_still_gets_answers() {
    let s = server().await;
    let mut stream = tokio::net::TcpStream::connect(s.addr(ferrum::services::Protocol::Tcp))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"server.version\",\"params\":[\"c\",\"1.6\"],\"id\":1}\n{\"jsonrpc\":\"2.0\",\"method\":\"test.sleep\",\"params\":[200],\"id\":2}\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut all = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut all))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all.lines().count(), 2, "{all}");
    assert!(
        all.ends_with("{\"jsonrpc\":\"2.0\",\"result\":200,\"id\":2}\n"),
        "{all}"
    );
}

#[tokio::test]
async fn max_sessions_pauses_listening() {
    let s = TestServer::start(&["tcp"], &[("MAX_SESSIONS", "1".into())]).await;
    let addr = s.addr(ferrum::services::Protocol::Tcp);
    let mut first = Client::tcp(addr).await;
    first.hello("1.6").await;
    // At the limit the listening socket is closed, so connecting is refused.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    drop(first);
    // Once the count falls to 95% of the limit (here zero), listening resumes.
    let mut resumed = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
            resumed = Some(Client::from_tcp(stream));
            break;
        }
    }
    let mut c = resumed.expect("listening resumed");
    c.hello("1.6").await;
}

#[tokio::test]
async fn slow_reader_is_disconnected() {
    let s = server().await;
    let mut c = s.tcp().await;
    c.hello("1.6").await;
    let ctx = s.backend.opened.lock().unwrap()[0].clone();
    let payload = json!("y".repeat(10_000));
    let mut refused = 0;
    for _ in 0..20_000 {
        if !ctx.notify("test.flood", std::slice::from_ref(&payload)) {
            refused += 1;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(refused, 1, "a client that does not read is cut off");
    assert!(ctx.is_closing());
}
