//! Merkle trees as Bitcoin builds them (the last node of an odd level is paired with itself):
//! branches and roots over transaction ids, and the header tree behind `cp_height` proofs,
//! whose complete subtrees are cached so a proof costs a few dozen hashes, not the chain.

use bitcoin::hashes::{sha256d, Hash};
use ferrum_storage::{Hash32, Snapshot};

/// Hash of two nodes concatenated, the parent in the tree.
pub fn hash_pair(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(left);
    both[32..].copy_from_slice(right);
    sha256d::Hash::hash(&both).to_byte_array()
}

/// The hash of a block header, in internal byte order.
pub fn header_hash(header: &[u8; 80]) -> Hash32 {
    sha256d::Hash::hash(header).to_byte_array()
}

/// A snapshot's tip: its height and the hash of its header (None for an empty store).
pub fn snapshot_tip(snap: &Snapshot) -> Result<Option<(u32, Hash32)>, ferrum_storage::Error> {
    match snap.height() {
        Some(h) => Ok(Some((h, header_hash(&snap.header(h)?)))),
        None => Ok(None),
    }
}

/// Rounds needed to fold `count` hashes into one: ceil(log2(count)).
pub fn branch_length(count: usize) -> usize {
    if count <= 1 {
        0
    } else {
        (usize::BITS - (count - 1).leading_zeros()) as usize
    }
}

/// The branch of the hash at `index` (deepest pairing first) and the root of `hashes`,
/// folded `rounds` times (None: just enough). ElectrumX's `Merkle.branch_and_root`.
/// None if `index` is out of range or `rounds` too few.
pub fn branch_and_root(
    hashes: &[Hash32],
    index: usize,
    rounds: Option<usize>,
) -> Option<(Vec<Hash32>, Hash32)> {
    if index >= hashes.len() {
        return None;
    }
    let natural = branch_length(hashes.len());
    let rounds = rounds.unwrap_or(natural);
    if rounds < natural {
        return None;
    }
    let mut level = hashes.to_vec();
    let mut branch = Vec::with_capacity(rounds);
    let mut index = index;
    for _ in 0..rounds {
        if level.len() % 2 == 1 {
            level.push(level[level.len() - 1]);
        }
        branch.push(level[index ^ 1]);
        index >>= 1;
        for n in 0..level.len() / 2 {
            level[n] = hash_pair(&level[2 * n], &level[2 * n + 1]);
        }
        level.truncate(level.len() / 2);
    }
    Some((branch, level[0]))
}

/// The root reached by folding `branch` onto `leaf` at `index` (how a client checks a proof).
pub fn root_from_branch(leaf: &Hash32, branch: &[Hash32], index: usize) -> Hash32 {
    let mut hash = *leaf;
    let mut index = index;
    for node in branch {
        hash = if index & 1 == 1 {
            hash_pair(node, &hash)
        } else {
            hash_pair(&hash, node)
        };
        index >>= 1;
    }
    hash
}

/// Where the header tree reads headers from: a store snapshot, or a list in tests.
pub trait Headers {
    /// Number of headers (chain height + 1).
    fn count(&self) -> u32;
    fn header(&self, height: u32) -> Result<[u8; 80], ferrum_storage::Error>;
}

impl Headers for Snapshot {
    fn count(&self) -> u32 {
        self.height().map_or(0, |h| h + 1)
    }

    fn header(&self, height: u32) -> Result<[u8; 80], ferrum_storage::Error> {
        Snapshot::header(self, height)
    }
}

/// Leaves per cached segment: a proof hashes at most this many headers afresh.
const SEGMENT_BITS: usize = 5;
const SEGMENT: u32 = 1 << SEGMENT_BITS;

/// The merkle tree over block hashes, with every complete subtree of `SEGMENT` leaves or
/// more cached (about 2 bytes a block). Kept in step with the chain it is used with: reorged
/// segments are dropped (found by the hash of each segment's last header) and new ones added.
#[derive(Default)]
pub struct HeaderMerkle {
    /// `levels[m][x]`: root of complete subtree x of `SEGMENT << m` leaves.
    levels: Vec<Vec<Hash32>>,
    /// Hash of the last header of each cached segment.
    boundaries: Vec<Hash32>,
}

impl HeaderMerkle {
    pub fn new() -> HeaderMerkle {
        HeaderMerkle::default()
    }

