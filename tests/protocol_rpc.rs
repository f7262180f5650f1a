//! The local RPC (rpc://): no version negotiation; getinfo, sessions, groups, disconnect,
//! log and stop; other commands go to the backend; `daemon_url` through the real binary,
//! switching between two emulated nodes.

mod e2e_support;
mod protocol_support;

use e2e_support::FerrumProcess;
use ferrum::services::Protocol;
use ferrum_tools::chaingen::ChainParams;
use ferrum_tools::emulator::{Auth, ChainSource, Emulator, EmulatorConfig};
use protocol_support::{error_of, make_cert, Client, TestServer};
use serde_json::json;

#[tokio::test]
async fn getinfo_and_sessions() {
    let s = TestServer::start(&["tcp", "rpc"], &[]).await;
    let mut wallet = s.tcp().await;
    wallet
        .call(0, "server.version", json!(["Electrum 4.5.8", "1.6"]))
        .await;
    wallet.call(1, "server.ping", json!([])).await;
    let mut rpc = s.rpc().await;
    let info = rpc.call(1, "getinfo", json!([])).await["result"].clone();
    assert_eq!(info["coin"], "Bitcoin");
    assert_eq!(
        info["version"],
        format!("ferrum {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(info["pid"], std::process::id());
    assert_eq!(
        info["sessions"]["count"], 2,
        "the RPC session counts too, as in ElectrumX"
    );
    assert_eq!(info["request counts"]["server.version"], 1);
    assert_eq!(info["request counts"]["server.ping"], 1);
    assert_eq!(info["db height"], 7, "the backend adds its members");
    assert!(info["uptime"].as_str().unwrap().ends_with('s'));

    let sessions = rpc.call(2, "sessions", json!([])).await["result"].clone();
    let rows = sessions.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let wallet_row = &rows[0];
    assert_eq!(wallet_row[1], "T10", "flags: TCP, concurrency 10");
    assert_eq!(wallet_row[3], "Electrum 4.5.8");
    assert_eq!(wallet_row[4], "1.6");
    assert!(
        wallet_row[5].as_f64().unwrap() > 5.0,
        "cost includes the connection cost"
    );
    assert_eq!(wallet_row[10], 2, "requests received");
    assert_eq!(rows[1][4], "RPC");
    assert!(rows[1][1].as_str().unwrap().starts_with('R'));
    assert_eq!(rpc.call(3, "groups", json!([])).await["result"], json!([]));
}

#[tokio::test]
async fn txs_sent_counts_the_servers_life() {
    let s = TestServer::start(&["tcp", "rpc"], &[]).await;
    let mut rpc = s.rpc().await;
    let mut wallet = s.tcp().await;
    wallet.hello("1.6").await;
    wallet.call(1, "test.sent", json!([])).await;
    wallet.call(2, "test.sent", json!([])).await;
    let info = rpc.call(1, "getinfo", json!([])).await["result"].clone();
    assert_eq!(info["txs sent"], 2);
    // Sessions that have ended still count, as in ElectrumX.
    drop(wallet);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let info = rpc.call(2, "getinfo", json!([])).await["result"].clone();
        if info["sessions"]["count"] == 1 {
            assert_eq!(info["txs sent"], 2, "{info}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the wallet session never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn disconnect_and_log() {
    let s = TestServer::start(&["tcp", "rpc"], &[]).await;
    let mut wallet = s.tcp().await;
    wallet.hello("1.6").await;
    let id = s
        .server
        .sessions()
        .iter()
        .find(|x| x.kind() == Protocol::Tcp)
        .unwrap()
        .id();
    let mut rpc = s.rpc().await;
    let reply = rpc
        .call(1, "log", json!([[id.to_string(), "new", "g1"]]))
        .await;
    assert_eq!(
        reply["result"],
        json!([
            "logging new sessions",
            format!("logging session {id}"),
            "unknown: g1"
        ])
    );
    let reply = rpc
        .call(2, "disconnect", json!([[id.to_string(), "999"]]))
        .await;
    assert_eq!(
        reply["result"],
        json!([format!("disconnecting session {id}"), "unknown: 999"])
    );
    wallet.assert_closed().await;
    let reply = rpc.call(3, "disconnect", json!(["all"])).await;
    assert_eq!(
        error_of(&reply),
        (1, "expected a list of session IDs".into())
    );
    let reply = rpc.call(4, "log", json!([["none"]])).await;
    assert_eq!(reply["result"], json!(["logging no sessions"]));
    let reply = rpc.call(5, "disconnect", json!([[]])).await;
    assert_eq!(reply["result"], json!([]));
    let reply = rpc.call(6, "disconnect", json!([["ALL"]])).await;
    assert_eq!(reply["result"], json!(["disconnecting all sessions"]));
    rpc.assert_closed().await;
}

#[tokio::test]
async fn errors_and_backend_commands() {
    let s = TestServer::start(&["rpc"], &[]).await;
    let mut rpc = s.rpc().await;
    let reply = rpc.call(1, "nosuch", json!([])).await;
    assert_eq!(
        error_of(&reply),
        (-32601, "unknown method \"nosuch\"".into())
    );
    let reply = rpc.call(2, "getinfo", json!([1])).await;
    assert_eq!(
        error_of(&reply),
        (
            -32602,
            "1 argument passed to method getinfo taking at most 0".into()
        )
    );
    let reply = rpc.call(3, "disconnect", json!([])).await;
    assert_eq!(
        error_of(&reply),
        (
            -32602,
            "0 arguments passed to method \"disconnect\" but it requires 1".into()
        )
    );
    let reply = rpc.call(4, "daemon_url", json!(["http://x"])).await;
    assert!(reply["result"]
        .as_str()
        .unwrap()
        .starts_with("daemon_url called with"));
    // No response limit on the local RPC.
    assert_eq!(
        rpc.call(5, "sessions", json!([])).await["result"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn stop_command() {
    let s = TestServer::start(&["tcp", "rpc"], &[]).await;
    let mut wallet = s.tcp().await;
    wallet.hello("1.6").await;
    let mut rpc = s.rpc().await;
    assert_eq!(rpc.call(1, "stop", json!([])).await["result"], "stopping");
    tokio::time::timeout(std::time::Duration::from_secs(5), s.server.stop_requested())
        .await
        .unwrap();
    s.server.shutdown().await;
    wallet.assert_closed().await;
    assert!(
        tokio::net::TcpStream::connect(s.addr(Protocol::Tcp))
            .await
            .is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn wallets_start_separately() {
    let dir = tempfile::tempdir().unwrap();
    let (tcp, rpc) = (protocol_support::free_port(), protocol_support::free_port());
    let services = format!("tcp://127.0.0.1:{tcp},rpc://127.0.0.1:{rpc}");
    let db = dir.path().display().to_string();
    let pairs = [
        ("DB_DIRECTORY", db.as_str()),
        ("DAEMON_URL", "u:p@h"),
        ("SERVICES", services.as_str()),
    ];
    let config = std::sync::Arc::new(ferrum::config::Config::from_pairs(&pairs).unwrap());
    let server = ferrum::server::Server::new(
        config,
        std::sync::Arc::new(protocol_support::TestBackend::default()),
        "00",
    )
    .unwrap();
    server.start_rpc().await.unwrap();
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", rpc))
        .await
        .is_ok());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", tcp))
            .await
            .is_err(),
        "wallets wait until caught up"
    );
    server.start_wallets().await.unwrap();
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", tcp))
        .await
        .is_ok());
}

/// Reads header notifications until one at `height`; returns its block hash.
async fn header_at(wallet: &mut Client, height: u64) -> bitcoin::BlockHash {
    loop {
        let note = wallet.recv_json().await;
        assert_eq!(note["method"], "blockchain.headers.subscribe", "{note}");
        if note["params"][0]["height"] == height {
            let hex = note["params"][0]["hex"].as_str().unwrap();
            let header: bitcoin::block::Header =
                bitcoin::consensus::encode::deserialize_hex(hex).unwrap();
            return header.block_hash();
        }
    }
}

/// ElectrumX's `daemon_url`: a new list replaces the node URLs and its first is used at once;
/// an empty one restores DAEMON_URL; bad ones are refused and change nothing.
#[tokio::test]
async fn daemon_url_switches_nodes_at_run_time() {
    // Two nodes on the same generated chain (the same blocks come when either mines).
    let chain = || ChainSource::Generated {
        params: ChainParams::small(3),
        blocks: 30,
    };
    let first = Emulator::start(EmulatorConfig::new(chain())).unwrap();
    let mut config = EmulatorConfig::new(chain());
    config.auth = Auth::UserPass("alice".into(), "secret".into());
    let second = Emulator::start(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some((cert, key)) = make_cert(dir.path()) else {
        return;
    };
    let server = FerrumProcess::start(&first, &cert, &key);
    let mut wallet = Client::tcp(server.tcp).await;
    wallet.hello("1.4").await;
    let tip = wallet
        .call(1, "blockchain.headers.subscribe", json!([]))
        .await;
    assert_eq!(tip["result"]["height"], 30);
    let mut rpc = Client::tcp(server.rpc).await;

    let refused = [
        (
            json!(["u:p@h:bad"]),
            "an error occurred: bad DAEMON_URL entry \"u:***@h:bad\": bad port \"bad\"",
        ),
        (
            json!(["u:p@h1,https://u:p@h2"]),
            "an error occurred: bad DAEMON_URL entry \"https://u:***@h2\": https is not supported \
             (bitcoind serves plain HTTP)",
        ),
        (
            json!([5]),
            "an error occurred: AttributeError(\"'int' object has no attribute 'split'\")",
        ),
        (
            json!([["u:p@h"]]),
            "an error occurred: AttributeError(\"'list' object has no attribute 'split'\")",
        ),
    ];
    for (params, message) in refused {
        let reply = rpc.call(1, "daemon_url", params).await;
        assert_eq!(error_of(&reply), (1, message.into()));
    }
    let reply = rpc.call(2, "daemon_url", json!([])).await;
    assert_eq!(
        error_of(&reply),
        (
            -32602,
            "0 arguments passed to method \"daemon_url\" but it requires 1".into()
        )
    );

    let port = |emu: &Emulator| emu.rpc_addr().port();
    let url = format!("alice:secret@127.0.0.1:{},u:p@h2", port(&second));
    let reply = rpc.call(3, "daemon_url", json!([url])).await;
    assert_eq!(
        reply["result"],
        format!("now using daemon at 127.0.0.1:{}/", port(&second))
    );
    // Only the second node has block 31.
    let mined = second.mine(1).unwrap();
    assert_eq!(header_at(&mut wallet, 31).await, mined[0]);

    // Falsy (named, as electrumx_rpc sends it): back to DAEMON_URL, which has block 32 first.
    let reply = rpc.call(4, "daemon_url", json!({"daemon_url": ""})).await;
    assert_eq!(
        reply["result"],
        format!("now using daemon at 127.0.0.1:{}/", port(&first))
    );
    let mined = first.mine(2).unwrap();
    assert_eq!(header_at(&mut wallet, 32).await, mined[1]);
}
