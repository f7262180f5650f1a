//! One history block body: script keys as Rice-coded gaps, tx numbers as a fixed-width first
//! number per key and Rice-coded deltas, bit-packed. `BlockBuilder` collects and encodes a
//! block, `decode_block` checks and decodes one. Layout: docs/STORAGE.md ("History segment
//! file").

use std::path::Path;

use crate::error::{Error, Result};
use crate::history::bits::{BitReader, BitWriter};
use crate::utxo::sorted_file::encode_block;
use crate::varint;
use crate::{HashX, HASHX_LEN};

/// Bit widths of the block parameters (Rice parameters of key gaps and of counts above 2,
/// first-number width, default delta parameter) and of a group's own delta parameter.
const KEY_K_BITS: u32 = 7;
const COUNT_K_BITS: u32 = 2;
const WIDTH_BITS: u32 = 7;
const K_BITS: u32 = 6;
const COUNT_K_MAX: u32 = (1 << COUNT_K_BITS) - 1;
const K_MAX: u32 = (1 << K_BITS) - 1;

const KEY_BITS: u32 = HASHX_LEN as u32 * 8;

/// Target size of a block's bit stream (6 KiB), estimated while it fills. A lookup decodes
/// about half a block (it stops past its key); the fixed cost of a block (index entry,
/// frame, header: about 45 bytes) stays under 1%, and larger blocks barely save more.
const BLOCK_BITS: usize = 6 << 13;

/// A block decoded into group pieces: (script key, range in `txnums`).
#[derive(Default)]
pub(super) struct Block {
    pub groups: Vec<(HashX, usize, usize)>,
    pub txnums: Vec<u64>,
}

fn key_int(h: &HashX) -> u128 {
    let mut b = [0u8; 16];
    b[16 - HASHX_LEN..].copy_from_slice(h);
    u128::from_be_bytes(b)
}

fn int_key(v: u128) -> HashX {
    v.to_be_bytes()[16 - HASHX_LEN..].try_into().unwrap()
}

fn bit_len(v: u128) -> u32 {
    128 - v.leading_zeros()
}

/// The Rice parameter (at most `max`) that codes `values` in the fewest bits, and that
/// count. The best one is at most two below the bit length of the mean.
fn best_rice(values: impl Iterator<Item = u128> + Clone, max: u32) -> (u32, u64) {
    let (sum, n) = values
        .clone()
        .fold((0u128, 0u128), |(s, n), v| (s.saturating_add(v), n + 1));
    let guess = bit_len(sum / n.max(1));
    let cost = |k: u32| -> u64 {
        values
            .clone()
            .map(|v| u64::from(BitWriter::rice_len(v, k)))
            .sum()
    };
    (guess.saturating_sub(2).min(max)..=guess.min(max))
        .map(|k| (k, cost(k)))
        .min_by_key(|&(k, c)| (c, k))
        .unwrap_or((0, cost(0)))
}

/// Writes a group's count: `1` for 2 (paid, then spent: the commonest script), `01` for 1,
/// else `00` and the count minus 3 Rice-coded.
fn put_count(w: &mut BitWriter, count: u64, count_k: u32) {
    match count {
        2 => w.put(1, 1),
        1 => w.put(0b10, 2),
        _ => {
            w.put(0, 2);
            w.rice(u128::from(count - 3), count_k);
        }
    }
}

/// Reads what `put_count` wrote.
fn get_count(r: &mut BitReader, count_k: u32) -> Option<u64> {
    if r.get(1)? == 1 {
        return Some(2);
    }
    if r.get(1)? == 1 {
        return Some(1);
    }
    let c = r.rice(count_k, 64)? as u64;
    // A count that does not fit the bits left (checked by the caller) cannot overflow here.
    c.checked_add(3)
}

/// A block being filled with (hashx, txnum) entries in strictly ascending order.
#[derive(Default)]
pub(super) struct BlockBuilder {
    groups: Vec<(HashX, usize)>, // key, start in `txnums`
    txnums: Vec<u64>,
    est_bits: usize,
}

impl BlockBuilder {
    pub fn push(&mut self, hashx: &HashX, txnum: u64) {
        let new_group = self.groups.last().is_none_or(|g| g.0 != *hashx);
        if new_group {
            self.groups.push((*hashx, self.txnums.len()));
            // Roughly a key gap, a count and a first number.
            self.est_bits += 96;
        } else {
            let delta = txnum - self.txnums.last().unwrap();
            self.est_bits += bit_len(u128::from(delta)) as usize + 2;
        }
        self.txnums.push(txnum);
    }

