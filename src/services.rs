//! Service addresses (`SERVICES`, `REPORT_SERVICES`): `protocol://host:port`, parsed and
//! validated the way ElectrumX (aiorpcx's `Service`) does, with its error messages.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// A transport a service is offered on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Ssl,
    Ws,
    Wss,
    /// The local admin JSON-RPC (ElectrumX's LocalRPC).
    Rpc,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Ssl => "ssl",
            Protocol::Ws => "ws",
            Protocol::Wss => "wss",
            Protocol::Rpc => "rpc",
        }
    }

    fn from_name(name: &str) -> Option<Protocol> {
        Some(match name {
            "tcp" => Protocol::Tcp,
            "ssl" => Protocol::Ssl,
            "ws" => Protocol::Ws,
            "wss" => Protocol::Wss,
            "rpc" => Protocol::Rpc,
            _ => return None,
        })
    }

    /// Whether the protocol needs `SSL_CERTFILE` and `SSL_KEYFILE`.
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::Wss)
    }

    /// Whether messages travel as WebSocket messages rather than newline-framed lines.
    pub fn is_websocket(self) -> bool {
        matches!(self, Protocol::Ws | Protocol::Wss)
    }
}

/// The host part of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// Host left empty in `SERVICES`: listen on every interface.
    AllInterfaces,
    Ip(IpAddr),
    Name(String),
}

impl Host {
    /// The host as `server.features` reports it (IPv6 without brackets).
    pub fn features_key(&self) -> String {
        match self {
            Host::AllInterfaces => "all_interfaces".to_string(),
            Host::Ip(ip) => ip.to_string(),
            Host::Name(name) => name.clone(),
        }
    }
}

/// One `protocol://host:port` service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Service {
    pub protocol: Protocol,
    pub host: Host,
    pub port: u16,
}

impl Service {
    /// The `host:port` part, as ElectrumX prints it.
    pub fn address(&self) -> String {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            host => format!("{}:{}", host.features_key(), self.port),
        }
    }

    /// The address to bind: every interface is the IPv6 wildcard when the system has it,
    /// otherwise IPv4's; a name is resolved by the caller.
    pub fn bind_host(&self) -> String {
        match &self.host {
            Host::AllInterfaces => "0.0.0.0".to_string(),
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            Host::Ip(ip) => ip.to_string(),
            Host::Name(name) => name.clone(),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.protocol.name(), self.address())
    }
}

/// Which list is being parsed: they differ in defaults and in what they forbid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceList {
    /// `SERVICES`: empty host means all interfaces; `rpc` defaults to localhost:8000.
    Listen,
    /// `REPORT_SERVICES`: nothing defaulted; no rpc, localhost or special IPs.
    Report {
        /// PEER_ANNOUNCE: private addresses are rejected only when announcing.
        announce: bool,
    },
}

const RPC_DEFAULT_PORT: &str = "8000";

/// Parses a comma-separated services list; empty items are skipped as ElectrumX does.
pub fn parse_services(text: &str, kind: ServiceList) -> Result<Vec<Service>, String> {
    let mut result: Vec<Service> = Vec::new();
    for item in text.split(',').filter(|item| !item.is_empty()) {
        let service = parse_one(item, kind).map_err(|e| format!("\"{item}\" invalid: {e}"))?;
        result.push(service);
    }
    for (i, service) in result.iter().enumerate() {
        let same_address =
            |other: &Service| other.host == service.host && other.port == service.port;
        if result[..i].iter().any(same_address) {
            continue; // already reported with its first occurrence
        }
        if result[i + 1..].iter().any(same_address) {
            return Err(format!(
                "address {} has multiple services",
                service.address()
            ));
        }
    }
    for service in &result {
        check_list_rules(service, kind)?;
    }
    Ok(result)
}

fn check_list_rules(service: &Service, kind: ServiceList) -> Result<(), String> {
    match kind {
        ServiceList::Listen => {
            if matches!(&service.host, Host::Name(name) if name.ends_with(".onion")) {
                return Err(format!("bad host for SERVICES: {service}"));
            }
        }
        ServiceList::Report { announce } => {
            if service.protocol == Protocol::Rpc {
                return Err("bad protocol for REPORT_SERVICES: rpc".to_string());
            }
            match &service.host {
                Host::Ip(ip)
                    if ip.is_multicast() || ip.is_unspecified() || (is_private(ip) && announce) =>
                {
                    return Err(format!("bad IP address for REPORT_SERVICES: {ip}"));
                }
                Host::Name(name) if name.eq_ignore_ascii_case("localhost") => {
                    return Err(format!("bad host for REPORT_SERVICES: {name}"));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Python's `ip_address.is_private`: RFC 1918, loopback, link-local and the other
/// reserved ranges of the IANA special-purpose registries.
pub(crate) fn is_private(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || o[0] == 0
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 192 && o[1] == 0 && o[2] == 2)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0] == 198 && o[1] == 51 && o[2] == 100)
                || (o[0] == 203 && o[1] == 0 && o[2] == 113)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || s[0] == 0x2001 && s[1] < 0x200
                || (s[0] == 0x2001 && s[1] == 0xdb8)
                || (s[0] == 0x100 && s[1] == 0 && s[2] == 0 && s[3] == 0)
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private(&IpAddr::V4(v4)))
        }
    }
}

