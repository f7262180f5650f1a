//! `ferrum-rpcbench`: requests per second and latency percentiles of an Electrum server's
//! `blockchain.scripthash.get_history`, `listunspent` and `get_balance` over TCP, on scripts
//! of a chain file chosen by history size, with several connection counts. Prints Markdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use ferrum_tools::rpcbench::load::{self, Connection};
use ferrum_tools::rpcbench::scripts::{self, ScriptStats, SizeClass};
use serde_json::Value;

/// Benchmark an Electrum server's script-hash queries over TCP.
#[derive(Parser)]
struct Args {
    /// Chain file the server indexes (its whole chain, served up to its last block).
    #[arg(long)]
    chain: PathBuf,
    /// The server's Electrum TCP address.
    #[arg(long)]
    server: SocketAddr,
    /// Name of the server in the output.
    #[arg(long, default_value = "server")]
    label: String,
    /// Connection counts to run each case with.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    conns: Vec<usize>,
    /// Seconds each case runs.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// History sizes to pick scripts near.
    #[arg(long, value_delimiter = ',', default_value = "10,1000")]
    near: Vec<usize>,
    /// History sizes to pick scripts of at least that many entries (longest first); the
    /// heaviest scripts are always a class too, after these.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    at_least: Vec<usize>,
    /// The server's process id: adds its CPU time per request (user + system, from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Scripts per class.
    #[arg(long, default_value_t = 10)]
    per_class: usize,
    /// Methods to run (without the `blockchain.scripthash.` prefix).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "get_history,listunspent,get_balance"
    )]
    methods: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrum-rpcbench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn range(values: impl Iterator<Item = usize>) -> String {
    let values: Vec<usize> = values.collect();
    match (values.iter().min(), values.iter().max()) {
        (Some(lo), Some(hi)) if lo == hi => lo.to_string(),
        (Some(lo), Some(hi)) => format!("{lo}–{hi}"),
        _ => "-".into(),
    }
}

/// Checks a parsed reply against the chain's figures for the script.
fn verify(method: &str, reply: &Value, script: &ScriptStats) -> Result<(), String> {
    let result = &reply["result"];
    let (what, got, want) = match method {
        "get_history" => ("entries", result.as_array().map(Vec::len), script.history),
        "listunspent" => ("outputs", result.as_array().map(Vec::len), script.utxos),
        "get_balance" => {
            let confirmed = result["confirmed"].as_u64().map(|v| v as usize);
            ("confirmed satoshis", confirmed, script.balance as usize)
        }
        _ => return Ok(()),
    };
    if got == Some(want) {
        Ok(())
    } else {
        Err(format!(
            "{method} of {}: {got:?} {what}, the chain says {want}",
            script.scripthash
        ))
    }
}

/// The server's CPU time so far, when its pid is known.
fn server_cpu(args: &Args) -> Result<Option<Duration>, String> {
    args.server_pid
        .map(|pid| load::process_cpu(pid).map_err(|e| format!("server process {pid}: {e}")))
        .transpose()
}

/// ` x |`: milliseconds of server CPU per request since `before`, when measured.
fn cpu_cell(args: &Args, before: Option<Duration>, requests: usize) -> Result<String, String> {
    Ok(match (before, server_cpu(args)?) {
        (Some(before), Some(now)) => format!(" {} |", ms((now - before) / requests.max(1) as u32)),
        _ => String::new(),
    })
}

fn run(args: &Args) -> Result<(), String> {
    let cpu_head = if args.server_pid.is_some() {
        (" server CPU ms/request |", "---|")
    } else {
        ("", "")
    };
    let started = Instant::now();
    let stats =
        scripts::scan_file(&args.chain).map_err(|e| format!("{}: {e}", args.chain.display()))?;
    eprintln!(
        "scanned {} scripts of {} in {:.1} s",
        stats.len(),
        args.chain.display(),
        started.elapsed().as_secs_f64()
    );
    let mut classes: Vec<SizeClass> = args.near.iter().map(|&n| SizeClass::Near(n)).collect();
    classes.extend(args.at_least.iter().map(|&n| SizeClass::AtLeast(n)));
    classes.push(SizeClass::Heaviest);
    let picked: Vec<(SizeClass, Vec<ScriptStats>)> = classes
        .iter()
        .map(|&c| (c, scripts::pick(&stats, c, args.per_class)))
        .collect();

    println!("### {} at {}\n", args.label, args.server);
    println!("| class | scripts | history entries | unspent outputs |");
    println!("|---|---|---|---|");
    for (class, scripts) in &picked {
        println!(
            "| {class} | {} | {} | {} |",
            scripts.len(),
            range(scripts.iter().map(|s| s.history)),
            range(scripts.iter().map(|s| s.utxos))
        );
    }

    // First requests, one at a time: get_history of each script before anything else
    // reads it, so that no cache holds it yet (a script in several classes is timed once).
    // Replies are checked against the chain.
    let mut conn = Connection::open(args.server).map_err(|e| format!("{}: {e}", args.server))?;
    println!("\nFirst request of each script (one connection, in turn), ms:\n");
    println!("| method | class | median | max |");
    println!("|---|---|---|---|");
    for method in &args.methods {
        let full = format!("blockchain.scripthash.{method}");
        let mut first: HashMap<&str, Duration> = HashMap::new();
        for (class, scripts) in &picked {
            let mut replies = Vec::new();
            for script in scripts {
                if first.contains_key(script.scripthash.as_str()) {
                    continue;
                }
                let sent = Instant::now();
                let line = conn
                    .call(&full, &[&script.scripthash])
                    .map_err(|e| e.to_string())?;
                first.insert(&script.scripthash, sent.elapsed());
                replies.push((line.to_vec(), script));
            }
            // Checked once all are timed: parsing a long reply takes the client a while,
            // and a busy client would slow the next request's delivery.
            for (line, script) in replies {
                let reply: Value =
                    serde_json::from_slice(&line).map_err(|e| format!("{full}: bad reply: {e}"))?;
                verify(method, &reply, script)?;
            }
            let mut times: Vec<Duration> = scripts
                .iter()
                .map(|s| first[s.scripthash.as_str()])
                .collect();
            times.sort();
            let run = load::Run {
                latencies: times,
                elapsed: Duration::ZERO,
            };
            println!(
                "| {method} | {class} | {} | {} |",
                ms(run.percentile(50.0)),
                ms(run.percentile(100.0)),
            );
        }
    }
    drop(conn);

    println!(
        "\nUnder load ({} s a case, each connection sends its next request on the reply):\n",
        args.seconds
    );
    println!(
        "| method | class | connections | requests | requests/s | p50 ms | p99 ms |{}",
        cpu_head.0
    );
    println!("|---|---|---|---|---|---|---|{}", cpu_head.1);
    for method in &args.methods {
        let full = format!("blockchain.scripthash.{method}");
        for (class, scripts) in &picked {
            let hashes: Vec<String> = scripts.iter().map(|s| s.scripthash.clone()).collect();
            for &conns in &args.conns {
                let before = server_cpu(args)?;
                let run = load::run(
                    args.server,
                    conns,
                    Duration::from_secs_f64(args.seconds),
                    &full,
                    &hashes,
                )
                .map_err(|e| e.to_string())?;
                println!(
                    "| {method} | {class} | {conns} | {} | {:.0} | {} | {} |{}",
                    run.latencies.len(),
                    run.requests_per_second(),
                    ms(run.percentile(50.0)),
                    ms(run.percentile(99.0)),
                    cpu_cell(args, before, run.latencies.len())?
                );
            }
        }
    }
    Ok(())
}
