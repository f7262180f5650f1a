//! Server configuration from environment variables, with ElectrumX's names, defaults and
//! error messages. Network tables (genesis hash, RPC port, reorg depth) live in the coin
//! module: here a network is only a name.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use tracing::level_filters::LevelFilter;

use crate::daemon::parse_daemon_urls;
use crate::services::{parse_services, Service, ServiceList};

/// A start-up configuration error; the text names the variable at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

type Result<T> = std::result::Result<T, ConfigError>;

fn err<T>(message: impl Into<String>) -> Result<T> {
    Err(ConfigError(message.into()))
}

/// The Bitcoin network named by `NET`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Network {
    Mainnet,
    Testnet,
    Testnet4,
    Signet,
    Regtest,
}

impl Network {
    pub fn name(self) -> &'static str {
        match self {
            Network::Mainnet => "mainnet",
            Network::Testnet => "testnet",
            Network::Testnet4 => "testnet4",
            Network::Signet => "signet",
            Network::Regtest => "regtest",
        }
    }
}

/// `INDEX_MODE`: what the index stores, fixed when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexMode {
    /// Every txid (32 bytes a transaction): queries read only the index.
    Full,
    /// No txids: queries that need them fetch the blocks holding them from the node.
    Lean,
}

impl IndexMode {
    pub fn name(self) -> &'static str {
        match self {
            IndexMode::Full => "full",
            IndexMode::Lean => "lean",
        }
    }

    pub fn stores_txids(self) -> bool {
        self == IndexMode::Full
    }
}

impl fmt::Display for IndexMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn parse_index_mode(value: &str) -> Result<IndexMode> {
    match value.trim().to_ascii_lowercase().as_str() {
        "full" => Ok(IndexMode::Full),
        "lean" => Ok(IndexMode::Lean),
        _ => err(format!(
            "envvar INDEX_MODE must be full or lean, not '{value}'"
        )),
    }
}

fn parse_daemon_zmq(value: &str) -> Result<crate::zmq::Setting> {
    match crate::zmq::Setting::parse(value) {
        Some(setting) => Ok(setting),
        None => err(format!(
            "envvar DAEMON_ZMQ must be auto, off or tcp://host:port, not '{value}'"
        )),
    }
}

/// `PEER_DISCOVERY`: on (default), off (also when empty) or self.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerDiscovery {
    On,
    Off,
    SelfOnly,
}

/// Everything the server reads from its environment.
#[derive(Clone, Debug)]
pub struct Config {
    pub coin: String,
    pub net: Network,
    pub db_dir: PathBuf,
    /// `DAEMON_URL` as given (a comma-separated list), checked by the node client's parser.
    pub daemon_url: String,
    pub daemon_cookie_file: Option<PathBuf>,
    pub cache_mb: u64,
    pub index_mode: IndexMode,
    /// Bound on a lean index's cache of blocks' txids, in MB.
    pub txid_cache_mb: u64,
    /// `REORG_LIMIT` when set; None means the network's default (200 on mainnet).
    pub reorg_limit: Option<u32>,
    pub daemon_poll_interval_blocks: Duration,
    pub daemon_poll_interval_mempool: Duration,
    /// `DAEMON_ZMQ`: where new-block notifications come from, besides polling.
    pub daemon_zmq: crate::zmq::Setting,
    pub services: Vec<Service>,
    pub report_services: Vec<Service>,
    pub ssl_certfile: Option<PathBuf>,
    pub ssl_keyfile: Option<PathBuf>,
    pub max_recv: usize,
    /// At least 350,000, as ElectrumX enforces: header chunks are almost that large.
    pub max_send: usize,
    pub max_sessions: usize,
    pub request_timeout: Duration,
    pub session_timeout: Duration,
    /// `DROP_CLIENT`, anchored at the start of the client name like Python's `re.match`.
    pub drop_client: Option<Regex>,
    pub banner_file: Option<PathBuf>,
    pub tor_banner_file: Option<PathBuf>,
    pub donation_address: String,
    pub peer_discovery: PeerDiscovery,
    pub peer_announce: bool,
    pub cost_soft_limit: f64,
    pub cost_hard_limit: f64,
    pub request_sleep: Duration,
    pub initial_concurrent: usize,
    pub bandwidth_unit_cost: u64,
    pub log_level: LevelFilter,
    pub anon_logs: bool,
    /// Seconds between session statistics in the log; zero disables.
    pub log_sessions: Duration,
    /// Sessions from the same IPv4 subnet of this prefix length share costs (default 24).
    pub session_group_by_subnet_ipv4: u8,
    /// The same for IPv6 (default 48).
    pub session_group_by_subnet_ipv6: u8,
}

