//! The `ferrum-emulator` binary: serves a generated chain, obeys its control port, removes its
//! cookie on SIGTERM, and measures serving rates in `--bench` mode.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use ferrum_tools::emulator::client::{read_cookie, HttpClient};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_ferrum-emulator");

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

#[test]
fn serves_until_sigterm_then_removes_its_cookie() {
    let mut child = Command::new(BIN)
        .args(["--seed", "4", "--blocks", "30", "--initial-height", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port =
        |name| SocketAddr::from(([127, 0, 0, 1], field(&line, name).parse::<u16>().unwrap()));
    let cookie = std::path::PathBuf::from(field(&line, "cookie"));
    let credentials = read_cookie(&cookie).unwrap();
    let mut rpc = HttpClient::connect(port("rpc"))
        .unwrap()
        .with_auth(&credentials);
    assert_eq!(
        rpc.call("getblockcount", json!([])).unwrap().unwrap(),
        json!(20)
    );
    let mut control = HttpClient::connect(port("control")).unwrap();
    let mined = control.call("emu_mine", json!([3])).unwrap().unwrap();
    assert_eq!(mined.as_array().unwrap().len(), 3);
    assert_eq!(
        rpc.call("getblockcount", json!([])).unwrap().unwrap(),
        json!(23)
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
    assert!(!cookie.exists(), "the cookie is removed on shutdown");
}

#[test]
fn bench_mode_reports_both_routes() {
    let output = Command::new(BIN)
        .args([
            "--seed",
            "2",
            "--blocks",
            "5",
            "--bench",
            "1,2",
            "--bench-runs",
            "1",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].starts_with("REST .bin") && lines[0].contains("6 blocks"),
        "{stdout}"
    );
    assert!(
        lines[3].starts_with("getblock hex") && lines[3].contains("2 conn"),
        "{stdout}"
    );
}

#[test]
fn rejects_a_missing_chain_source() {
    let output = Command::new(BIN).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--chain FILE or --seed N"));
}
