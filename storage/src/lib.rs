//! Ferrum's store: append-only files, atomic commits, consistent snapshots.
//!
//! The crate knows nothing of Bitcoin or Electrum: it indexes opaque keys and numbers.

pub mod error;
pub mod frame;

pub use error::{Error, Result};
