//! The indexer against a real regtest bitcoind (cookie auth, REST): sync, a new block, and a
//! reorganisation made with `invalidateblock`. The index is compared with state computed from
//! the node's own blocks.

mod indexer_support;

use std::sync::Arc;
use std::time::Duration;

use indexer_support::*;

use ferrum::daemon::{Daemon, DaemonSettings};
use ferrum_tools::regtest::RegtestNode;
use serde_json::json;

/// BIP 173's regtest P2WPKH test vector: a valid address to mine to.
const ADDRESS: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";

fn mine(node: &RegtestNode, blocks: u32, address: &str) -> Vec<bitcoin::BlockHash> {
    let hashes = node
        .rpc("generatetoaddress", json!([blocks, address]))
        .unwrap();
    hashes
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn sync_follow_and_reorg_against_bitcoind() {
    let node = RegtestNode::start().unwrap();
    let tip = *mine(&node, 110, ADDRESS).last().unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], node.rpc_port()));
    let cookie = || std::fs::read_to_string(node.cookie_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let mut settings = DaemonSettings::new(vec![format!("127.0.0.1:{}", node.rpc_port())]);
        settings.cookie_file = Some(node.cookie_path().to_path_buf());
        settings.give_up_after = Some(Duration::from_secs(20));
        let daemon = Arc::new(Daemon::new(&settings, regtest()).unwrap());
        let run = start_indexer(dir.path(), daemon.clone(), indexer_support::settings(10));
        assert_eq!(wait_for_tip(&run.handle, tip).await.height, 110);
        assert!(daemon.rest_enabled());
        assert_index_matches(
            &run.reader.snapshot(),
            &node_chain(addr, cookie().trim()).unwrap(),
        );

        let new = *mine(&node, 1, ADDRESS).last().unwrap();
        assert_eq!(wait_for_tip(&run.handle, new).await.height, 111);

        // Replace the last 4 blocks with a longer branch.
        let at_108: String =
            serde_json::from_value(node.rpc("getblockhash", json!([108])).unwrap()).unwrap();
        node.rpc("invalidateblock", json!([at_108])).unwrap();
        // Another address, so the branch's blocks differ from the invalidated ones.
        let other = bitcoin::Address::p2wsh(bitcoin::Script::new(), bitcoin::Network::Regtest);
        let branch_tip = *mine(&node, 6, &other.to_string()).last().unwrap();
        assert_eq!(wait_for_tip(&run.handle, branch_tip).await.height, 113);
        assert_index_matches(
            &run.reader.snapshot(),
            &node_chain(addr, cookie().trim()).unwrap(),
        );
        run.stop().await;
    });
}
