//! `ferrum-chaingen` end to end: the file it writes holds genesis then the generator's blocks,
//! byte for byte, and the same seed writes the same file.

use std::process::Command;

use ferrum_tools::chainfile::ChainReader;
use ferrum_tools::chaingen::{ChainGenerator, ChainParams};

fn generate(dir: &std::path::Path, name: &str, args: &[&str]) -> Vec<u8> {
    let out = dir.join(name);
    let status = Command::new(env!("CARGO_BIN_EXE_ferrum-chaingen"))
        .args(args)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run ferrum-chaingen");
    assert!(status.success());
    std::fs::read(out).unwrap()
}

#[test]
fn cli_writes_the_generators_chain_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--seed", "77", "--blocks", "120", "--preset", "small"];
    let first = generate(dir.path(), "a.chain", &args);
    let second = generate(dir.path(), "b.chain", &args);
    assert_eq!(first, second, "same seed, same bytes");

    let mut generator = ChainGenerator::new(ChainParams::small(77));
    let blocks: Vec<_> = ChainReader::new(&first[..])
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(blocks.len(), 121, "genesis plus 120 blocks");
    assert_eq!(blocks[0], generator.genesis());
    for block in &blocks[1..] {
        assert_eq!(*block, generator.next_block());
    }

    let other = generate(
        dir.path(),
        "c.chain",
        &["--seed", "78", "--blocks", "120", "--preset", "small"],
    );
    assert_ne!(first, other);
}

#[test]
fn cli_stops_at_the_requested_transaction_count() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = generate(
        dir.path(),
        "t.chain",
        &[
            "--seed",
            "3",
            "--txs",
            "400",
            "--preset",
            "small",
            "--placeholder-signatures",
        ],
    );
    let blocks: Vec<_> = ChainReader::new(&bytes[..])
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let txs: usize = blocks.iter().map(|b| b.txdata.len()).sum();
    let last = blocks.last().unwrap().txdata.len();
    assert!(
        txs >= 400 && txs - last < 400,
        "{txs} txs, last block {last}"
    );
}
