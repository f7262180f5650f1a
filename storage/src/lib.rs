//! Ferrum's store: append-only files, atomic commits, consistent snapshots.
//!
//! The crate knows nothing of Bitcoin or Electrum: it indexes opaque keys and numbers.

mod array;
mod background;
mod block;
mod decode;
pub mod error;
pub mod file;
pub mod frame;
pub mod history;
mod manifest;
mod options;
mod snapshot;
mod store;
mod txindex;
mod undo;
pub mod utxo;
pub mod varint;

pub use block::{BlockData, TxData};
pub use error::{Error, Result};
pub use options::Options;
pub use snapshot::{Reader, Snapshot};
pub use store::{built_with_txids, Store};
pub use utxo::Utxo;

/// Length of the script key the store indexes by (a prefix of the script's hash, chosen by the
/// caller). 11 bytes, as ElectrumX's hashX: collisions are negligible at any chain size.
pub const HASHX_LEN: usize = 11;
pub type HashX = [u8; HASHX_LEN];

/// A transaction id or any other 32-byte hash, as opaque bytes.
pub type Hash32 = [u8; 32];
