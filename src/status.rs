//! A script's history as the protocol presents it (confirmed transactions in chain order,
//! then mempool ones in canonical order) and its status hash: the sha256 of every
//! `"<txid hex>:<height>:"` in that order, or none when there is no history.

use bitcoin::hashes::{sha256, Hash, HashEngine};
use ferrum_storage::Hash32;

use crate::hex::push_hash_hex;
use crate::query::{ConfirmedTx, MempoolTx};

/// One entry of a script's history: a confirmed height, or 0 / -1 for a mempool
/// transaction whose inputs are all confirmed / not all confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryItem {
    pub txid: Hash32,
    pub height: i32,
    /// Mempool transactions only: the fee paid, in satoshis.
    pub fee: Option<u64>,
}

/// The full history of a script: `confirmed` in chain order, then `mempool`, which the
/// mempool view gives in canonical order (height 0 before -1, then txid as displayed).
pub fn history(confirmed: &[ConfirmedTx], mempool: &[MempoolTx]) -> Vec<HistoryItem> {
    let mut items = Vec::with_capacity(confirmed.len() + mempool.len());
    items.extend(confirmed.iter().map(|c| HistoryItem {
        txid: c.txid,
        height: c.height as i32,
        fee: None,
    }));
    items.extend(mempool.iter().map(|m| HistoryItem {
        txid: m.txid,
        height: m.height(),
        fee: Some(m.fee),
    }));
    items
}

/// Hashes a history entry by entry. It can be cloned after the confirmed part, so a
/// mempool change re-hashes only mempool entries.
pub struct StatusHasher {
    engine: sha256::HashEngine,
    /// Bytes hashed so far (ElectrumX charges by the status string's length).
    len: usize,
    /// Scratch space for one entry's text.
    buffer: Vec<u8>,
}

/// A clone leaves the scratch buffer behind: cached hashers hold only the hash state.
impl Clone for StatusHasher {
    fn clone(&self) -> StatusHasher {
        StatusHasher {
            engine: self.engine.clone(),
            len: self.len,
            buffer: Vec::new(),
        }
    }
}

impl Default for StatusHasher {
    fn default() -> Self {
        StatusHasher::new()
    }
}

impl StatusHasher {
    pub fn new() -> StatusHasher {
        StatusHasher {
            engine: sha256::Hash::engine(),
            len: 0,
            buffer: Vec::with_capacity(80),
        }
    }

    pub fn add(&mut self, txid: &Hash32, height: i32) {
        self.buffer.clear();
        push_hash_hex(&mut self.buffer, txid);
        self.buffer.push(b':');
        push_i32(&mut self.buffer, height);
        self.buffer.push(b':');
        self.engine.input(&self.buffer);
        self.len += self.buffer.len();
    }

    /// Length of the status text hashed so far.
    pub fn text_len(&self) -> usize {
        self.len
    }

    /// The status: None for an empty history.
    pub fn finish(self) -> Option<Hash32> {
        (self.len > 0).then(|| sha256::Hash::from_engine(self.engine).to_byte_array())
    }
}

/// The status of a history, and the length of the text hashed (for cost accounting).
pub fn status(items: &[HistoryItem]) -> (Option<Hash32>, usize) {
    let mut hasher = StatusHasher::new();
    for item in items {
        hasher.add(&item.txid, item.height);
    }
    let len = hasher.text_len();
    (hasher.finish(), len)
}

/// Appends `n` in decimal, without allocating.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `value` in decimal, with a sign if negative.
pub fn push_i32(out: &mut Vec<u8>, value: i32) {
    if value < 0 {
        out.push(b'-');
    }
    push_u64(out, u64::from(value.unsigned_abs()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::{parse_hash, to_hex};

    #[test]
    fn integers() {
        for v in [0, 7, -1, 10, 123456, i32::MAX, i32::MIN] {
            let mut out = Vec::new();
            push_i32(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
        for v in [0, 9, 10, u64::MAX] {
            let mut out = b"x".to_vec();
            push_u64(&mut out, v);
            assert_eq!(out, format!("x{v}").as_bytes());
        }
    }

    #[test]
    fn empty_history_has_no_status() {
        assert_eq!(status(&[]), (None, 0));
    }

    #[test]
    fn status_of_a_small_history() {
        let a = "f2b6b4fb8ab1a7e5c4a9e9f0a5d0b91e1c3e5e8a2b0e64f8b5a1c2d3e4f50617";
        let b = "0000000000000000000000000000000000000000000000000000000000000001";
        let c = "00000000000000000000000000000000000000000000000000000000000000ff";
        let items = vec![
            HistoryItem {
                txid: parse_hash(a).unwrap(),
                height: 5,
                fee: None,
            },
            HistoryItem {
                txid: parse_hash(b).unwrap(),
                height: 0,
                fee: Some(100),
            },
            HistoryItem {
                txid: parse_hash(c).unwrap(),
                height: -1,
                fee: Some(200),
            },
        ];
        // The text ElectrumX hashes, written out by hand.
        let text = format!("{a}:5:{b}:0:{c}:-1:");
        let (got, len) = status(&items);
        assert_eq!(len, text.len());
        // Its digest, computed independently (`printf %s "$text" | sha256sum`).
        assert_eq!(
            to_hex(&got.unwrap()),
            "9238d22fc2967745038461e71ab125ee64abb908f983558ddef8aeaccd141250"
        );
    }

    #[test]
    fn cloned_hasher_continues_the_same_text() {
        let t = [3u8; 32];
        let mut confirmed = StatusHasher::new();
        confirmed.add(&t, 1);
        let mut with_mempool = confirmed.clone();
        with_mempool.add(&t, -1);
        let all = [
            HistoryItem {
                txid: t,
                height: 1,
                fee: None,
            },
            HistoryItem {
                txid: t,
                height: -1,
                fee: Some(1),
            },
        ];
        assert_eq!(with_mempool.finish(), status(&all).0);
    }
}
