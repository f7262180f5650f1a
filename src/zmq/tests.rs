use serde_json::json;

use super::*;

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
