//! Start and stop of the real `ferrum` binary when the node is not what it should be.
//! SIGTERM while no node answers stops it at once and cleanly, whether the nodes were down
//! from the start or went down under a synced server, and the ZMQ lookup (on by default) does
//! not spin through failovers while every node refuses. A node on another network stops it
//! with that reason, and the directory it leaves serves the right network at once.
//! `--help` and `--version` answer; any other argument is refused.

mod mempool_support;

use ferrum_tools::emulator::{Emulator, EmulatorConfig};
use mempool_support::*;

/// A port nothing listens on, so connections to it are refused.
fn refused_url() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Waits until the server's log holds `text`.
fn wait_for_log(server: &Ferrum, text: &str) {
    let start = std::time::Instant::now();
    while !server.log_text().contains(text) {
        assert!(
            start.elapsed() < WAIT,
            "no {text:?} in the log after {WAIT:?}:\n{}",
            server.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Stops `server` with SIGTERM and returns its log, having checked a clean exit.
fn terminate_cleanly(server: Ferrum) -> String {
    let (status, log) = server.terminate();
    let status = status.unwrap_or_else(|| panic!("ferrum ignored SIGTERM for 20 s:\n{log}"));
    assert!(status.success(), "ferrum exited with {status}:\n{log}");
    log
}

#[test]
fn stops_while_no_node_ever_answered() {
    let cookie = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cookie.path(), "__cookie__:secret").unwrap();
    let urls = format!("{},{}", refused_url(), refused_url());
    let server = Ferrum::spawn(&urls, cookie.path(), &[]);
    wait_for_log(&server, "failing over to daemon");
    // Long enough for a few rounds of backoff, and for a spinning loop to show.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let log = terminate_cleanly(server);
    assert!(
        log.contains("the node client is stopped: the indexer stops")
            && log.contains("indexer stopped at height -1"),
        "{log}"
    );
    // Each round tries both nodes once and then backs off (0.25 s, doubling); a failover to a
    // node already known to be down is not logged again. The ZMQ lookup once cancelled its
    // own call at every failover and started it again, saying so each time: millions of lines.
    let failovers = log.matches("failing over to daemon").count();
    assert!(
        (1..=4).contains(&failovers),
        "{failovers} failovers logged:\n{log}"
    );
    assert!(
        !log.contains("looking up its ZMQ publisher again"),
        "no node answered, so none took over:\n{log}"
    );
    assert!(log.lines().count() < 40, "{log}");
}

#[test]
fn stops_after_the_node_went_down() {
    let emu = Emulator::start(EmulatorConfig::generated(5, 20)).unwrap();
    let server = Ferrum::start(emu.rpc_addr().port(), emu.cookie_path().unwrap(), &[]);
    emu.set_online(false).unwrap();
    wait_for_log(&server, "check that bitcoind is running; retrying");
    let log = terminate_cleanly(server);
    assert!(
        log.contains("indexer stopped at height 20"),
        "the index keeps the synced chain:\n{log}"
    );
}

#[test]
fn a_node_on_another_network_stops_it_with_the_reason() {
    let emu = Emulator::start(EmulatorConfig::generated(5, 20)).unwrap();
    let db = tempfile::tempdir().unwrap();
    let db_dir = db.path().to_str().unwrap();
    let node = format!("127.0.0.1:{}", emu.rpc_addr().port());
    let cookie = emu.cookie_path().unwrap();
    let wrong = Ferrum::spawn(
        &node,
        cookie,
        &[("NET", "testnet"), ("DB_DIRECTORY", db_dir)],
    );
    let (status, log) = wrong.exit();
    let status = status.unwrap_or_else(|| panic!("still running after 20 s:\n{log}"));
    assert_eq!(status.code(), Some(1), "{log}");
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(&format!(
            "ERROR indexer stopped: node: the node at {node}/ is on another network: its genesis \
             block is 0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206, but \
             Bitcoin testnet starts with \
             000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943; point DAEMON_URL \
             at a testnet node or set COIN/NET to match"
        )),
        "{log}"
    );
    // The directory holds no block yet: the right NET uses it as it is.
    let right = Ferrum::spawn(&node, cookie, &[("DB_DIRECTORY", db_dir)]);
    wait_for_log(&right, "caught up to height 20");
    let log = terminate_cleanly(right);
    assert!(
        log.contains(&format!(
            "DB_DIRECTORY {db_dir} holds no blocks yet: it now indexes Bitcoin regtest, not \
             Bitcoin testnet"
        )),
        "{log}"
    );
}

#[test]
fn arguments_are_help_version_or_refused() {
    let run = |arg: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrum"))
            .arg(arg)
            .env_clear()
            .output()
            .unwrap();
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (out.status.code(), text(out.stdout), text(out.stderr))
    };
    let (code, help, _) = run("--help");
    assert_eq!(code, Some(0));
    assert!(help.starts_with("usage: ferrum\n"), "{help}");
    assert!(help.contains("docs/OPERATIONS.md"), "{help}");
    assert_eq!(
        run("-V"),
        (
            Some(0),
            format!("ferrum {}\n", env!("CARGO_PKG_VERSION")),
            String::new()
        )
    );
    assert_eq!(
        run("--db=/x"),
        (
            Some(2),
            String::new(),
            "ferrum: unexpected argument \"--db=/x\": ferrum takes no arguments; it is \
             configured by environment variables (ferrum --help)\n"
                .to_string()
        )
    );
}
