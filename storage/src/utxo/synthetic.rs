//! A synthetic chain for space measurements in tests, shaped like the project's chain
//! generator: two outputs per tx paying an existing script with probability 0.6 (Zipf-like:
//! the oldest scripts are reused most) or a fresh one, log-uniform values, and one or two
//! inputs spending random earlier outputs.

use crate::HashX;

pub(crate) struct Tx {
    pub spends: Vec<(u64, u32, HashX)>,
    pub outputs: Vec<(HashX, u64)>,
}

pub(crate) struct Chain {
    rng: u64,
    scripts: u64,
    unspent: Vec<(u64, u32, HashX)>,
    next_tx: u64,
}

pub(crate) fn script_key(script: u64) -> HashX {
    let d = script.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes();
    let e = (script ^ 0x5555)
        .wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        .to_be_bytes();
    let mut h = [0u8; 11];
    h[..8].copy_from_slice(&d);
    h[8..].copy_from_slice(&e[..3]);
    h
}

impl Chain {
    pub fn new(seed: u64) -> Chain {
        Chain {
            rng: seed,
            scripts: 0,
            unspent: Vec::new(),
            next_tx: 0,
        }
    }

    fn unit(&mut self) -> f64 {
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn script(&mut self) -> HashX {
        if self.scripts > 0 && self.unit() < 0.6 {
            let rank = ((self.scripts as f64).ln() * self.unit()).exp() as u64 - 1;
            return script_key(rank.min(self.scripts - 1));
        }
        self.scripts += 1;
        script_key(self.scripts - 1)
    }

    /// The next transaction (its number is the count of transactions before it).
    pub fn next_tx(&mut self) -> (u64, Tx) {
        let txnum = self.next_tx;
        self.next_tx += 1;
        let inputs = if self.unit() < 0.5 { 1 } else { 2 };
        let mut spends = Vec::new();
        for _ in 0..inputs.min(self.unspent.len()) {
            let i = (self.unit() * self.unspent.len() as f64) as usize;
            spends.push(self.unspent.swap_remove(i));
        }
        let mut outputs = Vec::new();
        for vout in 0..2 {
            let hashx = self.script();
            let value = (1e4 * (self.unit() * (5e9f64 / 1e4).ln()).exp()) as u64;
            self.unspent.push((txnum, vout, hashx));
            outputs.push((hashx, value));
        }
        (txnum, Tx { spends, outputs })
    }
}
