//! A bit stream for history blocks: fixed-width fields and Rice codes, written least
//! significant bit first. Reads are bounds-checked and return `None` on truncation or a
//! value that cannot be right, never panic.

/// A Rice quotient of this many zero bits or more is not written in unary: the escape (this
/// many zeros) is followed by the value's bit length in `LEN_BITS` bits and the value itself.
/// It bounds both the code of an outlier and the bits one unary read looks at.
const ESC: u32 = 32;
const LEN_BITS: u32 = 7;

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

/// Appends bits to a byte vector; `finish` pads the last byte with zeros.
pub(crate) struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32, // bits held in `acc`, at most 7 between calls
}

impl BitWriter {
    /// Continues after the bytes already in `out`.
    pub fn new(out: Vec<u8>) -> BitWriter {
        BitWriter { out, acc: 0, n: 0 }
    }

    /// Writes the low `bits` (at most 64) bits of `v`, which must have no higher bits set.
    pub fn put(&mut self, v: u64, bits: u32) {
        debug_assert!(bits <= 64 && v & !mask(bits) == 0);
        if bits > 56 {
            self.put(v & mask(32), 32);
            self.put(v >> 32, bits - 32);
            return;
        }
        self.acc |= v << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// Writes the low `bits` (at most 128) bits of `v`.
    pub fn put_wide(&mut self, v: u128, bits: u32) {
        self.put(v as u64 & mask(bits), bits.min(64));
        if bits > 64 {
            self.put((v >> 64) as u64, bits - 64);
        }
    }

    /// Rice code of `v` with parameter `k` (below 128): `v >> k` in unary (that many zeros,
    /// then a one), then the low `k` bits; a quotient of `ESC` or more is escaped.
    pub fn rice(&mut self, v: u128, k: u32) {
        let q = v >> k;
        if q < u128::from(ESC) {
            self.put(1 << q as u32, q as u32 + 1);
            self.put_wide(v & ((1 << k) - 1), k);
        } else {
            let len = 128 - v.leading_zeros();
            self.put(0, ESC);
            self.put(u64::from(len), LEN_BITS);
            self.put_wide(v, len);
        }
    }

    /// Bits `rice(v, k)` takes.
    pub fn rice_len(v: u128, k: u32) -> u32 {
        let q = v >> k;
        if q < u128::from(ESC) {
            q as u32 + 1 + k
        } else {
            ESC + LEN_BITS + 128 - v.leading_zeros()
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// Reads a bit stream written by `BitWriter`.
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize, // in bits
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8]) -> BitReader<'a> {
        BitReader { data, pos: 0 }
    }

    /// Bits not read yet (including the final byte's padding).
    pub fn left(&self) -> usize {
        self.data.len() * 8 - self.pos
    }

    /// At least 57 bits from the current position; zeros past the end.
    fn peek(&self) -> u64 {
        let at = self.pos / 8;
        let word = match self.data.get(at..at + 8) {
            Some(w) => u64::from_le_bytes(w.try_into().unwrap()),
            None => {
                let mut w = [0u8; 8];
                let rest = self.data.get(at..).unwrap_or_default();
                w[..rest.len()].copy_from_slice(rest);
                u64::from_le_bytes(w)
            }
        };
        word >> (self.pos % 8)
    }

    /// Reads `bits` (at most 64) bits.
    #[inline]
    pub fn get(&mut self, bits: u32) -> Option<u64> {
        if bits > 56 {
            let low = self.get(56)?;
            return Some(low | self.get(bits - 56)? << 56);
        }
        if bits as usize > self.left() {
            return None;
        }
        let v = self.peek() & mask(bits);
        self.pos += bits as usize;
        Some(v)
    }

    /// Reads `bits` (at most 112) bits.
    pub fn get_wide(&mut self, bits: u32) -> Option<u128> {
        let low = self.get(bits.min(56))?;
        let high = if bits > 56 { self.get(bits - 56)? } else { 0 };
        Some(u128::from(low) | u128::from(high) << 56)
    }

