//! Coins and networks Ferrum can index: one const table entry per (COIN, NET).
//!
//! Everything that differs between networks lives here, so supporting another Bitcoin-like
//! chain is a new entry in [`NETWORKS`], not a change across the server.

use std::fmt;

/// One network of one coin, as named by ElectrumX's `COIN` and `NET` settings.
#[derive(Debug, PartialEq, Eq)]
pub struct Network {
    /// `COIN` value (case-insensitive match), e.g. "Bitcoin".
    pub coin: &'static str,
    /// `NET` value, e.g. "mainnet".
    pub net: &'static str,
    /// Hash of block 0 as the node displays it (reversed byte order).
    pub genesis_hash: &'static str,
    /// The node's default JSON-RPC port, used when a `DAEMON_URL` has none.
    pub rpc_port: u16,
    /// Default Electrum ports (TCP, SSL), as Electrum clients assume them.
    pub tcp_port: u16,
    pub ssl_port: u16,
    /// Default `REORG_LIMIT`: undo information is kept for this many blocks.
    pub reorg_limit: u32,
    /// Subdirectory of the node's data directory holding `.cookie` ("" on mainnet).
    pub datadir_subdir: &'static str,
    /// Address parameters, for validating e.g. `DONATION_ADDRESS`.
    pub chain: bitcoin::Network,
    pub bech32_hrp: &'static str,
    pub p2pkh_prefix: u8,
    pub p2sh_prefix: u8,
}

/// Every supported network. The first entry for a coin is its default `NET`.
pub const NETWORKS: &[Network] = &[
    Network {
        coin: "Bitcoin",
        net: "mainnet",
        genesis_hash: "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
        rpc_port: 8332,
        tcp_port: 50001,
        ssl_port: 50002,
        reorg_limit: 200,
        datadir_subdir: "",
        chain: bitcoin::Network::Bitcoin,
        bech32_hrp: "bc",
        p2pkh_prefix: 0x00,
        p2sh_prefix: 0x05,
    },
    Network {
        coin: "Bitcoin",
        net: "testnet",
        genesis_hash: "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
        rpc_port: 18332,
        tcp_port: 51001,
        ssl_port: 51002,
        reorg_limit: 8000,
        datadir_subdir: "testnet3",
        chain: bitcoin::Network::Testnet,
        bech32_hrp: "tb",
        p2pkh_prefix: 0x6f,
        p2sh_prefix: 0xc4,
    },
    Network {
        coin: "Bitcoin",
        net: "testnet4",
        genesis_hash: "00000000da84f2bafbbc53dee25a72ae507ff4914b867c565be350b0da8bf043",
        rpc_port: 48332,
        tcp_port: 51001,
        ssl_port: 51002,
        reorg_limit: 8000,
        datadir_subdir: "testnet4",
        chain: bitcoin::Network::Testnet4,
        bech32_hrp: "tb",
        p2pkh_prefix: 0x6f,
        p2sh_prefix: 0xc4,
    },
    Network {
        coin: "Bitcoin",
        net: "signet",
        genesis_hash: "00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6",
        rpc_port: 38332,
        tcp_port: 51001,
        ssl_port: 51002,
        reorg_limit: 8000,
        datadir_subdir: "signet",
        chain: bitcoin::Network::Signet,
        bech32_hrp: "tb",
        p2pkh_prefix: 0x6f,
        p2sh_prefix: 0xc4,
    },
    Network {
        coin: "Bitcoin",
        net: "regtest",
        genesis_hash: "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206",
        rpc_port: 18443,
        tcp_port: 51001,
        ssl_port: 51002,
        reorg_limit: 8000,
        datadir_subdir: "regtest",
        chain: bitcoin::Network::Regtest,
        bech32_hrp: "bcrt",
        p2pkh_prefix: 0x6f,
        p2sh_prefix: 0xc4,
    },
];