    /// Branch and root proving header `index` in the tree of the first `length` headers.
    /// The caller checks `index < length <= chain.count()`.
    pub fn branch_and_root(
        &mut self,
        chain: &impl Headers,
        length: u32,
        index: u32,
    ) -> Result<(Vec<Hash32>, Hash32), ferrum_storage::Error> {
        if index >= length || length > chain.count() {
            return Err(ferrum_storage::Error::Invalid(format!(
                "no header {index} in a tree of {length} over a chain of {}",
                chain.count()
            )));
        }
        self.sync(chain)?;
        let seg_start = index >> SEGMENT_BITS << SEGMENT_BITS;
        if length <= SEGMENT {
            let leaves = leaf_hashes(chain, 0, length)?;
            return Ok(branch_and_root(&leaves, index as usize, None).expect("index checked"));
        }
        let full = (length / SEGMENT) as usize;
        let count0 = length.div_ceil(SEGMENT) as usize;
        let leaves = leaf_hashes(chain, seg_start, SEGMENT.min(length - seg_start))?;
        let (mut branch, mut hash) =
            branch_and_root(&leaves, (index - seg_start) as usize, Some(SEGMENT_BITS))
                .expect("index checked");
        let edges = self.right_edges(chain, length, full, count0)?;
        let node = |m: usize, x: usize| -> Hash32 {
            if (x + 1) << m <= full {
                self.levels[m][x]
            } else {
                edges[m]
            }
        };
        let (mut x, mut count) = ((index >> SEGMENT_BITS) as usize, count0);
        let mut m = 0;
        while count > 1 {
            let sibling = if (x ^ 1) < count {
                node(m, x ^ 1)
            } else {
                hash
            };
            branch.push(sibling);
            hash = if x & 1 == 1 {
                hash_pair(&sibling, &hash)
            } else {
                hash_pair(&hash, &sibling)
            };
            x >>= 1;
            count = count.div_ceil(2);
            m += 1;
        }
        Ok((branch, hash))
    }

    /// The last node of each level (from the segment level up) of the tree of `length`
    /// leaves, where it is not a complete subtree (else unused).
    fn right_edges(
        &self,
        chain: &impl Headers,
        length: u32,
        full: usize,
        count0: usize,
    ) -> Result<Vec<Hash32>, ferrum_storage::Error> {
        let mut edges = Vec::new();
        let partial_start = full as u32 * SEGMENT;
        edges.push(if partial_start < length {
            let leaves = leaf_hashes(chain, partial_start, length - partial_start)?;
            branch_and_root(&leaves, 0, Some(SEGMENT_BITS))
                .expect("non-empty")
                .1
        } else {
            [0; 32]
        });
        let (mut below, mut m) = (count0, 1);
        while below > 1 {
            let count = below.div_ceil(2);
            let x = count - 1;
            let left = if (2 * x + 1) << (m - 1) <= full {
                self.levels[m - 1][2 * x]
            } else {
                edges[m - 1]
            };
            let right = if 2 * x + 1 < below {
                edges[m - 1]
            } else {
                left
            };
            edges.push(if (x + 1) << m <= full {
                [0; 32]
            } else {
                hash_pair(&left, &right)
            });
            below = count;
            m += 1;
        }
        Ok(edges)
    }

    /// Drops cached segments the chain no longer has, then caches its new complete ones
    /// (the whole chain on first use: call it at start-up to keep that off a request).
    pub fn sync(&mut self, chain: &impl Headers) -> Result<(), ferrum_storage::Error> {
        let full = (chain.count() / SEGMENT) as usize;
        while let Some(last) = self.boundaries.len().checked_sub(1) {
            if last < full
                && header_hash(&chain.header((last as u32 + 1) * SEGMENT - 1)?)
                    == self.boundaries[last]
            {
                break;
            }
            self.truncate(last);
        }
        while self.boundaries.len() < full {
            self.push_segment(chain)?;
        }
        Ok(())
    }

    fn truncate(&mut self, segments: usize) {
        self.boundaries.truncate(segments);
        for (m, level) in self.levels.iter_mut().enumerate() {
            level.truncate(segments >> m);
        }
    }

    fn push_segment(&mut self, chain: &impl Headers) -> Result<(), ferrum_storage::Error> {
        let start = self.boundaries.len() as u32 * SEGMENT;
        let leaves = leaf_hashes(chain, start, SEGMENT)?;
        let root = branch_and_root(&leaves, 0, Some(SEGMENT_BITS))
            .expect("a full segment")
            .1;
        self.boundaries.push(leaves[leaves.len() - 1]);
        let mut carry = root;
        let mut m = 0;
        loop {
            if self.levels.len() == m {
                self.levels.push(Vec::new());
            }
            let level = &mut self.levels[m];
            level.push(carry);
            if level.len() % 2 == 1 {
                return Ok(());
            }
            carry = hash_pair(&level[level.len() - 2], &level[level.len() - 1]);
            m += 1;
        }
    }
}