const OBSOLETE: &[&str] = &[
    "MAX_SUBSCRIPTIONS",
    "MAX_SUBS",
    "MAX_SESSION_SUBS",
    "BANDWIDTH_LIMIT",
    "HOST",
    "TCP_PORT",
    "SSL_PORT",
    "RPC_HOST",
    "RPC_PORT",
    "REPORT_HOST",
    "REPORT_TCP_PORT",
    "REPORT_SSL_PORT",
    "REPORT_HOST_TOR",
    "REPORT_TCP_PORT_TOR",
    "REPORT_SSL_PORT_TOR",
];

/// Reads variables through a lookup function so tests need not touch the process environment.
struct Vars<F: Fn(&str) -> Option<String>>(F);

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }

    fn required(&self, name: &str) -> Result<String> {
        self.get(name)
            .ok_or_else(|| ConfigError(format!("required envvar {name} not set")))
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_string())
    }

    /// ElectrumX's boolean: true when set to anything but blanks.
    fn boolean(&self, name: &str, default: bool) -> bool {
        match self.get(name) {
            Some(value) => !value.trim().is_empty(),
            None => default,
        }
    }

    fn integer(&self, name: &str, default: i64) -> Result<i64> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => parse_int(&value).ok_or_else(|| {
                ConfigError(format!(
                    "cannot convert envvar {name} value {value} to an integer"
                ))
            }),
        }
    }

    fn count(&self, name: &str, default: u64) -> Result<u64> {
        let value = self.integer(name, default as i64)?;
        u64::try_from(value)
            .map_err(|_| ConfigError(format!("envvar {name} value {value} must not be negative")))
    }

    fn prefix_len(&self, name: &str, default: u64, max: u64) -> Result<u8> {
        let value = self.count(name, default)?;
        if value > max {
            return err(format!("envvar {name} value {value} must be at most {max}"));
        }
        Ok(value as u8)
    }

    fn path(&self, name: &str) -> Option<PathBuf> {
        self.get(name).filter(|v| !v.is_empty()).map(PathBuf::from)
    }
}

/// Python's `int()` on a string: surrounding blanks and a sign are allowed.
fn parse_int(value: &str) -> Option<i64> {
    let v = value.trim();
    let digits = v.strip_prefix(['+', '-']).unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.strip_prefix('+').unwrap_or(v).parse().ok()
}

fn parse_network(coin: &str, net: &str) -> Result<Network> {
    let network = match net.to_ascii_lowercase().as_str() {
        "mainnet" => Network::Mainnet,
        "testnet" => Network::Testnet,
        "testnet4" => Network::Testnet4,
        "signet" => Network::Signet,
        "regtest" => Network::Regtest,
        _ => return err(format!("unknown coin {coin} and network {net} combination")),
    };
    if !coin.eq_ignore_ascii_case("bitcoin") {
        return err(format!("unknown coin {coin} and network {net} combination"));
    }
    Ok(network)
}

fn parse_log_level(value: &str) -> Result<LevelFilter> {
    Ok(match value.trim().to_ascii_lowercase().as_str() {
        "trace" | "notset" => LevelFilter::TRACE,
        "debug" => LevelFilter::DEBUG,
        "info" => LevelFilter::INFO,
        "warning" | "warn" => LevelFilter::WARN,
        "error" | "critical" | "fatal" => LevelFilter::ERROR,
        _ => {
            return err(format!(
            "cannot parse envvar LOG_LEVEL value {value}: expected debug, info, warning or error"
        ))
        }
    })
}

