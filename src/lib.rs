//! Ferrum: an Electrum protocol server.

pub mod blocks;
pub mod coin;
pub mod daemon;
pub mod fetch;
pub mod http;
pub mod indexer;
pub mod config;
pub mod jsonrpc;
pub mod server;
pub mod services;
pub mod session;
pub mod transport;