fn leaf_hashes(
    chain: &impl Headers,
    start: u32,
    count: u32,
) -> Result<Vec<Hash32>, ferrum_storage::Error> {
    (start..start + count)
        .map(|h| chain.header(h).map(|header| header_hash(&header)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::Txid;

    fn leaf(i: u32) -> Hash32 {
        sha256d::Hash::hash(&i.to_le_bytes()).to_byte_array()
    }

    /// The bitcoin crate's own root computation, for an independent check.
    fn bitcoin_root(hashes: &[Hash32]) -> Hash32 {
        let txids = hashes.iter().map(|h| Txid::from_byte_array(*h));
        let root = bitcoin::merkle_tree::calculate_root(txids).expect("non-empty");
        root.to_byte_array()
    }

    #[test]
    fn branch_lengths() {
        let got: Vec<usize> = [1, 2, 3, 4, 5, 8, 9, 1024, 1025]
            .iter()
            .map(|&n| branch_length(n))
            .collect();
        assert_eq!(got, [0, 1, 2, 2, 3, 3, 4, 10, 11]);
    }

    #[test]
    fn tx_branches_match_bitcoin_roots() {
        for n in 1..=40u32 {
            let hashes: Vec<Hash32> = (0..n).map(leaf).collect();
            let expected = bitcoin_root(&hashes);
            for i in 0..n as usize {
                let (branch, root) = branch_and_root(&hashes, i, None).unwrap();
                assert_eq!(root, expected, "n={n} i={i}");
                assert_eq!(branch.len(), branch_length(n as usize));
                assert_eq!(root_from_branch(&hashes[i], &branch, i), expected);
            }
        }
        assert!(branch_and_root(&[leaf(0)], 1, None).is_none());
        assert!(branch_and_root(&[leaf(0), leaf(1), leaf(2)], 0, Some(1)).is_none());
    }

    #[test]
    fn single_leaf_and_forced_rounds() {
        let h = leaf(7);
        assert_eq!(branch_and_root(&[h], 0, None).unwrap(), (vec![], h));
        // Two forced rounds over one leaf pair it with itself twice.
        let once = hash_pair(&h, &h);
        assert_eq!(
            branch_and_root(&[h], 0, Some(2)).unwrap(),
            (vec![h, once], hash_pair(&once, &once))
        );
    }

    struct Chain(Vec<[u8; 80]>);

    impl Headers for Chain {
        fn count(&self) -> u32 {
            self.0.len() as u32
        }
        fn header(&self, height: u32) -> Result<[u8; 80], ferrum_storage::Error> {
            self.0
                .get(height as usize)
                .copied()
                .ok_or_else(|| ferrum_storage::Error::Invalid("no header".into()))
        }
    }

    fn chain(n: u32, salt: u8) -> Chain {
        Chain(
            (0..n)
                .map(|i| {
                    let mut h = [salt; 80];
                    h[..4].copy_from_slice(&i.to_le_bytes());
                    h
                })
                .collect(),
        )
    }

    fn check(cache: &mut HeaderMerkle, c: &Chain, length: u32, index: u32) {
        let leaves: Vec<Hash32> = c.0[..length as usize].iter().map(header_hash).collect();
        let expected = branch_and_root(&leaves, index as usize, None).unwrap();
        let got = cache.branch_and_root(c, length, index).unwrap();
        assert_eq!(got, expected, "length={length} index={index}");
        assert_eq!(
            root_from_branch(&leaves[index as usize], &got.0, index as usize),
            bitcoin_root(&leaves)
        );
    }

    #[test]
    fn header_proofs_match_the_plain_tree() {
        let c = chain(300, 1);
        let mut cache = HeaderMerkle::new();
        for length in [
            1u32, 2, 31, 32, 33, 63, 64, 65, 96, 97, 100, 128, 129, 200, 255, 256, 257, 300,
        ] {
            for index in [
                0,
                length / 3,
                length / 2,
                length.saturating_sub(33),
                length - 1,
            ] {
                if index < length {
                    check(&mut cache, &c, length, index);
                }
            }
        }
        for index in 0..300 {
            check(&mut cache, &c, 300, index);
        }
        assert!(cache.branch_and_root(&c, 301, 0).is_err());
        assert!(cache.branch_and_root(&c, 10, 10).is_err());
    }

    #[test]
    fn reorgs_and_growth_refresh_the_cache() {
        let mut c = chain(200, 1);
        let mut cache = HeaderMerkle::new();
        check(&mut cache, &c, 200, 5);
        // Replace the last 50 headers (a reorg), then grow past the old tip.
        let other = chain(260, 2);
        c.0.truncate(150);
        c.0.extend_from_slice(&other.0[150..]);
        check(&mut cache, &c, 260, 5);
        check(&mut cache, &c, 260, 170);
        // Shrink below cached segments.
        c.0.truncate(70);
        check(&mut cache, &c, 70, 69);
        assert_eq!(cache.boundaries.len(), 2);
    }
}
