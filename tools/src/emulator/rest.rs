//! Core's REST interface (`-rest=1`): blocks, headers, block hash by height, transactions and
//! chain info, with Core's status codes and plain-text error bodies.

use std::sync::RwLock;

use bitcoin::{BlockHash, Txid};
use serde_json::Value;

use super::http::{Body, Request, Response};
use super::jsonrpc::hex_into;
use super::methods::{block_json, blockchain_info, header_json, hex, mempool_json};
use super::node::Node;
use super::txjson::{self, Detail};

const MAX_HEADERS: usize = 2000;
const ALL_FORMATS: &str = ".bin, .hex, .json";

#[derive(PartialEq, Eq, Clone, Copy)]
enum Format {
    Undef,
    Bin,
    Hex,
    Json,
}

/// Core's `ParseDataFormat`: drops the query, splits a known extension off the last dot.
fn parse_format(uri_part: &str) -> (String, Format) {
    let param = match uri_part.rfind('?') {
        Some(q) => &uri_part[..q],
        None => uri_part,
    };
    if let Some(dot) = param.rfind('.') {
        let format = match &param[dot + 1..] {
            "bin" => Some(Format::Bin),
            "hex" => Some(Format::Hex),
            "json" => Some(Format::Json),
            _ => None,
        };
        if let Some(f) = format {
            return (param[..dot].to_string(), f);
        }
    }
    (param.to_string(), Format::Undef)
}

/// Core's `RESTERR`.
fn error(status: u16, message: &str) -> Response {
    Response::text(status, format!("{message}\r\n"))
}

fn format_not_found(available: &str) -> Response {
    error(
        404,
        &format!("output format not found (available: {available})"),
    )
}

fn parse_hash<T: std::str::FromStr>(s: &str) -> Option<T> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn read(node: &RwLock<Node>) -> std::sync::RwLockReadGuard<'_, Node> {
    node.read().unwrap_or_else(|p| p.into_inner())
}

pub fn handle(req: &Request, node: &RwLock<Node>) -> Response {
    if let Some(status) = read(node).warmup_peek() {
        return error(503, &format!("Service temporarily unavailable: {status}"));
    }
    let target = req.target.as_str();
    if let Some(rest) = target.strip_prefix("/rest/block/notxdetails/") {
        block(rest, node, 1)
    } else if let Some(rest) = target.strip_prefix("/rest/block/") {
        block(rest, node, 3)
    } else if let Some(rest) = target.strip_prefix("/rest/mempool/") {
        mempool(req, rest, node)
    } else if let Some(rest) = target.strip_prefix("/rest/headers/") {
        headers(req, rest, node)
    } else if let Some(rest) = target.strip_prefix("/rest/blockhashbyheight/") {
        hash_by_height(rest, node)
    } else if let Some(rest) = target.strip_prefix("/rest/tx/") {
        transaction(rest, node)
    } else if let Some(rest) = target.strip_prefix("/rest/chaininfo") {
        match parse_format(rest).1 {
            Format::Json => {
                Response::json(200, format!("{}\n", blockchain_info(&read(node).chain)))
            }
            _ => format_not_found("json"),
        }
    } else {
        let mut r = Response::empty(404);
        r.headers
            .push(("Content-Type", "text/html; charset=ISO-8859-1".into()));
        r
    }
}

/// A block; its JSON form at `json_verbosity` (Core: 3 for `/block/`, 1 for `/notxdetails/`).
fn block(uri_part: &str, node: &RwLock<Node>, json_verbosity: i64) -> Response {
    let (param, format) = parse_format(uri_part);
    let Some(hash) = parse_hash::<BlockHash>(&param) else {
        return error(400, &format!("Invalid hash: {param}"));
    };
    let node = read(node);
    let Some(entry) = node.chain.by_hash(&hash).cloned() else {
        return error(404, &format!("{param} not found"));
    };
    match format {
        Format::Bin => {
            drop(node);
            Response {
                status: 200,
                headers: vec![("Content-Type", "application/octet-stream".into())],
                body: Body::Shared(entry.raw.clone()),
            }
        }
        Format::Hex => {
            drop(node);
            let mut body = Vec::with_capacity(entry.raw.len() * 2 + 1);
            hex_into(&mut body, &entry.raw);
            body.push(b'\n');
            Response::new(200, "text/plain", body)
        }
        Format::Json => {
            let json = block_json(&node.chain, &entry, json_verbosity);
            Response::json(200, format!("{json}\n"))
        }
        Format::Undef => format_not_found(ALL_FORMATS),
    }
}

fn mempool(req: &Request, uri_part: &str, node: &RwLock<Node>) -> Response {
    let (param, format) = parse_format(uri_part);
    if param != "contents" && param != "info" {
        return error(
            400,
            "Invalid URI format. Expected /rest/mempool/<info|contents>.json",
        );
    }
    if format != Format::Json {
        return format_not_found("json");
    }
    let node = read(node);
    if param == "info" {
        return Response::json(200, format!("{}\n", node.mempool.info_json()));
    }
    let flag = |name: &str, default: &'static str| match req.query(name).unwrap_or(default) {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(error(
            400,
            &format!("The \"{name}\" query parameter must be either \"true\" or \"false\"."),
        )),
    };
    let (verbose, sequence) = match (flag("verbose", "true"), flag("mempool_sequence", "false")) {
        (Ok(v), Ok(s)) => (v, s),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    if verbose && sequence {
        return error(
            400,
            "Verbose results cannot contain mempool sequence values. (hint: set \"verbose=false\")",
        );
    }
    Response::json(
        200,
        format!("{}\n", mempool_json(&node.mempool, verbose, sequence)),
    )
}

