//! Ferrum: an Electrum protocol server.

pub mod blocks;
pub mod coin;
pub mod config;
pub mod daemon;
pub mod electrum;
pub mod fetch;
pub mod hex;
pub mod http;
pub mod indexer;
pub mod jsonrpc;
pub mod mempool;
pub mod merkle;
pub mod query;
pub mod rlimit;
pub mod server;
pub mod services;
pub mod session;
pub mod status;
#[cfg(test)]
mod test_store;
pub mod transport;
pub mod txids;
pub mod zmq;
