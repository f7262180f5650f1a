//! Block parsing: the node's serialized block → the store's `BlockData` (txids, spent
//! outpoints, script keys and values), with the block checked against the hash asked for.

use std::fmt;

use bitcoin::hashes::{sha256, Hash};
use bitcoin::{Block, BlockHash, Script, Transaction};
use ferrum_storage::{BlockData, HashX, TxData, HASHX_LEN};

/// Scripts longer than this can never be spent (Core's MAX_SCRIPT_SIZE), so Core keeps them
/// out of its UTXO set and so do we.
const MAX_SCRIPT_SIZE: usize = 10_000;

/// The store's key for a script: the first 11 bytes of sha256(script), in natural byte order.
/// (The Electrum script hash is the whole sha256 with its bytes reversed for display.)
pub fn script_hashx(script: &Script) -> HashX {
    let digest = sha256::Hash::hash(script.as_bytes()).to_byte_array();
    let mut key = [0u8; HASHX_LEN];
    key.copy_from_slice(&digest[..HASHX_LEN]);
    key
}

/// Whether an output can never be spent and so is not indexed: OP_RETURN outputs,
/// `OP_FALSE OP_RETURN` (as ElectrumX), and scripts over Core's size limit.
pub fn is_unspendable(script: &Script) -> bool {
    let bytes = script.as_bytes();
    script.is_op_return() || bytes.starts_with(&[0x00, 0x6a]) || bytes.len() > MAX_SCRIPT_SIZE
}

/// A block ready for the store, with what the indexer checks and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedBlock {
    pub height: u32,
    pub hash: BlockHash,
    pub prev_hash: BlockHash,
    /// Serialized size, for progress and memory accounting.
    pub size: usize,
    pub data: BlockData,
}

impl ParsedBlock {
    pub fn tx_count(&self) -> usize {
        self.data.txs.len()
    }
}

/// The node sent something that is not the block asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockError {
    Malformed {
        height: u32,
        hash: BlockHash,
        reason: String,
    },
    WrongHash {
        height: u32,
        requested: BlockHash,
        got: BlockHash,
    },
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::Malformed {
                height,
                hash,
                reason,
            } => write!(
                f,
                "malformed block {hash} at height {height} from the node: {reason}"
            ),
            BlockError::WrongHash {
                height,
                requested,
                got,
            } => write!(
                f,
                "the node sent block {got} when asked for block {requested} at height {height}"
            ),
        }
    }
}

impl std::error::Error for BlockError {}

/// Why a block did not decode. The `bitcoin` crate says only "IO error" for data that
/// ends early, the usual case (a block cut short in transit).
fn decode_error(e: &bitcoin::consensus::encode::Error, len: usize) -> String {
    use bitcoin::consensus::encode::Error;
    match e {
        Error::Io(io) if io.kind() == bitcoin::io::ErrorKind::UnexpectedEof => {
            format!("its {len} bytes end before the block does")
        }
        Error::Io(io) => format!("unreadable: {io}"),
        e => e.to_string(),
    }
}

/// Parses the block at `height` the node sent for `requested`. The genesis block's coinbase
/// is not spendable, so none of its outputs are indexed.
pub fn parse_block(
    raw: &[u8],
    height: u32,
    requested: &BlockHash,
) -> Result<ParsedBlock, BlockError> {
    let malformed = |reason: String| BlockError::Malformed {
        height,
        hash: *requested,
        reason,
    };
    let block: Block =
        bitcoin::consensus::deserialize(raw).map_err(|e| malformed(decode_error(&e, raw.len())))?;
    let hash = block.block_hash();
    if hash != *requested {
        return Err(BlockError::WrongHash {
            height,
            requested: *requested,
            got: hash,
        });
    }
    if block.txdata.is_empty() {
        return Err(malformed("no transactions".into()));
    }
    let txs: Vec<TxData> = block
        .txdata
        .iter()
        .enumerate()
        .map(|(i, tx)| tx_data(tx, i == 0, height == 0))
        .collect();
    // The header commits to the transactions: a damaged body with an intact header is caught here.
    let root = bitcoin::merkle_tree::calculate_root(
        txs.iter().map(|t| bitcoin::Txid::from_byte_array(t.txid)),
    )
    .map(|root| bitcoin::TxMerkleNode::from_byte_array(root.to_byte_array()));
    if root != Some(block.header.merkle_root) {
        return Err(malformed(
            "transactions do not match the header's merkle root".into(),
        ));
    }
    let header: [u8; 80] = bitcoin::consensus::serialize(&block.header)
        .try_into()
        .expect("a block header serializes to 80 bytes");
    Ok(ParsedBlock {
        height,
        hash,
        prev_hash: block.header.prev_blockhash,
        size: raw.len(),
        data: BlockData { header, txs },
    })
}

