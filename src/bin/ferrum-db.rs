//! `ferrum-db`: inspect an index offline. `info` prints its height, transaction count and file
//! sizes by component; `verify` reads every record, checks that they agree with each other, and
//! prints sha256 digests of headers, txids, UTXOs and history (equal indexes, equal digests).
//! A lean index (INDEX_MODE=lean) stores no txids: its digests cover the rest, and the
//! checks that need txids are left out, as the output says. Run it with the server stopped:
//! opening the store recovers it to its last commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bitcoin::hashes::{sha256, sha256d, Hash, HashEngine};
use clap::{Parser, Subcommand};
use ferrum_storage::{Options, Snapshot, Store};

#[derive(Parser)]
#[command(
    name = "ferrum-db",
    about = "Inspect and verify a Ferrum index (server stopped)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Height, transaction count and file sizes by component.
    Info {
        /// The index directory (DB_DIRECTORY).
        #[arg(env = "DB_DIRECTORY")]
        db_dir: PathBuf,
    },
    /// Read every record, cross-check them, and print digests of the whole index.
    Verify {
        #[arg(env = "DB_DIRECTORY")]
        db_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    // Output piped into `head` and the like ends quietly when the reader goes, as other
    // command-line tools do, not with println!'s panic on EPIPE.
    // SAFETY: at start, before any other thread exists; SIG_DFL is a valid disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { db_dir } => info(&db_dir),
        Command::Verify { db_dir } => verify(&db_dir),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ferrum-db: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn open(dir: &Path) -> Result<Snapshot> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()).into());
    }
    // Opened in the store's own mode (an empty store has none: any will do).
    let options = Options {
        store_txids: ferrum_storage::built_with_txids(dir)?.unwrap_or(true),
        ..Options::default()
    };
    Ok(Store::open(dir, options)?.snapshot())
}

fn info(dir: &Path) -> Result<bool> {
    let snap = open(dir)?;
    print_summary(&snap);
    // Files are named <component>-<id>.<ext> (or a bare name such as the manifest).
    let mut parts: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
        let component = match name.split_once('-') {
            Some((c, _)) if ext.is_empty() => c.to_string(),
            Some((c, _)) => format!("{c} (.{ext})"),
            None => name.clone(),
        };
        let size = entry.metadata()?.len();
        let part = parts.entry(component).or_default();
        part.0 += 1;
        part.1 += size;
        total += size;
    }
    let txs = snap.tx_count().max(1);
    println!("files:");
    for (component, (files, bytes)) in &parts {
        println!(
            "  {component:<20} {files:>5} files {bytes:>14} bytes {:>8.1} B/tx",
            *bytes as f64 / txs as f64
        );
    }
    println!(
        "  {:<20} {:>5} files {total:>14} bytes {:>8.1} B/tx",
        "total",
        parts.values().map(|p| p.0).sum::<usize>(),
        total as f64 / txs as f64
    );
    // Undo records cover only the last REORG_LIMIT blocks: on a short chain they weigh far
    // more than on a long one, so the rest is shown on its own too.
    if let Some(&(files, undo)) = parts.get("undo (.log)") {
        let rest = total - undo;
        println!(
            "  {:<20} {:>5} files {rest:>14} bytes {:>8.1} B/tx",
            "total without undo",
            parts.values().map(|p| p.0).sum::<usize>() - files,
            rest as f64 / txs as f64
        );
    }
    Ok(true)
}

fn print_summary(snap: &Snapshot) {
    match snap.height() {
        Some(h) => println!("height: {h}"),
        None => println!("height: -1 (empty)"),
    }
    println!("tx count: {}", snap.tx_count());
    if let Some(network) = snap.meta("network") {
        println!("network: {}", String::from_utf8_lossy(&network));
    }
    if !snap.stores_txids() {
        println!("index mode: lean (no txids stored)");
    }
}

/// Collects verification problems, printing the first few.
#[derive(Default)]
struct Problems {
    count: u64,
}

impl Problems {
    fn report(&mut self, what: String) {
        self.count += 1;
        if self.count <= 20 {
            println!("PROBLEM: {what}");
        }
    }
}