fn headers(req: &Request, uri_part: &str, node: &RwLock<Node>) -> Response {
    let (param, format) = parse_format(uri_part);
    let path: Vec<&str> = param.split('/').collect();
    let (raw_count, hash_str) = match path.as_slice() {
        [count, hash] => (count.to_string(), *hash),
        [hash] => (req.query("count").unwrap_or("5").to_string(), *hash),
        _ => {
            return error(
                400,
                "Invalid URI format. Expected /rest/headers/<hash>.<ext>?count=<count>",
            )
        }
    };
    let count = raw_count
        .parse::<usize>()
        .ok()
        .filter(|c| (1..=MAX_HEADERS).contains(c) && !raw_count.starts_with('+'));
    let Some(count) = count else {
        return error(
            400,
            &format!(
                "Header count is invalid or out of acceptable range (1-{MAX_HEADERS}): {raw_count}"
            ),
        );
    };
    let Some(hash) = parse_hash::<BlockHash>(hash_str) else {
        return error(400, &format!("Invalid hash: {hash_str}"));
    };
    let node = read(node);
    let chain = &node.chain;
    let mut list = Vec::new();
    if let Some(start) = chain.by_hash(&hash).filter(|b| chain.is_active(b)) {
        let mut height = start.height;
        while let Some(b) = chain.at(height) {
            list.push(b.clone());
            if list.len() == count {
                break;
            }
            height += 1;
        }
    }
    match format {
        Format::Bin | Format::Hex => {
            let mut bytes = Vec::with_capacity(list.len() * 80);
            for b in &list {
                bytes.extend_from_slice(&b.raw[..80]);
            }
            if format == Format::Bin {
                Response::new(200, "application/octet-stream", bytes)
            } else {
                Response::text(200, hex(&bytes) + "\n")
            }
        }
        Format::Json => {
            let items: Vec<Value> = list
                .iter()
                .map(|b| Value::Object(header_json(chain, b)))
                .collect();
            Response::json(200, format!("{}\n", Value::Array(items)))
        }
        Format::Undef => format_not_found(ALL_FORMATS),
    }
}

fn hash_by_height(uri_part: &str, node: &RwLock<Node>) -> Response {
    let (param, format) = parse_format(uri_part);
    let height = param
        .parse::<i32>()
        .ok()
        .filter(|h| *h >= 0 && !param.starts_with('+'));
    let Some(height) = height else {
        let safe: String = param
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || " .,;-_/:?@()!*'=&%#+~".contains(*c))
            .collect();
        return error(400, &format!("Invalid height: {safe}"));
    };
    let node = read(node);
    let Some(entry) = node.chain.at(height as u32) else {
        return error(404, "Block height out of range");
    };
    match format {
        Format::Bin => Response::new(
            200,
            "application/octet-stream",
            entry.hash.as_raw_hash()[..].to_vec(),
        ),
        Format::Hex => Response::text(200, format!("{}\n", entry.hash)),
        Format::Json => Response::json(200, format!("{{\"blockhash\":\"{}\"}}\n", entry.hash)),
        Format::Undef => format_not_found(ALL_FORMATS),
    }
}

fn transaction(uri_part: &str, node: &RwLock<Node>) -> Response {
    let (param, format) = parse_format(uri_part);
    let Some(txid) = parse_hash::<Txid>(&param) else {
        return error(400, &format!("Invalid hash: {param}"));
    };
    let node = read(node);
    let found = match node.mempool.get(&txid) {
        Some(e) => Some((e.tx.clone(), None)),
        None => node.chain.tx(&txid).map(|(tx, b)| (tx, Some(b.hash))),
    };
    let Some((tx, block)) = found else {
        return error(404, &format!("{param} not found"));
    };
    match format {
        Format::Bin => Response::new(
            200,
            "application/octet-stream",
            bitcoin::consensus::serialize(&tx),
        ),
        Format::Hex => Response::text(200, bitcoin::consensus::encode::serialize_hex(&tx) + "\n"),
        Format::Json => {
            let mut o = txjson::tx_to_json(&tx, None, Detail::Plain);
            if let Some(hash) = block {
                // Core's TxToUniv puts the block hash before the hex.
                let hex = o.remove("hex");
                o.insert("blockhash".into(), Value::String(hash.to_string()));
                if let Some(hex) = hex {
                    o.insert("hex".into(), hex);
                }
            }
            Response::json(200, format!("{}\n", Value::Object(o)))
        }
        Format::Undef => format_not_found(ALL_FORMATS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_like_core() {
        assert!(parse_format("abc.bin?count=3") == ("abc".to_string(), Format::Bin));
        assert!(parse_format("abc.foo") == ("abc.foo".to_string(), Format::Undef));
        assert!(parse_format("abc") == ("abc".to_string(), Format::Undef));
        assert!(parse_format("5/abc.hex") == ("5/abc".to_string(), Format::Hex));
    }
}