/// ElectrumX's message, prefixed with the variable when it does not name it.
fn naming(name: &str, message: String) -> ConfigError {
    if message.contains(name) {
        ConfigError(message)
    } else {
        ConfigError(format!("{name}: {message}"))
    }
}

/// Banner paths are relative to DB_DIRECTORY (ElectrumX runs from there).
fn under_db_dir(db_dir: &Path, path: Option<PathBuf>) -> Option<PathBuf> {
    path.map(|p| if p.is_relative() { db_dir.join(p) } else { p })
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|name| match std::env::var(name) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => None,
            // Reported as unparsable by whichever rule reads it.
            Err(std::env::VarError::NotUnicode(raw)) => Some(raw.to_string_lossy().into_owned()),
        })
    }

    /// Reads variables from a list of pairs (tests, tools).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Result<Config> {
        Config::from_lookup(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let vars = Vars(lookup);
        let obsolete: Vec<String> = OBSOLETE
            .iter()
            .filter(|name| vars.get(name).is_some_and(|v| !v.is_empty()))
            .map(|name| format!("'{name}'"))
            .collect();
        if !obsolete.is_empty() {
            return err(format!(
                "remove obsolete environment variables [{}]",
                obsolete.join(", ")
            ));
        }

        let db_dir = vars.required("DB_DIRECTORY")?;
        if db_dir.trim().is_empty() {
            // Else the index would go into whatever directory the server was started in.
            return err("envvar DB_DIRECTORY is empty: set it to the index's directory");
        }
        let db_dir = PathBuf::from(db_dir);
        let daemon_url = vars.required("DAEMON_URL")?;
        // Syntax only: the default port is the network's, applied when the node client starts.
        parse_daemon_urls(std::slice::from_ref(&daemon_url), 0)
            .map_err(|e| naming("DAEMON_URL", e.to_string()))?;
        let coin = vars.string("COIN", "Bitcoin").trim().to_string();
        let net = parse_network(&coin, vars.string("NET", "mainnet").trim())?;

        let peer_discovery = match vars
            .string("PEER_DISCOVERY", "on")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "off" | "" => PeerDiscovery::Off,
            "self" => PeerDiscovery::SelfOnly,
            _ => PeerDiscovery::On,
        };
        let peer_announce = vars.boolean("PEER_ANNOUNCE", true);

        let banner_file = under_db_dir(&db_dir, vars.path("BANNER_FILE"));
        let tor_banner_file =
            under_db_dir(&db_dir, vars.path("TOR_BANNER_FILE")).or_else(|| banner_file.clone());
        let drop_client = match vars.get("DROP_CLIENT") {
            None => None,
            Some(pattern) => Some(Regex::new(&format!("^(?:{pattern})")).map_err(|e| {
                ConfigError(format!(
                    "cannot parse envvar DROP_CLIENT value {pattern}: {e}"
                ))
            })?),
        };
        let reorg_limit = match vars.get("REORG_LIMIT") {
            None => None,
            Some(_) => {
                let value = vars.count("REORG_LIMIT", 0)?;
                Some(u32::try_from(value).map_err(|_| {
                    ConfigError(format!("envvar REORG_LIMIT value {value} is too large"))
                })?)
            }
        };

        let cost_soft_limit = vars.count("COST_SOFT_LIMIT", 1000)?;
        let mut cost_hard_limit = vars.count("COST_HARD_LIMIT", 10000)?;
        if cost_hard_limit < cost_soft_limit {
            return err(format!(
                "COST_HARD_LIMIT must be >= COST_SOFT_LIMIT. got (COST_HARD_LIMIT={cost_hard_limit} and COST_SOFT_LIMIT={cost_soft_limit})"
            ));
        }
        // Equal limits (other than both zero) leave no throttling range: bump like ElectrumX.
        if cost_hard_limit == cost_soft_limit && cost_soft_limit > 0 {
            cost_hard_limit += 1;
        }
        let bandwidth_unit_cost = vars.count("BANDWIDTH_UNIT_COST", 5000)?;
        if bandwidth_unit_cost == 0 {
            return err("envvar BANDWIDTH_UNIT_COST value 0 must be positive");
        }

        let services = parse_services(&vars.string("SERVICES", ""), ServiceList::Listen)
            .map_err(|e| naming("SERVICES", e))?;
        let (mut ssl_certfile, mut ssl_keyfile) = (None, None);
        if services.iter().any(|s| s.protocol.is_tls()) {
            ssl_certfile = Some(PathBuf::from(vars.required("SSL_CERTFILE")?));
            ssl_keyfile = Some(PathBuf::from(vars.required("SSL_KEYFILE")?));
        }
        let report_services = parse_services(
            &vars.string("REPORT_SERVICES", ""),
            ServiceList::Report {
                announce: peer_announce,
            },
        )
        .map_err(|e| naming("REPORT_SERVICES", e))?;

        Ok(Config {
            coin,
            net,
            db_dir,
            daemon_url,
            daemon_cookie_file: vars.path("DAEMON_COOKIE_FILE"),
            cache_mb: vars.count("CACHE_MB", 1200)?,
            index_mode: parse_index_mode(&vars.string("INDEX_MODE", "full"))?,
            txid_cache_mb: vars.count("TXID_CACHE_MB", crate::txids::DEFAULT_CACHE_MB as u64)?,
            reorg_limit,
            daemon_poll_interval_blocks: Duration::from_millis(
                vars.count("DAEMON_POLL_INTERVAL_BLOCKS", 1000)?,
            ),
            // ElectrumX polls every 5 s; wallets expect to see a broadcast within a second or two.
            daemon_poll_interval_mempool: Duration::from_millis(
                vars.count("DAEMON_POLL_INTERVAL_MEMPOOL", 1000)?,
            ),
            daemon_zmq: parse_daemon_zmq(&vars.string("DAEMON_ZMQ", "auto"))?,
            services,
            report_services,
            ssl_certfile,
            ssl_keyfile,
            max_recv: vars.count("MAX_RECV", 5_000_000)? as usize,
            max_send: (vars.count("MAX_SEND", 1_000_000)? as usize).max(350_000),
            max_sessions: vars.count("MAX_SESSIONS", 1000)? as usize,
            request_timeout: Duration::from_secs(vars.count("REQUEST_TIMEOUT", 30)?),
            session_timeout: Duration::from_secs(vars.count("SESSION_TIMEOUT", 600)?),
            drop_client,
            banner_file,
            tor_banner_file,
            donation_address: vars.string("DONATION_ADDRESS", ""),
            peer_discovery,
            peer_announce,
            cost_soft_limit: cost_soft_limit as f64,
            cost_hard_limit: cost_hard_limit as f64,
            request_sleep: Duration::from_millis(vars.count("REQUEST_SLEEP", 2500)?),
            initial_concurrent: vars.count("INITIAL_CONCURRENT", 10)? as usize,
            bandwidth_unit_cost,
            log_level: parse_log_level(&vars.string("LOG_LEVEL", "info"))?,
            anon_logs: vars.boolean("ANON_LOGS", false),
            log_sessions: Duration::from_secs(vars.count("LOG_SESSIONS", 3600)?),
            session_group_by_subnet_ipv4: vars.prefix_len(
                "SESSION_GROUP_BY_SUBNET_IPV4",
                24,
                32,
            )?,
            session_group_by_subnet_ipv6: vars.prefix_len(
                "SESSION_GROUP_BY_SUBNET_IPV6",
                48,
                128,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::Protocol;

    const BASE: &[(&str, &str)] = &[("DB_DIRECTORY", "/db"), ("DAEMON_URL", "u:p@127.0.0.1")];

    fn with(extra: &[(&str, &str)]) -> Result<Config> {
        let mut pairs: Vec<(&str, &str)> = extra.to_vec();
        pairs.extend(
            BASE.iter()
                .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k)),
        );
        Config::from_pairs(&pairs)
    }

    fn error(extra: &[(&str, &str)]) -> String {
        with(extra).unwrap_err().0
    }

    #[test]
    fn defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.coin, "Bitcoin");
        assert_eq!(c.net, Network::Mainnet);
        assert_eq!(c.db_dir, PathBuf::from("/db"));
        assert_eq!(c.cache_mb, 1200);
        assert_eq!((c.index_mode, c.txid_cache_mb), (IndexMode::Full, 64));
        assert_eq!(c.reorg_limit, None);
        assert_eq!(c.daemon_poll_interval_blocks, Duration::from_millis(1000));
        assert_eq!(c.daemon_poll_interval_mempool, Duration::from_millis(1000));
        assert!(c.services.is_empty() && c.report_services.is_empty());
        assert_eq!(
            (c.max_recv, c.max_send, c.max_sessions),
            (5_000_000, 1_000_000, 1000)
        );
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.session_timeout, Duration::from_secs(600));
        assert!(c.drop_client.is_none() && c.banner_file.is_none() && c.tor_banner_file.is_none());
        assert_eq!(c.donation_address, "");
        assert_eq!(c.peer_discovery, PeerDiscovery::On);
        assert!(c.peer_announce);
        assert_eq!((c.cost_soft_limit, c.cost_hard_limit), (1000.0, 10000.0));
        assert_eq!(c.request_sleep, Duration::from_millis(2500));
        assert_eq!((c.initial_concurrent, c.bandwidth_unit_cost), (10, 5000));
        assert_eq!(c.log_level, LevelFilter::INFO);
        assert!(!c.anon_logs);
        assert_eq!(c.log_sessions, Duration::from_secs(3600));
        assert!(c.daemon_cookie_file.is_none());
    }

    #[test]
    fn required_variables() {
        assert_eq!(
            Config::from_pairs(&[("DAEMON_URL", "x@y")]).unwrap_err().0,
            "required envvar DB_DIRECTORY not set"
        );
        assert_eq!(
            Config::from_pairs(&[("DB_DIRECTORY", "/d")]).unwrap_err().0,
            "required envvar DAEMON_URL not set"
        );
        assert_eq!(
            Config::from_pairs(&[("DB_DIRECTORY", " "), ("DAEMON_URL", "u:p@h")])
                .unwrap_err()
                .0,
            "envvar DB_DIRECTORY is empty: set it to the index's directory"
        );
    }

    #[test]
    fn integers() {
        let c = with(&[
            ("CACHE_MB", " 20 "),
            ("MAX_RECV", "+7"),
            ("REORG_LIMIT", "50"),
            ("REQUEST_TIMEOUT", "3"),
        ])
        .unwrap();
        assert_eq!((c.cache_mb, c.max_recv, c.reorg_limit), (20, 7, Some(50)));
        assert_eq!(c.request_timeout, Duration::from_secs(3));
        assert_eq!(
            error(&[("CACHE_MB", "1.5")]),
            "cannot convert envvar CACHE_MB value 1.5 to an integer"
        );
        assert_eq!(
            error(&[("MAX_SESSIONS", "")]),
            "cannot convert envvar MAX_SESSIONS value  to an integer"
        );
        assert_eq!(
            error(&[("SESSION_TIMEOUT", "-1")]),
            "envvar SESSION_TIMEOUT value -1 must not be negative"
        );
        assert_eq!(
            error(&[("REORG_LIMIT", "5000000000")]),
            "envvar REORG_LIMIT value 5000000000 is too large"
        );
        assert_eq!(
            error(&[("BANDWIDTH_UNIT_COST", "0")]),
            "envvar BANDWIDTH_UNIT_COST value 0 must be positive"
        );
        let c = with(&[
            ("DAEMON_POLL_INTERVAL_BLOCKS", "250"),
            ("DAEMON_POLL_INTERVAL_MEMPOOL", "9"),
        ])
        .unwrap();
        assert_eq!(c.daemon_poll_interval_blocks, Duration::from_millis(250));
        assert_eq!(c.daemon_poll_interval_mempool, Duration::from_millis(9));
    }

    #[test]
    fn index_mode() {
        let c = with(&[("INDEX_MODE", " Lean "), ("TXID_CACHE_MB", "8")]).unwrap();
        assert_eq!((c.index_mode, c.txid_cache_mb), (IndexMode::Lean, 8));
        assert!(!c.index_mode.stores_txids() && IndexMode::Full.stores_txids());
        assert_eq!(
            with(&[("INDEX_MODE", "FULL")]).unwrap().index_mode,
            IndexMode::Full
        );
        assert_eq!(
            error(&[("INDEX_MODE", "pruned")]),
            "envvar INDEX_MODE must be full or lean, not 'pruned'"
        );
        assert_eq!(
            error(&[("INDEX_MODE", "")]),
            "envvar INDEX_MODE must be full or lean, not ''"
        );
        assert_eq!(
            error(&[("TXID_CACHE_MB", "x")]),
            "cannot convert envvar TXID_CACHE_MB value x to an integer"
        );
    }

    #[test]
    fn daemon_zmq() {
        use crate::zmq::{Endpoint, Setting};
        assert_eq!(with(&[]).unwrap().daemon_zmq, Setting::Auto);
        assert_eq!(
            with(&[("DAEMON_ZMQ", " OFF ")]).unwrap().daemon_zmq,
            Setting::Off
        );
        assert_eq!(
            with(&[("DAEMON_ZMQ", "tcp://10.0.0.2:28332")])
                .unwrap()
                .daemon_zmq,
            Setting::Endpoint(Endpoint {
                host: "10.0.0.2".into(),
                port: 28332
            })
        );
        assert_eq!(
            error(&[("DAEMON_ZMQ", "ipc:///tmp/zmq")]),
            "envvar DAEMON_ZMQ must be auto, off or tcp://host:port, not 'ipc:///tmp/zmq'"
        );
    }

    #[test]
    fn max_send_floor() {
        assert_eq!(with(&[("MAX_SEND", "1000")]).unwrap().max_send, 350_000);
        assert_eq!(
            with(&[("MAX_SEND", "2000000")]).unwrap().max_send,
            2_000_000
        );
    }

    #[test]
    fn coin_and_network() {
        assert_eq!(
            with(&[("NET", "Regtest"), ("COIN", "bitcoin")])
                .unwrap()
                .net,
            Network::Regtest
        );
        for (name, net) in [
            ("testnet", Network::Testnet),
            ("testnet4", Network::Testnet4),
            ("signet", Network::Signet),
        ] {
            assert_eq!(with(&[("NET", name)]).unwrap().net, net);
        }
        assert_eq!(
            error(&[("NET", "foo")]),
            "unknown coin Bitcoin and network foo combination"
        );
        assert_eq!(
            error(&[("COIN", "Litecoin")]),
            "unknown coin Litecoin and network mainnet combination"
        );
    }

    #[test]
    fn daemon_urls() {
        let c = with(&[("DAEMON_URL", "http://u:p@h1:8332/, u:p@[::1],h3")]).unwrap();
        assert_eq!(c.daemon_url, "http://u:p@h1:8332/, u:p@[::1],h3");
        // Bad entries are start-up errors naming DAEMON_URL, in the node client's words.
        // The password never shows.
        for (bad, shown, why) in [
            ("ftp://h", "ftp://h", "only http:// URLs are supported"),
            (
                "https://a:b@h",
                "https://a:***@h",
                "https is not supported (bitcoind serves plain HTTP)",
            ),
            ("h:x", "h:x", "bad port \"x\""),
            ("h:0", "h:0", "bad port \"0\""),
            ("h:99999", "h:99999", "bad port \"99999\""),
            ("@h", "@h", "expected user:password before '@'"),
            ("u:p@[zz]:1", "u:***@[zz]:1", "bad IPv6 address \"zz\""),
        ] {
            assert_eq!(
                error(&[("DAEMON_URL", &format!("h0,{bad}"))]),
                format!("bad DAEMON_URL entry {shown:?}: {why}"),
                "{bad}"
            );
        }
        assert_eq!(
            error(&[("DAEMON_URL", "")]),
            "DAEMON_URL is empty: set it to user:password@host:port"
        );
        let c = with(&[("DAEMON_COOKIE_FILE", "/node/.cookie")]).unwrap();
        assert_eq!(c.daemon_cookie_file, Some(PathBuf::from("/node/.cookie")));
    }

    #[test]
    fn services_and_tls_files() {
        let c = with(&[
            ("SERVICES", "tcp://:50001,rpc://"),
            ("REPORT_SERVICES", "tcp://e.com:50001"),
        ])
        .unwrap();
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[1].protocol, Protocol::Rpc);
        assert_eq!(c.report_services[0].to_string(), "tcp://e.com:50001");
        assert_eq!(
            error(&[("SERVICES", "ssl://:50002")]),
            "required envvar SSL_CERTFILE not set"
        );
        assert_eq!(
            error(&[("SERVICES", "wss://:50004"), ("SSL_CERTFILE", "c")]),
            "required envvar SSL_KEYFILE not set"
        );
        let c = with(&[
            ("SERVICES", "ssl://:50002"),
            ("SSL_CERTFILE", "c.pem"),
            ("SSL_KEYFILE", "k.pem"),
        ])
        .unwrap();
        assert_eq!(c.ssl_certfile, Some(PathBuf::from("c.pem")));
        assert_eq!(c.ssl_keyfile, Some(PathBuf::from("k.pem")));
        assert_eq!(
            error(&[("SERVICES", "tcp://:1,ssl://:1")]),
            "SERVICES: address all_interfaces:1 has multiple services"
        );
        assert_eq!(
            error(&[("REPORT_SERVICES", "tcp://e.com")]),
            "REPORT_SERVICES: \"tcp://e.com\" invalid: invalid port: "
        );
        assert_eq!(
            error(&[("SERVICES", "tcp://a.onion:1")]),
            "bad host for SERVICES: tcp://a.onion:1"
        );
        assert_eq!(
            error(&[("REPORT_SERVICES", "rpc://e.com:1")]),
            "bad protocol for REPORT_SERVICES: rpc"
        );
        // Private addresses may be reported only when not announcing to peers.
        assert_eq!(
            error(&[("REPORT_SERVICES", "tcp://192.168.1.2:1")]),
            "bad IP address for REPORT_SERVICES: 192.168.1.2"
        );
        assert!(with(&[
            ("REPORT_SERVICES", "tcp://192.168.1.2:1"),
            ("PEER_ANNOUNCE", "")
        ])
        .is_ok());
    }

    #[test]
    fn drop_client_is_anchored_regex() {
        let c = with(&[("DROP_CLIENT", r"1\.[0-2]\.\d+")]).unwrap();
        let re = c.drop_client.unwrap();
        assert!(re.is_match("1.2.3"));
        assert!(re.is_match("1.0.1 extra"));
        assert!(!re.is_match("electrum 1.2.3"));
        let e = error(&[("DROP_CLIENT", "(")]);
        assert!(
            e.starts_with("cannot parse envvar DROP_CLIENT value (: "),
            "{e}"
        );
    }

    #[test]
    fn banners_relative_to_db_directory() {
        let c = with(&[("BANNER_FILE", "banner.txt")]).unwrap();
        assert_eq!(c.banner_file, Some(PathBuf::from("/db/banner.txt")));
        assert_eq!(c.tor_banner_file, c.banner_file);
        let c = with(&[("BANNER_FILE", "/etc/b"), ("TOR_BANNER_FILE", "tor")]).unwrap();
        assert_eq!(c.banner_file, Some(PathBuf::from("/etc/b")));
        assert_eq!(c.tor_banner_file, Some(PathBuf::from("/db/tor")));
        let c = with(&[("DONATION_ADDRESS", "bc1qxyz")]).unwrap();
        assert_eq!(c.donation_address, "bc1qxyz");
    }

    #[test]
    fn peer_settings() {
        assert_eq!(
            with(&[("PEER_DISCOVERY", "OFF")]).unwrap().peer_discovery,
            PeerDiscovery::Off
        );
        assert_eq!(
            with(&[("PEER_DISCOVERY", "")]).unwrap().peer_discovery,
            PeerDiscovery::Off
        );
        assert_eq!(
            with(&[("PEER_DISCOVERY", " Self")]).unwrap().peer_discovery,
            PeerDiscovery::SelfOnly
        );
        assert_eq!(
            with(&[("PEER_DISCOVERY", "yes")]).unwrap().peer_discovery,
            PeerDiscovery::On
        );
        assert!(!with(&[("PEER_ANNOUNCE", " ")]).unwrap().peer_announce);
        // ElectrumX's booleans: any non-blank value is true, even "0".
        assert!(with(&[("PEER_ANNOUNCE", "0")]).unwrap().peer_announce);
        assert!(with(&[("ANON_LOGS", "1")]).unwrap().anon_logs);
    }

    #[test]
    fn cost_limits() {
        let c = with(&[("COST_SOFT_LIMIT", "50"), ("COST_HARD_LIMIT", "50")]).unwrap();
        assert_eq!((c.cost_soft_limit, c.cost_hard_limit), (50.0, 51.0));
        let c = with(&[("COST_SOFT_LIMIT", "0"), ("COST_HARD_LIMIT", "0")]).unwrap();
        assert_eq!((c.cost_soft_limit, c.cost_hard_limit), (0.0, 0.0));
        assert_eq!(
            error(&[("COST_SOFT_LIMIT", "10"), ("COST_HARD_LIMIT", "5")]),
            "COST_HARD_LIMIT must be >= COST_SOFT_LIMIT. got (COST_HARD_LIMIT=5 and COST_SOFT_LIMIT=10)"
        );
        let c = with(&[
            ("REQUEST_SLEEP", "10"),
            ("INITIAL_CONCURRENT", "3"),
            ("BANDWIDTH_UNIT_COST", "7"),
        ])
        .unwrap();
        assert_eq!(
            (c.request_sleep, c.initial_concurrent, c.bandwidth_unit_cost),
            (Duration::from_millis(10), 3, 7)
        );
    }

    #[test]
    fn session_groups() {
        let c = with(&[]).unwrap();
        assert_eq!(
            (
                c.session_group_by_subnet_ipv4,
                c.session_group_by_subnet_ipv6
            ),
            (24, 48)
        );
        let c = with(&[
            ("SESSION_GROUP_BY_SUBNET_IPV4", "16"),
            ("SESSION_GROUP_BY_SUBNET_IPV6", "64"),
        ])
        .unwrap();
        assert_eq!(
            (
                c.session_group_by_subnet_ipv4,
                c.session_group_by_subnet_ipv6
            ),
            (16, 64)
        );
        assert_eq!(
            error(&[("SESSION_GROUP_BY_SUBNET_IPV4", "33")]),
            "envvar SESSION_GROUP_BY_SUBNET_IPV4 value 33 must be at most 32"
        );
        assert_eq!(
            error(&[("SESSION_GROUP_BY_SUBNET_IPV6", "129")]),
            "envvar SESSION_GROUP_BY_SUBNET_IPV6 value 129 must be at most 128"
        );
    }

    #[test]
    fn log_level() {
        assert_eq!(
            with(&[("LOG_LEVEL", "DEBUG")]).unwrap().log_level,
            LevelFilter::DEBUG
        );
        assert_eq!(
            with(&[("LOG_LEVEL", "warning")]).unwrap().log_level,
            LevelFilter::WARN
        );
        assert_eq!(
            with(&[("LOG_LEVEL", "critical")]).unwrap().log_level,
            LevelFilter::ERROR
        );
        assert_eq!(
            error(&[("LOG_LEVEL", "loud")]),
            "cannot parse envvar LOG_LEVEL value loud: expected debug, info, warning or error"
        );
    }

    #[test]
    fn obsolete_variables_rejected() {
        assert_eq!(
            error(&[("TCP_PORT", "1"), ("HOST", "h")]),
            "remove obsolete environment variables ['HOST', 'TCP_PORT']"
        );
        assert!(with(&[("TCP_PORT", "")]).is_ok());
    }
}