fn verify(dir: &Path) -> Result<bool> {
    let snap = open(dir)?;
    print_summary(&snap);
    let mut problems = Problems::default();
    let tx_count = snap.tx_count();

    // Headers: each links to the one before; per-block tx ranges tile [0, tx_count).
    let mut headers = sha256::Hash::engine();
    let mut prev_hash = [0u8; 32];
    let mut next_tx = 0u64;
    let blocks = snap.height().map_or(0, |h| h + 1);
    for height in 0..blocks {
        let header = snap.header(height)?;
        headers.input(&header);
        if height > 0 && header[4..36] != prev_hash {
            problems.report(format!(
                "header {height} does not link to header {}",
                height - 1
            ));
        }
        prev_hash = sha256d::Hash::hash(&header).to_byte_array();
        let range = snap.block_txs(height)?;
        if range.start != next_tx || range.end <= range.start {
            problems.report(format!(
                "block {height} has transactions {range:?}, expected a non-empty range from {next_tx}"
            ));
        }
        next_tx = range.end;
    }
    if next_tx != tx_count {
        problems.report(format!(
            "blocks hold {next_tx} transactions, tx count is {tx_count}"
        ));
    }

    let lean = !snap.stores_txids();
    let mut txids = sha256::Hash::engine();
    if !lean {
        for txnum in 0..tx_count {
            txids.input(&snap.txid(txnum)?);
        }
    }

    // UTXOs: ordered, within the chain, and the same when looked up by txid and outpoint.
    let mut utxos = sha256::Hash::engine();
    let mut utxo_count = 0u64;
    let mut value = 0u128;
    let mut last: Option<([u8; 11], u64, u32)> = None;
    let mut lookup_error = None;
    snap.for_each_utxo(|hashx, u| {
        utxo_count += 1;
        value += u128::from(u.value);
        utxos.input(hashx);
        utxos.input(&u.txnum.to_le_bytes());
        utxos.input(&u.vout.to_le_bytes());
        utxos.input(&u.value.to_le_bytes());
        let key = (*hashx, u.txnum, u.vout);
        if last.is_some_and(|l| l >= key) {
            problems.report(format!("UTXO {}:{} out of order", u.txnum, u.vout));
        }
        last = Some(key);
        if u.txnum >= tx_count {
            problems.report(format!(
                "UTXO {}:{} beyond tx count {tx_count}",
                u.txnum, u.vout
            ));
        }
        // Found again by txid: through the txid index, then the outpoint index (a lean
        // index has no txid to look up by).
        if lean {
            return;
        }
        let by_txid = snap
            .txid(u.txnum)
            .and_then(|txid| Ok((txid, snap.unspent(&txid, u.vout)?)));
        match by_txid {
            Ok((_, Some(found))) if found == (*hashx, *u) => {}
            // A duplicated txid (BIP30: two mainnet coinbases) resolves to the later copy.
            Ok((txid, Some((_, later))))
                if snap.txid(later.txnum).ok() == Some(txid)
                    && snap.utxo(u.txnum, u.vout).ok() == Some(Some((*hashx, u.value))) => {}
            Ok((_, found)) => problems.report(format!(
                "UTXO {}:{} reads as {found:?} when looked up by txid",
                u.txnum, u.vout
            )),
            Err(e) => lookup_error = lookup_error.take().or(Some(e)),
        }
    })?;
    if let Some(e) = lookup_error {
        return Err(e.into());
    }

    // History: ascending tx numbers within the chain.
    let mut history = sha256::Hash::engine();
    let (mut keys, mut entries) = (0u64, 0u64);
    let mut last_key: Option<[u8; 11]> = None;
    snap.for_each_history(|hashx, txnums| {
        keys += 1;
        entries += txnums.len() as u64;
        history.input(hashx);
        history.input(&(txnums.len() as u64).to_le_bytes());
        for t in txnums {
            history.input(&t.to_le_bytes());
        }
        if last_key.is_some_and(|l| l >= *hashx) {
            problems.report("history keys out of order".into());
        }
        last_key = Some(*hashx);
        if txnums.windows(2).any(|w| w[0] >= w[1]) || txnums.last().is_some_and(|&t| t >= tx_count)
        {
            problems.report(format!(
                "history of key {} is not ascending within the chain",
                hex(hashx)
            ));
        }
    })?;

    let mut parts = vec![
        ("headers", sha256::Hash::from_engine(headers)),
        ("txids", sha256::Hash::from_engine(txids)),
        ("utxos", sha256::Hash::from_engine(utxos)),
        ("history", sha256::Hash::from_engine(history)),
    ];
    if lean {
        parts.remove(1);
        println!(
            "lean index: no txids to digest or to look UTXOs up by; the digests cover headers, \
             UTXOs and history (the same as a full index's of the same chain)"
        );
    }
    println!("utxos: {utxo_count} outputs, {value} sat");
    println!("history: {keys} scripts, {entries} entries");
    let mut all = sha256::Hash::engine();
    for (name, digest) in &parts {
        println!("{name} digest: {digest}");
        all.input(digest.as_byte_array());
    }
    println!("index digest: {}", sha256::Hash::from_engine(all));
    if problems.count > 0 {
        println!("{} problems found", problems.count);
        return Ok(false);
    }
    println!("ok");
    Ok(true)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
