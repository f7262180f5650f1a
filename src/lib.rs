//! Ferrum: an Electrum protocol server.

pub mod coin;
pub mod daemon;
pub mod http;
pub mod config;
pub mod jsonrpc;
pub mod server;
pub mod services;
pub mod session;
pub mod transport;
