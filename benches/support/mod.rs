//! What the methods-layer benches share: `Electrum` over a store, with no node and an empty
//! mempool (caches empty: one per call), and a wallet session on it.

use std::sync::Arc;

use ferrum::electrum::{Electrum, Node};
use ferrum::query::EmptyMempool;
use ferrum::services::Protocol;
use ferrum::session::{SessionContext, SessionLimits};
use ferrum_storage::Store;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::mpsc::Receiver;

/// A node that answers nothing: these benches read only the store.
struct NoNode;

impl Node for NoNode {
    fn call<'a>(
        &'a self,
        method: &'a str,
        _params: Value,
    ) -> BoxFuture<'a, ferrum::daemon::Result<Value>> {
        Box::pin(async move {
            Err(ferrum::daemon::Error::Unavailable(format!(
                "no node for {method}"
            )))
        })
    }
}

/// The protocol methods over `store`'s committed state, with empty caches.
pub fn electrum(store: &Store) -> Electrum {
    let regtest = ferrum::coin::Network::lookup("Bitcoin", Some("regtest")).unwrap();
    Electrum::with_node(
        store.reader(),
        regtest,
        Arc::new(NoNode),
        Arc::new(EmptyMempool),
    )
}

/// A TCP session context with no cost or size limits, and its outgoing queue (kept open for
/// as long as the session is used).
pub fn session() -> (Arc<SessionContext>, Receiver<Vec<u8>>) {
    let limits = SessionLimits::unlimited();
    SessionContext::new(
        1,
        Protocol::Tcp,
        "127.0.0.1:1".parse().unwrap(),
        limits,
        false,
    )
}
