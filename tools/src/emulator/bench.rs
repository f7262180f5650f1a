//! Measures how fast a node (the emulator, or a real bitcoind) serves every block of its chain
//! over REST `/rest/block/<hash>.bin` and over JSON-RPC `getblock <hash> 0`, on one or several
//! keep-alive connections.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use super::client::HttpClient;

/// How blocks are fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    RestBin,
    RpcHex,
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::RestBin => "REST .bin",
            Route::RpcHex => "getblock hex",
        }
    }
}

/// One measured pass over the chain.
pub struct Rate {
    pub route: Route,
    pub connections: usize,
    pub blocks: usize,
    /// Raw block bytes served (not hex, not HTTP framing).
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Rate {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn blocks_per_s(&self) -> f64 {
        self.blocks as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The node under test: RPC/REST address and `user:password`.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub credentials: String,
}

impl Target {
    fn connect(&self) -> io::Result<HttpClient> {
        Ok(HttpClient::connect(self.addr)?.with_auth(&self.credentials))
    }

    /// Every block hash of the active chain, genesis first.
    pub fn block_hashes(&self) -> io::Result<Vec<String>> {
        let mut c = self.connect()?;
        let rpc_error = |e: super::RpcError| io::Error::other(format!("{}: {}", e.code, e.message));
        let count = c.call("getblockcount", json!([]))?.map_err(rpc_error)?;
        let count = count
            .as_u64()
            .ok_or_else(|| io::Error::other("getblockcount is not a number"))?;
        let mut hashes = Vec::with_capacity(count as usize + 1);
        for height in 0..=count {
            let hash = c
                .call("getblockhash", json!([height]))?
                .map_err(rpc_error)?;
            hashes.push(hash.as_str().unwrap_or_default().to_string());
        }
        Ok(hashes)
    }
}

/// Fetches every block once over `route`, spread round-robin over `connections` threads.
pub fn measure(
    target: &Target,
    hashes: &[String],
    route: Route,
    connections: usize,
) -> io::Result<Rate> {
    let connections = connections.max(1);
    let start = Instant::now();
    let results: Vec<io::Result<u64>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..connections)
            .map(|worker| {
                scope.spawn(move || -> io::Result<u64> {
                    let mut client = target.connect()?;
                    let mut bytes = 0u64;
                    for hash in hashes.iter().skip(worker).step_by(connections) {
                        bytes += fetch(&mut client, hash, route)?;
                    }
                    Ok(bytes)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(io::Error::other("worker panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut bytes = 0;
    for r in results {
        bytes += r?;
    }
    Ok(Rate {
        route,
        connections,
        blocks: hashes.len(),
        bytes,
        elapsed,
    })
}

/// One block; returns its raw size.
fn fetch(client: &mut HttpClient, hash: &str, route: Route) -> io::Result<u64> {
    match route {
        Route::RestBin => {
            let r = client.get(&format!("/rest/block/{hash}.bin"))?;
            if r.status != 200 {
                return Err(io::Error::other(format!(
                    "REST block {hash}: HTTP {}",
                    r.status
                )));
            }
            Ok(r.body.len() as u64)
        }
        Route::RpcHex => {
            let body =
                format!(r#"{{"jsonrpc":"1.0","id":1,"method":"getblock","params":["{hash}",0]}}"#);
            let r = client.request("POST", "/", body.as_bytes())?;
            // {"result":"<hex>","error":null,"id":1}: the hex is what counts.
            let hex_len = r.body.iter().skip(11).take_while(|b| **b != b'"').count();
            if r.status != 200 || hex_len == 0 {
                return Err(io::Error::other(format!(
                    "getblock {hash}: HTTP {}",
                    r.status
                )));
            }
            Ok(hex_len as u64 / 2)
        }
    }
}
