//! The generator's confirmed coins: spendable outputs in a flat vector (memory proportional
//! to the live UTXO set), and coinbase outputs waiting out their 100-block maturity.

use std::collections::VecDeque;

use bitcoin::OutPoint;

use super::rng::Rng;

/// Blocks a coinbase output must wait before it may be spent (consensus).
pub(crate) const COINBASE_MATURITY: u32 = 100;

/// One spendable output owned by the generator's wallet.
#[derive(Clone, Debug)]
pub(crate) struct Coin {
    pub(crate) outpoint: OutPoint,
    pub(crate) value: u64,
    pub(crate) script: u64,
}

#[derive(Clone, Default)]
pub(crate) struct Coins {
    spendable: Vec<Coin>,
    /// Coinbase outputs by the height that created them, oldest first.
    immature: VecDeque<(u32, Coin)>,
}

impl Coins {
    pub(crate) fn len(&self) -> usize {
        self.spendable.len() + self.immature.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.spendable.is_empty()
    }

    pub(crate) fn add(&mut self, coin: Coin) {
        self.spendable.push(coin);
    }

    pub(crate) fn add_coinbase(&mut self, height: u32, coin: Coin) {
        self.immature.push_back((height, coin));
    }

    /// Makes coinbase outputs spendable by a transaction mined at `height`.
    pub(crate) fn mature_for(&mut self, height: u32) {
        while let Some((created, _)) = self.immature.front() {
            if created + COINBASE_MATURITY > height {
                break;
            }
            let (_, coin) = self.immature.pop_front().expect("front exists");
            self.spendable.push(coin);
        }
    }

    /// Takes a coin: half the time one of the most recently added (fresh outputs), otherwise
    /// any (old outputs). Swap-removal keeps this O(1).
    pub(crate) fn take(&mut self, rng: &mut Rng) -> Option<Coin> {
        let len = self.spendable.len() as u64;
        if len == 0 {
            return None;
        }
        let index = if rng.chance(0.5) {
            len - 1 - rng.below(len.min(64))
        } else {
            rng.below(len)
        };
        Some(self.spendable.swap_remove(index as usize))
    }
}
