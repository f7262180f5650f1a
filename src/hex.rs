//! Hex text as ElectrumX writes and reads it: hashes displayed byte-reversed, and parsing
//! with Python's `bytes.fromhex` rules (whitespace allowed between byte pairs).

use ferrum_storage::Hash32;

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The two hex digits of every byte, so encoding is one table lookup a byte.
static PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 15]];
        i += 1;
    }
    pairs
};

/// Appends `bytes` as lowercase hex.
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.extend_from_slice(&PAIRS[*b as usize]);
    }
}

/// Appends a hash as displayed (txids, block hashes, script hashes): bytes reversed.
pub fn push_hash_hex(out: &mut Vec<u8>, hash: &Hash32) {
    let mut text = [0u8; 64];
    for (pair, b) in text.chunks_exact_mut(2).zip(hash.iter().rev()) {
        pair.copy_from_slice(&PAIRS[*b as usize]);
    }
    out.extend_from_slice(&text);
}

pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// A hash as displayed: ElectrumX's `hash_to_hex_str`.
pub fn hash_hex(hash: &Hash32) -> String {
    let mut out = Vec::with_capacity(64);
    push_hash_hex(&mut out, hash);
    String::from_utf8(out).expect("hex digits are ASCII")
}

fn digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Python's `bytes.fromhex`: pairs of hex digits, ASCII whitespace allowed before each pair.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 2);
    let mut i = 0;
    loop {
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            i += 1;
        }
        if i == bytes.len() {
            return Some(out);
        }
        let high = digit(bytes[i])?;
        let low = digit(*bytes.get(i + 1)?)?;
        out.push(high << 4 | low);
        i += 2;
    }
}

/// ElectrumX's `hex_str_to_hash` for a 32-byte hash: display order back to internal order.
pub fn parse_hash(text: &str) -> Option<Hash32> {
    let mut bytes: Hash32 = from_hex(text)?.try_into().ok()?;
    bytes.reverse();
    Some(bytes)
}

/// ElectrumX's `is_hex_str`: a string of hex digit pairs and nothing else.
pub fn is_hex_str(text: &str) -> bool {
    text.len().is_multiple_of(2) && text.bytes().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_order_is_reversed() {
        let mut h = [0u8; 32];
        h[0] = 0xab;
        h[31] = 0x01;
        let shown = hash_hex(&h);
        assert!(shown.starts_with("01") && shown.ends_with("ab"), "{shown}");
        assert_eq!(parse_hash(&shown), Some(h));
        assert_eq!(to_hex(&[0, 0x0f, 0xff]), "000fff");
    }

    #[test]
    fn python_fromhex_rules() {
        assert_eq!(from_hex("0aFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(from_hex(" 0a ff\n"), Some(vec![0x0a, 0xff]));
        assert_eq!(from_hex(""), Some(vec![]));
        assert_eq!(from_hex("0 a"), None);
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(parse_hash(&"ab".repeat(31)), None);
        assert!(is_hex_str("00ff") && is_hex_str(""));
        assert!(!is_hex_str("0ff") && !is_hex_str("00 ff") && !is_hex_str("xx"));
    }
}
