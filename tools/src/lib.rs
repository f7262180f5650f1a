//! Shared code for Ferrum's test and benchmark tools.

pub mod chainfile;
pub mod chaingen;
pub mod emulator;
pub mod ports;
pub mod regtest;
pub mod rpcbench;
