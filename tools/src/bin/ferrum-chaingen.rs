//! `ferrum-chaingen`: writes a deterministic regtest chain to a chain file, with progress and
//! generation rate on stderr.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bitcoin::{Block, OutPoint, ScriptBuf};
use clap::{ArgGroup, Parser, ValueEnum};
use ferrum_tools::chainfile::ChainWriter;
use ferrum_tools::chaingen::{ChainGenerator, ChainParams};

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    Small,
    Medium,
    Large,
}

/// Generate a deterministic regtest chain (genesis first, one frame per block).
#[derive(Parser)]
#[command(group(ArgGroup::new("size").required(true).args(["txs", "blocks"])))]
struct Args {
    /// Seed of the chain: the same seed and options give a byte-identical file.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after the first block that brings the chain to this many transactions.
    #[arg(long)]
    txs: Option<u64>,
    /// Number of blocks after genesis.
    #[arg(long)]
    blocks: Option<u32>,
    /// Chain file to write.
    #[arg(long)]
    out: PathBuf,
    /// Block and transaction shape.
    #[arg(long, value_enum, default_value = "large")]
    preset: Preset,
    /// Dummy signatures: much faster, for emulator-only benchmarks (a real node rejects them).
    #[arg(long)]
    placeholder_signatures: bool,
    /// Also print the chain's shape: inputs and outputs per tx, UTXOs, longest script
    /// histories (memory grows with the number of scripts).
    #[arg(long)]
    stats: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut params = match args.preset {
        Preset::Small => ChainParams::small(args.seed),
        Preset::Medium => ChainParams::medium(args.seed),
        Preset::Large => ChainParams::large(args.seed),
    };
    params.placeholder_signatures = args.placeholder_signatures;
    match run(&args, params) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrum-chaingen: {}: {e}", args.out.display());
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args, params: ChainParams) -> std::io::Result<()> {
    let mut generator = ChainGenerator::new(params);
    let mut writer = ChainWriter::create(&args.out)?;
    writer.write_block(&generator.genesis())?;
    let start = Instant::now();
    let mut last_report = start;
    let mut bytes = 0u64;
    let mut stats = args.stats.then(Stats::default);
    let done = |g: &ChainGenerator| match (args.txs, args.blocks) {
        (Some(txs), _) => g.tx_count() >= txs,
        (None, Some(blocks)) => g.height() >= blocks,
        (None, None) => true,
    };
    while !done(&generator) {
        let block = generator.next_block();
        bytes += bitcoin::consensus::serialize(&block).len() as u64;
        writer.write_block(&block)?;
        if let Some(stats) = &mut stats {
            stats.add(&block);
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!("{}", progress(&generator, bytes, start));
        }
    }
    writer.finish()?;
    eprintln!("done: {}", progress(&generator, bytes, start));
    if let Some(stats) = stats {
        stats.print();
    }
    Ok(())
}

/// Shape of the generated chain, as an indexer would see it (genesis left out).
#[derive(Default)]
struct Stats {
    txs: u64,
    inputs: u64,
    outputs: u64,
    max_inputs: usize,
    max_outputs: usize,
    utxos: HashMap<OutPoint, ScriptBuf>,
    /// Script -> number of transactions touching it (funding or spending).
    histories: HashMap<ScriptBuf, u64>,
}

impl Stats {
    fn add(&mut self, block: &Block) {
        for tx in &block.txdata {
            let mut touched: Vec<ScriptBuf> = Vec::new();
            if !tx.is_coinbase() {
                self.txs += 1;
                self.inputs += tx.input.len() as u64;
                self.outputs += tx.output.len() as u64;
                self.max_inputs = self.max_inputs.max(tx.input.len());
                self.max_outputs = self.max_outputs.max(tx.output.len());
                touched.extend(
                    tx.input
                        .iter()
                        .filter_map(|i| self.utxos.remove(&i.previous_output)),
                );
            }
            let txid = tx.compute_txid();
            for (vout, output) in tx.output.iter().enumerate() {
                if !output.script_pubkey.is_op_return() {
                    self.utxos.insert(
                        OutPoint::new(txid, vout as u32),
                        output.script_pubkey.clone(),
                    );
                    touched.push(output.script_pubkey.clone());
                }
            }
            touched.sort();
            touched.dedup();
            for script in touched {
                *self.histories.entry(script).or_default() += 1;
            }
        }
    }

    fn print(&self) {
        let per_tx = |n: u64| n as f64 / self.txs.max(1) as f64;
        eprintln!(
            "non-coinbase txs {}: {:.2} inputs (max {}), {:.2} outputs (max {}) per tx",
            self.txs,
            per_tx(self.inputs),
            self.max_inputs,
            per_tx(self.outputs),
            self.max_outputs
        );
        let mut lengths: Vec<u64> = self.histories.values().copied().collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        eprintln!(
            "{} UTXOs, {} scripts; longest histories: {:?}; scripts with 1000+ entries: {}",
            self.utxos.len(),
            lengths.len(),
            &lengths[..lengths.len().min(10)],
            lengths.iter().take_while(|&&n| n >= 1000).count()
        );
    }
}

fn progress(generator: &ChainGenerator, bytes: u64, start: Instant) -> String {
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    format!(
        "height {} | {} txs | {:.1} MB of blocks | {} wallet UTXOs | {:.1} s | {:.0} tx/s",
        generator.height(),
        generator.tx_count(),
        bytes as f64 / 1e6,
        generator.utxo_count(),
        seconds,
        generator.tx_count() as f64 / seconds
    )
}