fn tx_data(tx: &Transaction, is_coinbase: bool, in_genesis: bool) -> TxData {
    let spends = if is_coinbase {
        Vec::new()
    } else {
        tx.input
            .iter()
            .map(|i| {
                (
                    i.previous_output.txid.to_byte_array(),
                    i.previous_output.vout,
                )
            })
            .collect()
    };
    let outputs = tx
        .output
        .iter()
        .map(|o| {
            if in_genesis || is_unspendable(&o.script_pubkey) {
                None
            } else {
                Some((script_hashx(&o.script_pubkey), o.value.to_sat()))
            }
        })
        .collect();
    TxData {
        txid: tx.compute_txid().to_byte_array(),
        spends,
        outputs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::blockdata::constants::genesis_block;
    use bitcoin::script::Builder;
    use bitcoin::{
        absolute, transaction, Amount, OutPoint, ScriptBuf, Sequence, TxIn, TxOut, Witness,
    };

    fn hx(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn script_hashx_is_the_sha256_prefix_in_natural_order() {
        // P2PKH script of 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa; its Electrum script hash (the
        // reversed sha256) is 8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161.
        let script =
            ScriptBuf::from_bytes(hx("76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac"));
        let mut electrum = hx("8b01df4e368ea28f8dc0423bcf7a4923e3a12d307c875e47a0cfbf90b5c39161");
        electrum.reverse();
        assert_eq!(script_hashx(&script).to_vec(), electrum[..11].to_vec());
    }

    #[test]
    fn unspendable_scripts() {
        let s = |b: &[u8]| ScriptBuf::from_bytes(b.to_vec());
        assert!(is_unspendable(&s(&[0x6a])));
        assert!(is_unspendable(&s(&[0x6a, 0x04, 1, 2, 3, 4])));
        assert!(is_unspendable(&s(&[0x00, 0x6a])));
        assert!(is_unspendable(&s(&vec![0x51; MAX_SCRIPT_SIZE + 1])));
        assert!(!is_unspendable(&s(&vec![0x51; MAX_SCRIPT_SIZE])));
        assert!(!is_unspendable(&s(&[])));
        assert!(!is_unspendable(&s(&[0x00, 0x14, 0x6a])));
    }

    fn tx(inputs: Vec<OutPoint>, outputs: Vec<(ScriptBuf, u64)>) -> Transaction {
        Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: inputs
                .into_iter()
                .map(|previous_output| TxIn {
                    previous_output,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::MAX,
                    witness: Witness::new(),
                })
                .collect(),
            output: outputs
                .into_iter()
                .map(|(script_pubkey, v)| TxOut {
                    value: Amount::from_sat(v),
                    script_pubkey,
                })
                .collect(),
        }
    }

    fn block_of(prev: BlockHash, txdata: Vec<Transaction>) -> Block {
        let mut block = Block {
            header: bitcoin::block::Header {
                version: bitcoin::block::Version::TWO,
                prev_blockhash: prev,
                merkle_root: bitcoin::TxMerkleNode::all_zeros(),
                time: 1,
                bits: bitcoin::CompactTarget::from_consensus(0x207fffff),
                nonce: 0,
            },
            txdata,
        };
        block.header.merkle_root = block.compute_merkle_root().unwrap();
        block
    }

    #[test]
    fn block_to_block_data() {
        let p2wpkh = ScriptBuf::from_bytes(hx("0014751e76e8199196d454941c45d1b3a323f1433bd6"));
        let op_return = Builder::new()
            .push_opcode(bitcoin::opcodes::all::OP_RETURN)
            .push_slice([7u8; 4])
            .into_script();
        let coinbase = tx(
            vec![OutPoint::null()],
            vec![(p2wpkh.clone(), 50_0000_0000), (op_return.clone(), 0)],
        );
        let prev = OutPoint {
            txid: bitcoin::Txid::from_byte_array([9; 32]),
            vout: 3,
        };
        let spend = tx(
            vec![
                prev,
                OutPoint {
                    txid: coinbase.compute_txid(),
                    vout: 0,
                },
            ],
            vec![(op_return, 5), (p2wpkh.clone(), 12_345)],
        );
        let block = block_of(
            BlockHash::from_byte_array([1; 32]),
            vec![coinbase.clone(), spend.clone()],
        );
        let raw = bitcoin::consensus::serialize(&block);
        let parsed = parse_block(&raw, 7, &block.block_hash()).unwrap();
        assert_eq!(parsed.height, 7);
        assert_eq!(parsed.prev_hash, BlockHash::from_byte_array([1; 32]));
        assert_eq!(parsed.size, raw.len());
        assert_eq!(parsed.data.header.to_vec(), raw[..80].to_vec());
        let key = script_hashx(&p2wpkh);
        assert_eq!(
            parsed.data.txs,
            vec![
                TxData {
                    txid: coinbase.compute_txid().to_byte_array(),
                    spends: vec![],
                    outputs: vec![Some((key, 50_0000_0000)), None],
                },
                TxData {
                    txid: spend.compute_txid().to_byte_array(),
                    spends: vec![([9; 32], 3), (coinbase.compute_txid().to_byte_array(), 0)],
                    outputs: vec![None, Some((key, 12_345))],
                },
            ]
        );
    }

    #[test]
    fn genesis_coinbase_is_not_indexed() {
        let genesis = genesis_block(bitcoin::Network::Regtest);
        let raw = bitcoin::consensus::serialize(&genesis);
        let parsed = parse_block(&raw, 0, &genesis.block_hash()).unwrap();
        assert_eq!(parsed.data.txs.len(), 1);
        assert_eq!(parsed.data.txs[0].outputs, vec![None]);
        assert_eq!(
            parsed.data.txs[0].txid,
            genesis.txdata[0].compute_txid().to_byte_array()
        );
    }

    #[test]
    fn bad_blocks_are_errors_not_panics() {
        let genesis = genesis_block(bitcoin::Network::Regtest);
        let hash = genesis.block_hash();
        let raw = bitcoin::consensus::serialize(&genesis);
        let err = parse_block(&raw[..raw.len() - 1], 5, &hash).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "malformed block {hash} at height 5 from the node: its {} bytes end before \
                 the block does",
                raw.len() - 1
            )
        );
        let mut trailing = raw.clone();
        trailing.push(0);
        assert!(matches!(
            parse_block(&trailing, 5, &hash),
            Err(BlockError::Malformed { .. })
        ));
        assert!(matches!(
            parse_block(&[], 5, &hash),
            Err(BlockError::Malformed { .. })
        ));

        let other = BlockHash::from_byte_array([3; 32]);
        assert_eq!(
            parse_block(&raw, 5, &other).unwrap_err().to_string(),
            format!("the node sent block {hash} when asked for block {other} at height 5")
        );

        // A body that does not match the header: flip a byte inside the coinbase's script.
        let mut damaged = raw.clone();
        let at = raw.len() - 10;
        damaged[at] ^= 1;
        assert_eq!(
            parse_block(&damaged, 5, &hash).unwrap_err().to_string(),
            format!("malformed block {hash} at height 5 from the node: transactions do not match the header's merkle root")
        );
    }
}
