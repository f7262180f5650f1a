//! Ferrum: an Electrum protocol server.

pub mod coin;
pub mod daemon;
pub mod http;