    pub fn first(&self) -> Option<&HashX> {
        self.groups.first().map(|g| &g.0)
    }

    pub fn is_full(&self) -> bool {
        self.est_bits >= BLOCK_BITS
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    fn group_nums(&self, i: usize) -> &[u64] {
        let end = self.groups.get(i + 1).map_or(self.txnums.len(), |g| g.1);
        &self.txnums[self.groups[i].1..end]
    }

    /// Encodes the block as a frame payload and empties the builder.
    pub fn take(&mut self) -> Vec<u8> {
        let n = self.groups.len();
        let nums: Vec<&[u64]> = (0..n).map(|i| self.group_nums(i)).collect();
        let base = nums.iter().map(|g| g[0]).min().unwrap_or(0);
        let width = bit_len(u128::from(
            nums.iter().map(|g| g[0] - base).max().unwrap_or(0),
        ));
        let gaps = self
            .groups
            .windows(2)
            .map(|w| key_int(&w[1].0) - key_int(&w[0].0) - 1);
        let (key_k, _) = best_rice(gaps.clone(), KEY_BITS);
        let long = nums.iter().filter(|g| g.len() > 2);
        let (count_k, _) = best_rice(long.map(|g| g.len() as u128 - 3), COUNT_K_MAX);
        // Deltas minus one of each group of two or more numbers, with the parameter that
        // codes them best.
        let deltas: Vec<(Vec<u128>, u32, u64)> = nums
            .iter()
            .filter(|g| g.len() > 1)
            .map(|g| {
                let d: Vec<u128> = g.windows(2).map(|w| u128::from(w[1] - w[0] - 1)).collect();
                let (k, cost) = best_rice(d.iter().copied(), K_MAX);
                (d, k, cost)
            })
            .collect();
        let rice_cost = |d: &[u128], k: u32| -> u64 {
            d.iter()
                .map(|&v| u64::from(BitWriter::rice_len(v, k)))
                .sum()
        };
        // The block's default parameter: a group uses it (one bit) or names its own. A long
        // group almost always names its own, so only short ones are costed both ways.
        let group_cost = |(d, k, cost): &(Vec<u128>, u32, u64), k0: u32| {
            let own = cost + u64::from(K_BITS);
            match d.len() {
                _ if *k == k0 => *cost,
                1..=8 => own.min(rice_cost(d, k0)),
                _ => own,
            }
        };
        let mut ks: Vec<u32> = deltas.iter().map(|g| g.1).collect();
        ks.sort_unstable();
        let median = ks.get(ks.len() / 2).copied().unwrap_or(0);
        let k0 = (median.saturating_sub(2)..=(median + 2).min(K_MAX))
            .min_by_key(|&k0| deltas.iter().map(|g| group_cost(g, k0)).sum::<u64>())
            .unwrap();

        let mut body = Vec::with_capacity(BLOCK_BITS / 8 + 64);
        body.extend_from_slice(&self.groups[0].0);
        varint::put(&mut body, n as u64);
        varint::put(&mut body, base);
        let mut w = BitWriter::new(body);
        w.put(u64::from(key_k), KEY_K_BITS);
        w.put(u64::from(count_k), COUNT_K_BITS);
        w.put(u64::from(width), WIDTH_BITS);
        w.put(u64::from(k0), K_BITS);
        let mut gaps = gaps;
        let mut deltas = deltas.iter();
        for (i, g) in nums.iter().enumerate() {
            if i > 0 {
                w.rice(gaps.next().unwrap(), key_k);
            }
            put_count(&mut w, g.len() as u64, count_k);
            w.put(g[0] - base, width);
            if g.len() == 1 {
                continue;
            }
            let (d, k, cost) = deltas.next().unwrap();
            let k = if *k == k0 || rice_cost(d, k0) <= cost + u64::from(K_BITS) {
                w.put(0, 1);
                k0
            } else {
                w.put(1, 1);
                w.put(u64::from(*k), K_BITS);
                *k
            };
            for &v in d {
                w.rice(v, k);
            }
        }
        self.groups.clear();
        self.txnums.clear();
        self.est_bits = 0;
        encode_block(&w.finish(), false)
    }
}

/// Decodes a block body, checking every count and code against the bits left. Keys ascend
/// and numbers strictly ascend by construction (gaps and deltas are coded minus one). With
/// `until`, decoding stops after the first group whose key is above it (a lookup needs no
/// more), and the rest of the block is not checked.
pub(super) fn decode_block(
    body: &[u8],
    path: &Path,
    offset: usize,
    until: Option<&HashX>,
    out: &mut Block,
) -> Result<()> {
    let corrupt = |reason: &str| Error::corrupt(path, offset as u64, reason);
    let bad_header = || corrupt("bad block header");
    out.groups.clear();
    out.txnums.clear();
    let first: HashX = body
        .get(..HASHX_LEN)
        .ok_or_else(bad_header)?
        .try_into()
        .unwrap();
    let mut pos = HASHX_LEN;
    let n = varint::get(body, &mut pos).ok_or_else(bad_header)?;
    let base = varint::get(body, &mut pos).ok_or_else(bad_header)?;
    let mut r = BitReader::new(&body[pos..]);
    let key_k = r.get(KEY_K_BITS).ok_or_else(bad_header)? as u32;
    let count_k = r.get(COUNT_K_BITS).ok_or_else(bad_header)? as u32;
    let width = r.get(WIDTH_BITS).ok_or_else(bad_header)? as u32;
    let k0 = r.get(K_BITS).ok_or_else(bad_header)? as u32;
    // Every group takes at least one bit: this bounds the work a bad count causes.
    if n == 0 || n > r.left() as u64 || key_k > KEY_BITS || width > 64 {
        return Err(bad_header());
    }
    let until = until.map_or(u128::MAX, key_int);
    let mut key = key_int(&first);
    for i in 0..n {
        if i > 0 {
            key = r
                .rice(key_k, KEY_BITS)
                .and_then(|gap| key.checked_add(gap + 1))
                .filter(|k| k >> KEY_BITS == 0)
                .ok_or_else(|| corrupt("bad script key"))?;
        }
        // Each number after the first takes at least one bit.
        let count = get_count(&mut r, count_k)
            .filter(|&c| c - 1 <= r.left() as u64)
            .ok_or_else(|| corrupt("group count out of range"))?;
        let bad_number = || corrupt("bad tx number");
        let overflow = || corrupt("tx number overflow");
        let txnum = base
            .checked_add(r.get(width).ok_or_else(bad_number)?)
            .ok_or_else(overflow)?;
        let start = out.txnums.len();
        out.txnums.push(txnum);
        if count > 1 {
            let k = match r.get(1).ok_or_else(bad_number)? {
                0 => k0,
                _ => r.get(K_BITS).ok_or_else(bad_number)? as u32,
            };
            r.rice_sums(k, count - 1, txnum, &mut out.txnums)
                .map_err(corrupt)?;
        }
        out.groups.push((int_key(key), start, out.txnums.len()));
        if key > until {
            return Ok(());
        }
    }
    let pad = r.left() as u32;
    if pad >= 8 || r.get(pad) != Some(0) {
        return Err(corrupt("bad block padding"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &[u8], until: Option<&HashX>) -> Result<Block> {
        let mut block = Block::default();
        decode_block(body, Path::new("h.seg"), 40, until, &mut block).map(|()| block)
    }

    fn err(body: &[u8]) -> String {
        decode(body, None).err().unwrap().to_string()
    }

    fn key(first: u8, last: u8) -> HashX {
        let mut h = [0; HASHX_LEN];
        (h[0], h[10]) = (first, last);
        h
    }

    /// A body written field by field: first key, group count, base, then the bits.
    fn body(n: u64, base: u64, bits: impl FnOnce(&mut BitWriter)) -> Vec<u8> {
        let mut out = key(1, 0).to_vec();
        varint::put(&mut out, n);
        varint::put(&mut out, base);
        let mut w = BitWriter::new(out);
        bits(&mut w);
        w.finish()
    }

    /// Block parameters: key gap, count and default delta parameters, first-number width.
    fn params(w: &mut BitWriter, key_k: u32, count_k: u32, width: u32, k0: u32) {
        w.put(u64::from(key_k), KEY_K_BITS);
        w.put(u64::from(count_k), COUNT_K_BITS);
        w.put(u64::from(width), WIDTH_BITS);
        w.put(u64::from(k0), K_BITS);
    }

    #[test]
    fn blocks_round_trip() {
        let groups: Vec<(HashX, Vec<u64>)> = vec![
            (key(0, 0), vec![5]),
            (key(0, 1), vec![0, 1, 2, 3, 1000, 1 << 40]),
            (key(0x80, 3), vec![7, 9]),
            (key(0x80, 4), vec![7, 8, 9]),
            ([0xff; HASHX_LEN], vec![u64::MAX - 2, u64::MAX]),
        ];
        let mut b = BlockBuilder::default();
        for (h, nums) in &groups {
            for &t in nums {
                b.push(h, t);
            }
        }
        assert_eq!(b.first(), Some(&key(0, 0)));
        let payload = b.take();
        assert!(b.is_empty());
        assert_eq!(payload[0], 0, "stored raw");
        let block = decode(&payload[1..], None).unwrap();
        let got: Vec<(HashX, Vec<u64>)> = block
            .groups
            .iter()
            .map(|&(h, a, z)| (h, block.txnums[a..z].to_vec()))
            .collect();
        assert_eq!(got, groups);
        // A lookup stops after the first key above the one it wants.
        let block = decode(&payload[1..], Some(&key(0, 1))).unwrap();
        assert_eq!(block.groups.len(), 3);
    }

    #[test]
    fn bad_bodies_are_corrupt_with_offset_and_reason() {
        let at = "corrupt store file h.seg at offset 40: ";
        let header = format!("{at}bad block header");
        assert_eq!(err(&[]), header);
        assert_eq!(err(&key(1, 0)), header, "no group count");
        assert_eq!(err(&body(1, 0, |_| {})), header, "no parameters");
        assert_eq!(err(&body(0, 0, |w| params(w, 0, 0, 0, 0))), header);
        let n = body(40, 0, |w| params(w, 0, 0, 0, 0));
        assert_eq!(err(&n), header, "more groups than bits");
        assert_eq!(err(&body(1, 0, |w| params(w, 89, 0, 0, 0))), header);
        assert_eq!(err(&body(1, 0, |w| params(w, 0, 0, 65, 0))), header);

        // Group 0 (one number) is fine; group 1's key gap runs past 88 bits.
        let group0 = |w: &mut BitWriter| {
            put_count(w, 1, 0);
            w.put(3, 2);
        };
        let gap = body(2, 0, |w| {
            params(w, 80, 0, 2, 0);
            group0(w);
            w.rice((1 << 88) - 1, 80);
            put_count(w, 1, 0);
            w.put(0, 2);
        });
        assert_eq!(err(&gap), format!("{at}bad script key"));
        let count = body(1, 0, |w| {
            params(w, 0, 0, 0, 0);
            put_count(w, 23, 0);
        });
        assert_eq!(err(&count), format!("{at}group count out of range"));
        let first = body(1, 0, |w| {
            params(w, 0, 0, 30, 0);
            put_count(w, 1, 0);
        });
        assert_eq!(err(&first), format!("{at}bad tx number"));
        let base = body(1, u64::MAX, |w| {
            params(w, 0, 0, 2, 0);
            group0(w);
        });
        assert_eq!(err(&base), format!("{at}tx number overflow"));
        let k = body(1, 0, |w| {
            params(w, 0, 0, 2, 0);
            put_count(w, 2, 0);
            w.put(0, 2);
            w.put(1, 1); // an own parameter, missing
        });
        assert_eq!(err(&k), format!("{at}bad tx number"));
        let delta = body(1, u64::MAX - 3, |w| {
            params(w, 0, 0, 2, 4);
            put_count(w, 2, 0);
            w.put(0, 2);
            w.put(0, 1);
            w.rice(3, 4);
        });
        assert_eq!(err(&delta), format!("{at}tx number overflow"));

        let good = body(1, 0, |w| {
            params(w, 0, 0, 2, 0);
            group0(w);
        });
        assert_eq!(decode(&good, None).unwrap().txnums, [3]);
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(err(&extra), format!("{at}bad block padding"));
        let mut dirty = good;
        *dirty.last_mut().unwrap() |= 0x80;
        assert_eq!(err(&dirty), format!("{at}bad block padding"));
    }
}