impl Network {
    /// Finds the network for `COIN` and `NET` (case-insensitive); `net` None = the coin's
    /// first (default) network, as ElectrumX defaults `NET` to mainnet.
    pub fn lookup(coin: &str, net: Option<&str>) -> Result<&'static Network, UnknownNetwork> {
        let mut of_coin = NETWORKS
            .iter()
            .filter(|n| n.coin.eq_ignore_ascii_case(coin));
        let found = match net {
            None => of_coin.next(),
            Some(net) => of_coin.find(|n| n.net.eq_ignore_ascii_case(net)),
        };
        found.ok_or_else(|| UnknownNetwork {
            coin: coin.to_string(),
            net: net.map(str::to_string),
        })
    }

    /// The genesis hash as a `BlockHash`.
    pub fn genesis(&self) -> bitcoin::BlockHash {
        // The table is const and covered by a unit test, so this parse cannot fail.
        self.genesis_hash
            .parse()
            .expect("valid genesis hash in coin table")
    }

    /// What the store records to recognise the network it indexes, e.g. "Bitcoin regtest".
    pub fn db_name(&self) -> String {
        format!("{} {}", self.coin, self.net)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.coin, self.net)
    }
}

/// `COIN`/`NET` name no table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownNetwork {
    pub coin: String,
    pub net: Option<String>,
}

impl fmt::Display for UnknownNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known: Vec<String> = NETWORKS.iter().map(|n| n.db_name()).collect();
        match &self.net {
            Some(net) => write!(f, "unknown COIN/NET {} {}", self.coin, net)?,
            None => write!(f, "unknown COIN {}", self.coin)?,
        }
        write!(f, " (known: {})", known.join(", "))
    }
}

impl std::error::Error for UnknownNetwork {}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::blockdata::constants::genesis_block;

    #[test]
    fn genesis_hashes_match_the_bitcoin_crate() {
        for n in NETWORKS {
            assert_eq!(n.genesis(), genesis_block(n.chain).block_hash(), "{n}");
        }
    }

    #[test]
    fn address_parameters_match_the_bitcoin_crate() {
        use bitcoin::hashes::Hash;
        use bitcoin::{Address, PubkeyHash, ScriptHash};
        for n in NETWORKS {
            let p2pkh = Address::p2pkh(PubkeyHash::all_zeros(), n.chain).to_string();
            let expected =
                bitcoin::base58::encode_check(&[&[n.p2pkh_prefix][..], &[0; 20]].concat());
            assert_eq!(p2pkh, expected, "{n}");
            let p2sh = Address::p2sh_from_hash(ScriptHash::all_zeros(), n.chain).to_string();
            let expected =
                bitcoin::base58::encode_check(&[&[n.p2sh_prefix][..], &[0; 20]].concat());
            assert_eq!(p2sh, expected, "{n}");
            let segwit = Address::p2wsh(bitcoin::Script::new(), n.chain);
            assert!(
                segwit
                    .to_string()
                    .starts_with(&format!("{}1", n.bech32_hrp)),
                "{n}"
            );
        }
    }

    #[test]
    fn lookup_is_case_insensitive_and_defaults_to_mainnet() {
        assert_eq!(Network::lookup("bitcoin", None).unwrap().net, "mainnet");
        assert_eq!(
            Network::lookup("BITCOIN", Some("Regtest"))
                .unwrap()
                .rpc_port,
            18443
        );
        assert_eq!(
            Network::lookup("Bitcoin", Some("testnet4"))
                .unwrap()
                .rpc_port,
            48332
        );
        assert_eq!(
            Network::lookup("Bitcoin", Some("signet")).unwrap().rpc_port,
            38332
        );
        assert_eq!(
            Network::lookup("Bitcoin", Some("testnet"))
                .unwrap()
                .reorg_limit,
            8000
        );
    }

    #[test]
    fn unknown_network_names_the_known_ones() {
        let err = Network::lookup("Bitcoin", Some("moonnet")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown COIN/NET Bitcoin moonnet (known: Bitcoin mainnet, Bitcoin testnet, \
             Bitcoin testnet4, Bitcoin signet, Bitcoin regtest)"
        );
        let err = Network::lookup("Dogecoin", None).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("unknown COIN Dogecoin (known: "));
    }
}