fn parse_one(item: &str, kind: ServiceList) -> Result<Service, String> {
    let defaults = kind == ServiceList::Listen;
    let (protocol, address) = match item.split_once("://") {
        Some((protocol, address)) => (protocol, address),
        // A bare word is a protocol only when both host and port have defaults (rpc).
        None if defaults && item.eq_ignore_ascii_case("rpc") => (item, ""),
        None => return Err(format!("invalid service string: {item}")),
    };
    let protocol = validate_protocol(protocol)?;
    let (mut host, mut port) = split_address(address);
    let is_rpc = protocol == "rpc";
    if defaults {
        if host.is_empty() {
            host = if is_rpc {
                "localhost"
            } else {
                "all_interfaces"
            };
        }
        if port.is_empty() && is_rpc {
            port = RPC_DEFAULT_PORT;
        }
        if port.is_empty() {
            return Err(format!("invalid address string: {address}"));
        }
    }
    let host = classify_host(host)?;
    let port = validate_port(port)?;
    let protocol = Protocol::from_name(&protocol).ok_or("unknown protocol")?;
    Ok(Service {
        protocol,
        host,
        port,
    })
}

fn validate_protocol(protocol: &str) -> Result<String, String> {
    let mut chars = protocol.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && protocol.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if valid {
        Ok(protocol.to_ascii_lowercase())
    } else {
        Err(format!("invalid protocol: {protocol}"))
    }
}

/// aiorpcx's `_split_address`: `[v6]:port`, `host:port`, or a bare host.
fn split_address(address: &str) -> (&str, &str) {
    if let Some(rest) = address.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let after = &rest[end + 1..];
            if after.is_empty() {
                return (&rest[..end], "");
            }
            if let Some(port) = after.strip_prefix(':') {
                return (&rest[..end], port);
            }
        }
    }
    match address.find(':') {
        Some(colon) => (&address[..colon], &address[colon + 1..]),
        None => (address, ""),
    }
}

fn classify_host(host: &str) -> Result<Host, String> {
    if host == "all_interfaces" {
        return Ok(Host::AllInterfaces);
    }
    if is_valid_hostname(host) {
        return Ok(Host::Name(host.to_string()));
    }
    host.parse::<IpAddr>()
        .or_else(|_| host.parse::<Ipv6Addr>().map(IpAddr::V6))
        .map(Host::Ip)
        .map_err(|_| format!("'{host}' does not appear to be an IPv4 or IPv6 address"))
}

fn is_valid_hostname(hostname: &str) -> bool {
    let hostname = hostname.strip_suffix('.').unwrap_or(hostname);
    if hostname.is_empty() || hostname.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = hostname.split('.').collect();
    let tld = labels[labels.len() - 1];
    if tld.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && tld.bytes().all(|b| b.is_ascii_digit())
    {
        return false;
    }
    labels.iter().all(|label| valid_label(label))
}

fn valid_label(label: &str) -> bool {
    let b = label.as_bytes();
    let edge = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let inner = |c: u8| edge(c) || c == b'-';
    match b.len() {
        0 => false,
        1 => edge(b[0]),
        n if n <= 63 => edge(b[0]) && edge(b[n - 1]) && b[1..n - 1].iter().all(|&c| inner(c)),
        _ => false,
    }
}

