use std::net::SocketAddr;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::*;
use crate::coin::Network;
use crate::daemon::DaemonSettings;

fn endpoint(host: &str, port: u16) -> Endpoint {
    Endpoint {
        host: host.into(),
        port,
    }
}

#[test]
fn settings_and_endpoints() {
    assert_eq!(Setting::parse(""), Some(Setting::Auto));
    assert_eq!(Setting::parse(" Auto "), Some(Setting::Auto));
    assert_eq!(Setting::parse("off"), Some(Setting::Off));
    assert_eq!(
        Setting::parse("tcp://127.0.0.1:28332"),
        Some(Setting::Endpoint(endpoint("127.0.0.1", 28332)))
    );
    assert_eq!(
        Endpoint::parse("tcp://[::1]:28332"),
        Some(endpoint("::1", 28332))
    );
    for bad in [
        "on",
        "tcp://host",
        "tcp://host:0",
        "tcp://host:65536",
        "tcp://:28332",
        "tcp://::1:28332",
        "tcp://[::1:28332",
        "udp://host:1",
        "ipc:///tmp/bitcoind.zmq",
    ] {
        assert_eq!(Setting::parse(bad), None, "{bad}");
    }
    assert_eq!(endpoint("::1", 1).to_string(), "tcp://[::1]:1");
    assert_eq!(endpoint("node", 2).to_string(), "tcp://node:2");
    // A publisher bound to every interface is reached where the node's RPC is.
    for any in ["*", "0.0.0.0", "::"] {
        assert_eq!(endpoint(any, 3).reachable("node"), endpoint("node", 3));
    }
    assert_eq!(
        endpoint("10.1.1.1", 3).reachable("node"),
        endpoint("10.1.1.1", 3)
    );
}

#[test]
fn finds_the_hashblock_publisher() {
    let reply = json!([
        {"type": "pubrawtx", "address": "tcp://127.0.0.1:28333", "hwm": 1000},
        {"type": "pubhashblock", "address": "tcp://0.0.0.0:28332", "hwm": 1000},
    ]);
    assert_eq!(hashblock_address(&reply), Ok(Some("tcp://0.0.0.0:28332")));
    assert_eq!(hashblock_address(&json!([])), Ok(None));
    assert_eq!(
        hashblock_address(&json!({})),
        Err("reply is not an array".to_string())
    );
    assert_eq!(
        hashblock_address(&json!([{"type": "pubhashblock"}])),
        Err("the pubhashblock entry has no address".to_string())
    );
}

#[tokio::test]
async fn subscriptions_probe_a_silent_peer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    keep_alive(&stream).unwrap();
    let socket = socket2::SockRef::from(&stream);
    assert!(socket.keepalive().unwrap());
    assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
    assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
    assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
}

/// A node whose `getzmqnotifications` names `publisher`: its URL for `DAEMON_URL`.
async fn node_publishing_at(publisher: SocketAddr) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("u:p@{}", listener.local_addr().unwrap());
    let reply = json!({
        "result": [{"type": "pubhashblock", "address": format!("tcp://{publisher}")}],
        "error": null,
        "id": 1,
    })
    .to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                // The whole request is read, so that closing the connection resets nothing.
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end().to_ascii_lowercase();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(value) = line.strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                if stream.read_exact(&mut body).await.is_err() {
                    return;
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = stream.get_mut().write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

/// The next subscriber to connect to `publisher`, if one comes within `wait`. The connection
/// is kept open and never greeted, so the subscriber waits on its handshake (for
/// `CONNECT_TIMEOUT`, longer than any wait here).
async fn connection_within(publisher: &TcpListener, wait: Duration) -> Option<TcpStream> {
    let accepted = tokio::time::timeout(wait, publisher.accept()).await.ok()?;
    Some(accepted.unwrap().0)
}

/// `DAEMON_ZMQ=auto` follows the node in use to its publisher as soon as `daemon_url` changes
/// it (well before the handshake with the old publisher could time out); an explicit endpoint
/// stays where it is.
#[tokio::test]
async fn auto_follows_the_node_in_use_an_endpoint_stays() {
    let wait = CONNECT_TIMEOUT / 2;
    let network = Network::lookup("Bitcoin", Some("regtest")).unwrap();
    let publishers = [
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    ];
    let mut nodes = Vec::new();
    for publisher in &publishers {
        nodes.push(node_publishing_at(publisher.local_addr().unwrap()).await);
    }
    let explicit = Endpoint::parse(&format!("tcp://{}", publishers[0].local_addr().unwrap()));
    for setting in [Setting::Auto, Setting::Endpoint(explicit.unwrap())] {
        let settings = DaemonSettings::new(vec![nodes[0].clone()]);
        let daemon = Arc::new(Daemon::new(&settings, network).unwrap());
        let task = tokio::spawn(follow(setting.clone(), daemon.clone(), Arc::default()));
        let _first = connection_within(&publishers[0], wait).await.unwrap();
        daemon.set_urls(&[nodes[1].clone()]).unwrap();
        if setting == Setting::Auto {
            let moved = connection_within(&publishers[1], wait).await;
            assert!(moved.is_some(), "no subscriber at the new node's publisher");
        } else {
            let again = connection_within(&publishers[0], Duration::from_millis(500)).await;
            assert!(
                again.is_none(),
                "an explicit endpoint was subscribed to again"
            );
        }
        task.abort();
    }
}
