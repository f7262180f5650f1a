//! `ferrum-emulator`: serves a generated or loaded regtest chain over Bitcoin Core's JSON-RPC
//! and REST interfaces, with an `emu_*` control port; prints its ports, runs until SIGINT/SIGTERM.
//! With `--bench`, measures instead how fast it (or a real node, `--bench-node`) serves blocks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Parser, ValueEnum};
use ferrum_tools::chaingen::ChainParams;
use ferrum_tools::emulator::bench::{measure, Route, Target};
use ferrum_tools::emulator::client::read_cookie;
use ferrum_tools::emulator::{Auth, ChainSource, Emulator, EmulatorConfig, DEFAULT_WARMUP_MESSAGE};

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    Small,
    Medium,
    Large,
}

/// Emulate a Bitcoin Core regtest node serving a deterministic or recorded chain.
#[derive(Parser)]
#[command(group(ArgGroup::new("chain_source").args(["chain", "seed"])))]
struct Args {
    /// Chain file to serve (from ferrum-chaingen), loaded streaming.
    #[arg(long)]
    chain: Option<PathBuf>,
    /// Generate the chain with this seed instead (mining continues from the generator).
    #[arg(long)]
    seed: Option<u64>,
    /// Blocks to generate after genesis (with --seed).
    #[arg(long, default_value_t = 200)]
    blocks: u32,
    /// Generated mempool transactions to add at start (with --seed).
    #[arg(long, default_value_t = 0)]
    txs: u32,
    /// Shape of generated blocks (with --seed).
    #[arg(long, value_enum, default_value = "small")]
    preset: Preset,
    /// Serve only blocks up to this height at start; `emu_mine` serves the rest.
    #[arg(long)]
    initial_height: Option<u32>,
    /// RPC and REST port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Control port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    control_port: u16,
    /// Where to write the auth cookie (default: a temporary directory).
    #[arg(long, conflicts_with_all = ["rpcuser", "rpcpassword"])]
    cookie_file: Option<PathBuf>,
    #[arg(long, requires = "rpcpassword")]
    rpcuser: Option<String>,
    #[arg(long, requires = "rpcuser")]
    rpcpassword: Option<String>,
    /// Answer -28 ("Loading block index…") for this many seconds after start.
    #[arg(long)]
    warmup_seconds: Option<f64>,
    /// How many blocks back `emu_reorg` can reach on a generated chain.
    #[arg(long, default_value_t = 10)]
    reorg_depth: usize,
    /// Measure block serving (REST .bin and getblock hex) with these connection counts, then
    /// exit, e.g. `--bench 1,4`.
    #[arg(long, value_delimiter = ',')]
    bench: Vec<usize>,
    /// Passes per measurement; the best is reported.
    #[arg(long, default_value_t = 3)]
    bench_runs: usize,
    /// Benchmark a running node on this 127.0.0.1 port instead (e.g. bitcoind with -rest=1).
    #[arg(long, requires = "bench_cookie")]
    bench_node: Option<u16>,
    /// Cookie file of the `--bench-node`.
    #[arg(long)]
    bench_cookie: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let (Some(port), Some(cookie)) = (args.bench_node, &args.bench_cookie) {
        let target = read_cookie(cookie).map(|credentials| Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            credentials,
        });
        return report(target.and_then(|t| bench(&t, &args)));
    }
    if args.chain.is_none() && args.seed.is_none() {
        eprintln!("ferrum-emulator: give --chain FILE or --seed N (or --bench-node PORT)");
        return ExitCode::FAILURE;
    }
    // clap makes --chain and --seed exclusive; one of them is present (checked above).
    let source = match &args.chain {
        Some(path) => ChainSource::File(path.clone()),
        None => {
            let seed = args.seed.unwrap_or_default();
            let params = match args.preset {
                Preset::Small => ChainParams::small(seed),
                Preset::Medium => ChainParams::medium(seed),
                Preset::Large => ChainParams::large(seed),
            };
            ChainSource::Generated {
                params,
                blocks: args.blocks,
            }
        }
    };
    let mut config = EmulatorConfig::new(source);
    config.initial_height = args.initial_height;
    config.mempool_txs = args.txs;
    config.rpc_addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    config.control_addr = SocketAddr::from(([127, 0, 0, 1], args.control_port));
    config.reorg_depth = args.reorg_depth;
    config.auth = match (&args.rpcuser, &args.rpcpassword) {
        (Some(user), Some(pass)) => Auth::UserPass(user.clone(), pass.clone()),
        _ => Auth::Cookie(args.cookie_file.clone()),
    };
    config.warmup = args.warmup_seconds.map(|s| {
        (
            DEFAULT_WARMUP_MESSAGE.to_string(),
            Some(Duration::from_secs_f64(s.max(0.0))),
        )
    });
    let start = Instant::now();
    let emulator = match Emulator::start(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("ferrum-emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "ferrum-emulator: height {} loaded in {:.1} s",
        emulator.height(),
        start.elapsed().as_secs_f64()
    );
    if !args.bench.is_empty() {
        let target = Target {
            addr: emulator.rpc_addr(),
            credentials: emulator.credentials().to_string(),
        };
        return report(bench(&target, &args));
    }
    let cookie = emulator
        .cookie_path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let ready = format!(
        "rpc={} control={} cookie={cookie}",
        emulator.rpc_addr().port(),
        emulator.control_addr().port()
    );
    match serve_until_signal(&ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrum-emulator: waiting for a signal: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the ready line once SIGINT and SIGTERM are caught, then waits for one of them.
fn serve_until_signal(ready: &str) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        println!("{ready}");
        tokio::select! {
            _ = interrupt.recv() => Ok(()),
            _ = terminate.recv() => Ok(()),
        }
    })
}

/// Serves every block over each route and connection count; prints one line per measurement.
fn bench(target: &Target, args: &Args) -> std::io::Result<()> {
    let hashes = target.block_hashes()?;
    let counts = if args.bench.is_empty() {
        vec![1]
    } else {
        args.bench.clone()
    };
    for route in [Route::RestBin, Route::RpcHex] {
        for &connections in &counts {
            let mut best = None;
            for _ in 0..args.bench_runs.max(1) {
                let rate = measure(target, &hashes, route, connections)?;
                if best
                    .as_ref()
                    .is_none_or(|b: &ferrum_tools::emulator::bench::Rate| rate.elapsed < b.elapsed)
                {
                    best = Some(rate);
                }
            }
            if let Some(r) = best {
                println!(
                    "{:<13} {} conn: {} blocks, {:.1} MB in {:.3} s = {:.0} MB/s, {:.0} blocks/s",
                    r.route.name(),
                    r.connections,
                    r.blocks,
                    r.bytes as f64 / 1e6,
                    r.elapsed.as_secs_f64(),
                    r.mb_per_s(),
                    r.blocks_per_s()
                );
            }
        }
    }
    Ok(())
}

fn report(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrum-emulator: bench: {e}");
            ExitCode::FAILURE
        }
    }
}