fn validate_port(port: &str) -> Result<u16, String> {
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(value) = port.parse::<u32>() {
            if (1..=65535).contains(&value) {
                return Ok(value as u16);
            }
        }
    }
    Err(format!("invalid port: {port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(text: &str) -> Result<Vec<Service>, String> {
        parse_services(text, ServiceList::Listen)
    }

    fn report(text: &str) -> Result<Vec<Service>, String> {
        parse_services(text, ServiceList::Report { announce: true })
    }

    #[test]
    fn documented_examples_parse() {
        let s = listen("tcp://host.domain.tld:50001,SSL://23.45.67.78:50002,rpC://localhost,ws://[1234:5678:abcd::5601]:8000,rpc://:8001").unwrap();
        assert_eq!(s[0].to_string(), "tcp://host.domain.tld:50001");
        assert_eq!(s[1].to_string(), "ssl://23.45.67.78:50002");
        assert_eq!(s[2].to_string(), "rpc://localhost:8000");
        assert_eq!(s[3].to_string(), "ws://[1234:5678:abcd::5601]:8000");
        assert_eq!(s[3].host.features_key(), "1234:5678:abcd::5601");
        assert_eq!(s[4].to_string(), "rpc://localhost:8001");
    }

    #[test]
    fn defaults_for_listening() {
        let s = listen("tcp://:50001,ssl://:50002,wss://:50004,rpc://").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].host, Host::AllInterfaces);
        assert_eq!(s[0].bind_host(), "0.0.0.0");
        assert_eq!(s[3].to_string(), "rpc://localhost:8000");
        assert_eq!(
            listen("rpc").unwrap()[0].to_string(),
            "rpc://localhost:8000"
        );
        assert_eq!(listen("").unwrap(), vec![]);
        assert_eq!(listen(",,").unwrap(), vec![]);
    }

    #[test]
    fn listening_errors() {
        assert_eq!(
            listen("tcp://:").unwrap_err(),
            "\"tcp://:\" invalid: invalid address string: :"
        );
        assert_eq!(
            listen("tcp://host").unwrap_err(),
            "\"tcp://host\" invalid: invalid address string: host"
        );
        assert_eq!(
            listen("host.domain.tld:5151").unwrap_err(),
            "\"host.domain.tld:5151\" invalid: invalid service string: host.domain.tld:5151"
        );
        assert_eq!(
            listen("foo://:1").unwrap_err(),
            "\"foo://:1\" invalid: unknown protocol"
        );
        assert_eq!(
            listen("1tcp://:1").unwrap_err(),
            "\"1tcp://:1\" invalid: invalid protocol: 1tcp"
        );
        assert_eq!(
            listen(" tcp://:1").unwrap_err(),
            "\" tcp://:1\" invalid: invalid protocol:  tcp"
        );
        assert_eq!(
            listen("tcp://:0").unwrap_err(),
            "\"tcp://:0\" invalid: invalid port: 0"
        );
        assert_eq!(
            listen("tcp://:65536").unwrap_err(),
            "\"tcp://:65536\" invalid: invalid port: 65536"
        );
        assert_eq!(
            listen("tcp://:x1").unwrap_err(),
            "\"tcp://:x1\" invalid: invalid port: x1"
        );
        assert_eq!(listen("tcp://bad host:1").unwrap_err(), "\"tcp://bad host:1\" invalid: 'bad host' does not appear to be an IPv4 or IPv6 address");
        assert_eq!(
            listen("tcp://[::1:1").unwrap_err(),
            "\"tcp://[::1:1\" invalid: '[' does not appear to be an IPv4 or IPv6 address"
        );
        assert_eq!(
            listen("tcp://abc.onion:1").unwrap_err(),
            "bad host for SERVICES: tcp://abc.onion:1"
        );
    }

    #[test]
    fn duplicates_rejected() {
        assert_eq!(
            listen("tcp://:50001,ssl://:50001").unwrap_err(),
            "address all_interfaces:50001 has multiple services"
        );
        assert_eq!(
            listen("tcp://[::1]:5,ws://[::1]:5").unwrap_err(),
            "address [::1]:5 has multiple services"
        );
        assert!(listen("tcp://:50001,tcp://127.0.0.1:50001").is_ok());
    }

    #[test]
    fn report_rules() {
        let s = report("tcp://sv.usebsv.com:50001,ssl://sv.usebsv.com:50002,wss://8.8.8.8:50004")
            .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(
            report("rpc://host.com:1").unwrap_err(),
            "bad protocol for REPORT_SERVICES: rpc"
        );
        assert_eq!(
            report("tcp://localhost:1").unwrap_err(),
            "bad host for REPORT_SERVICES: localhost"
        );
        assert_eq!(
            report("tcp://10.0.0.1:1").unwrap_err(),
            "bad IP address for REPORT_SERVICES: 10.0.0.1"
        );
        assert_eq!(
            report("tcp://0.0.0.0:1").unwrap_err(),
            "bad IP address for REPORT_SERVICES: 0.0.0.0"
        );
        assert_eq!(
            report("tcp://224.0.0.1:1").unwrap_err(),
            "bad IP address for REPORT_SERVICES: 224.0.0.1"
        );
        assert_eq!(
            report("tcp://[fd00::1]:1").unwrap_err(),
            "bad IP address for REPORT_SERVICES: fd00::1"
        );
        assert!(
            parse_services("tcp://10.0.0.1:1", ServiceList::Report { announce: false }).is_ok()
        );
        // Nothing is defaulted in REPORT_SERVICES.
        assert_eq!(
            report("tcp://:1").unwrap_err(),
            "\"tcp://:1\" invalid: '' does not appear to be an IPv4 or IPv6 address"
        );
        assert_eq!(
            report("tcp://a.com").unwrap_err(),
            "\"tcp://a.com\" invalid: invalid port: "
        );
        assert_eq!(
            report("rpc").unwrap_err(),
            "\"rpc\" invalid: invalid service string: rpc"
        );
    }

    #[test]
    fn hostnames() {
        assert!(is_valid_hostname("a.b-c.d_e."));
        assert!(!is_valid_hostname("1.2.3"));
        assert!(!is_valid_hostname("-a.com"));
        assert!(!is_valid_hostname(&"a".repeat(64)));
        assert!(is_valid_hostname("x1.123a"));
    }
}