    /// Reads `n` Rice codes (parameter `k`, at most 63) of tx number deltas minus one, and
    /// pushes the running sums from `t` on to `out`. Codes are decoded from a word of 57
    /// bits loaded at once, reloaded when the next code does not fit; a code longer than
    /// that, or near the end of the stream, goes through `rice`.
    pub fn rice_sums(
        &mut self,
        k: u32,
        n: u64,
        mut t: u64,
        out: &mut Vec<u64>,
    ) -> std::result::Result<(), &'static str> {
        let low = mask(k);
        let (mut word, mut avail) = (0u64, 0u32);
        let mut left = n;
        while left > 0 {
            let q = word.trailing_zeros();
            let len = q + 1 + k;
            if q < ESC && len <= avail {
                // q < 32 and k < 57: the shifts and the + 1 cannot overflow.
                let delta = u64::from(q) << k | (word >> (q + 1)) & low;
                word >>= len;
                avail -= len;
                self.pos += len as usize;
                t = t.checked_add(delta + 1).ok_or("tx number overflow")?;
                out.push(t);
                left -= 1;
                continue;
            }
            if avail < 57 {
                let at = self.pos / 8;
                if let Some(w) = self.data.get(at..at + 8) {
                    word = u64::from_le_bytes(w.try_into().unwrap()) >> (self.pos % 8);
                    avail = 57;
                    continue;
                }
            }
            let delta = self.rice(k, 64).ok_or("bad tx number")? as u64;
            t = t
                .checked_add(delta)
                .and_then(|t| t.checked_add(1))
                .ok_or("tx number overflow")?;
            out.push(t);
            (word, avail) = (0, 0);
            left -= 1;
        }
        Ok(())
    }

    /// Reads a Rice code with parameter `k` of a value below `2^max_bits` (`max_bits` at
    /// most 88). A parameter above `max_bits` is not one a writer would use.
    pub fn rice(&mut self, k: u32, max_bits: u32) -> Option<u128> {
        debug_assert!(max_bits <= 88);
        if k > max_bits {
            return None;
        }
        let q = self.peek().trailing_zeros();
        let v = if q < ESC {
            if q as usize >= self.left() {
                return None;
            }
            self.pos += q as usize + 1;
            u128::from(q) << k | self.get_wide(k)?
        } else {
            self.get(ESC)?;
            let len = self.get(LEN_BITS)? as u32;
            if len > max_bits {
                return None;
            }
            self.get_wide(len)?
        };
        (v >> max_bits == 0).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_codes_round_trip() {
        let mut w = BitWriter::new(vec![0xaa]);
        let wide = (1u128 << 88) - 3;
        w.put(5, 3);
        w.put(u64::MAX, 64);
        w.put(0, 0);
        w.put_wide(wide, 88);
        let rices = [
            (0u128, 0),
            (1, 0),
            (31, 0),
            (32, 0),
            (5, 3),
            (300, 3),
            (wide, 80),
        ];
        let mut bits = 0;
        for &(v, k) in &rices {
            w.rice(v, k);
            bits += BitWriter::rice_len(v, k);
        }
        w.rice(u128::from(u64::MAX), 2);
        w.rice(wide, 0);
        let data = w.finish();
        assert_eq!(data[0], 0xaa);
        let mut r = BitReader::new(&data[1..]);
        assert_eq!(r.get(3), Some(5));
        assert_eq!(r.get(64), Some(u64::MAX));
        assert_eq!(r.get(0), Some(0));
        assert_eq!(r.get_wide(88), Some(wide));
        let before = r.left();
        for &(v, k) in &rices {
            assert_eq!(r.rice(k, 88), Some(v), "rice({v}, {k})");
        }
        assert_eq!(before - r.left(), bits as usize);
        assert_eq!(r.rice(2, 64), Some(u128::from(u64::MAX)));
        assert_eq!(r.rice(0, 88), Some(wide));
        assert!(r.left() < 8);
        assert_eq!(r.get(r.left() as u32), Some(0), "zero padding");
    }

    #[test]
    fn rice_sums_add_deltas_plus_one() {
        let deltas = [0u64, 5, 1 << 40, 3, 0];
        let mut w = BitWriter::new(Vec::new());
        for k in [2, 40] {
            for &d in &deltas {
                w.rice(u128::from(d), k);
            }
        }
        let data = w.finish();
        let mut r = BitReader::new(&data);
        let mut out = vec![7];
        r.rice_sums(2, 5, 10, &mut out).unwrap();
        r.rice_sums(40, 5, 0, &mut out).unwrap();
        let sums = [11, 17, 18 + (1 << 40), 22 + (1 << 40), 23 + (1 << 40)];
        assert_eq!(out[..6], [&[7][..], &sums].concat());
        assert_eq!(out[6..], sums.map(|s| s - 10));
        assert_eq!(r.rice_sums(0, 1, 0, &mut out), Err("bad tx number"));
        let mut r = BitReader::new(&data);
        assert_eq!(
            r.rice_sums(2, 1, u64::MAX, &mut out),
            Err("tx number overflow")
        );
        let mut r = BitReader::new(&data);
        r.rice_sums(2, 2, 0, &mut out).unwrap();
        assert_eq!(
            r.rice_sums(2, 1, u64::MAX - (1 << 40), &mut out),
            Err("tx number overflow"),
            "escaped delta"
        );
    }

    #[test]
    fn short_codes_take_few_bits() {
        assert_eq!(BitWriter::rice_len(0, 0), 1);
        assert_eq!(BitWriter::rice_len(9, 2), 5);
        assert_eq!(BitWriter::rice_len(31, 0), 32);
        assert_eq!(BitWriter::rice_len(32, 0), ESC + LEN_BITS + 6);
    }

    #[test]
    fn truncated_or_out_of_range_reads_are_none() {
        let mut r = BitReader::new(&[0xff]);
        assert_eq!(r.get(9), None);
        assert_eq!(r.get(8), Some(0xff));
        assert_eq!(r.get(1), None);
        // Unary runs past the end.
        assert_eq!(BitReader::new(&[0, 0]).rice(0, 64), None);
        // Low bits missing after the unary part.
        assert_eq!(BitReader::new(&[1]).rice(8, 64), None);
        // An escaped value longer than allowed, and a unary value that overflows.
        let mut w = BitWriter::new(Vec::new());
        w.rice(1 << 70, 0);
        let data = w.finish();
        assert_eq!(BitReader::new(&data).rice(0, 64), None);
        assert_eq!(BitReader::new(&data).rice(0, 71), Some(1 << 70));
        let mut w = BitWriter::new(Vec::new());
        w.rice(3 << 63, 63);
        let data = w.finish();
        assert_eq!(BitReader::new(&data).rice(63, 64), None);
        assert_eq!(BitReader::new(&data).rice(63, 65), Some(3 << 63));
        assert_eq!(
            BitReader::new(&data).rice(66, 65),
            None,
            "parameter too large"
        );
    }
}
