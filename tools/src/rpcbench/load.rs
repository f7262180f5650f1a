//! Closed-loop Electrum load over TCP: each connection sends one request, reads the whole
//! reply line, and sends the next; latency runs from the write to the reply's last byte.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Replies longer than this are not parsed: an error reply is never that long.
const PARSE_LIMIT: usize = 4096;

/// One Electrum session over TCP, after `server.version`.
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_id: u64,
    line: Vec<u8>,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl Connection {
    pub fn open(addr: SocketAddr) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(300)))?;
        let mut conn = Connection {
            reader: BufReader::with_capacity(1 << 16, stream.try_clone()?),
            writer: stream,
            next_id: 0,
            line: Vec::new(),
        };
        conn.call("server.version", &["ferrum-rpcbench", "1.4"])?;
        Ok(conn)
    }

    /// Sends `method` with string `params` and returns the reply line, which must be a
    /// result (an error reply is an error).
    pub fn call(&mut self, method: &str, params: &[&str]) -> io::Result<&[u8]> {
        self.next_id += 1;
        let request = serde_json::json!({
            "jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params,
        });
        let mut text = request.to_string();
        text.push('\n');
        self.writer.write_all(text.as_bytes())?;
        self.line.clear();
        if self.reader.read_until(b'\n', &mut self.line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{method}: the server closed the connection"),
            ));
        }
        check_reply(&self.line, self.next_id).map_err(|e| invalid(format!("{method}: {e}")))?;
        Ok(&self.line)
    }
}

/// Whether `line` is the result for request `id`. Long lines are taken as results unread.
pub fn check_reply(line: &[u8], id: u64) -> Result<(), String> {
    if line.len() > PARSE_LIMIT {
        return Ok(());
    }
    let reply: Value = serde_json::from_slice(line).map_err(|e| format!("bad reply: {e}"))?;
    if let Some(error) = reply.get("error").filter(|e| !e.is_null()) {
        return Err(format!("error reply {error}"));
    }
    if reply.get("id") != Some(&Value::from(id)) || reply.get("result").is_none() {
        return Err(format!("unexpected reply {reply}"));
    }
    Ok(())
}

/// The outcome of one load run.
pub struct Run {
    /// Every request's latency, sorted.
    pub latencies: Vec<Duration>,
    /// From the common start to the last reply.
    pub elapsed: Duration,
}

impl Run {
    /// The nearest-rank percentile `p` (0–100) of the latencies.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    pub fn requests_per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// `conns` connections each sending `method` for the scripts of `scripthashes` in turn
/// (each starting at a different one) for `duration`, after all have connected.
pub fn run(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    method: &str,
    scripthashes: &[String],
) -> io::Result<Run> {
    let barrier = Arc::new(Barrier::new(conns));
    let threads: Vec<_> = (0..conns)
        .map(|n| {
            let (barrier, method) = (Arc::clone(&barrier), method.to_string());
            let scripts = scripthashes.to_vec();
            std::thread::spawn(move || -> io::Result<(Vec<Duration>, Duration)> {
                let conn = Connection::open(addr);
                // Wait even on failure, so that the other threads are not stuck.
                barrier.wait();
                let mut conn = conn?;
                let mut latencies = Vec::new();
                let start = Instant::now();
                let mut i = n;
                while start.elapsed() < duration {
                    let script = &scripts[i % scripts.len()];
                    let sent = Instant::now();
                    conn.call(&method, &[script])?;
                    latencies.push(sent.elapsed());
                    i += 1;
                }
                Ok((latencies, start.elapsed()))
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut elapsed = Duration::ZERO;
    for thread in threads {
        let (mine, took) = thread
            .join()
            .map_err(|_| invalid("a load thread panicked".into()))??;
        latencies.extend(mine);
        elapsed = elapsed.max(took);
    }
    latencies.sort();
    Ok(Run { latencies, elapsed })
}

/// CPU time (user + system, all threads) process `pid` has used, from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> io::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)?;
    cpu_from_stat(&stat).ok_or_else(|| invalid(format!("{path}: unexpected contents")))
}

/// utime + stime of a `/proc/<pid>/stat` line. The name (field 2) may hold spaces and
/// parentheses, so fields are counted from its closing parenthesis: state is field 3, utime
/// 14 and stime 15, in clock ticks of Linux's fixed `USER_HZ` (100 a second).
fn cpu_from_stat(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn replies_are_checked() {
        assert_eq!(
            check_reply(br#"{"jsonrpc":"2.0","id":3,"result":[]}"#, 3),
            Ok(())
        );
        assert_eq!(
            check_reply(br#"{"id":3,"result":null,"error":null}"#, 3),
            Ok(())
        );
        let err = check_reply(br#"{"id":3,"error":{"code":1,"message":"x"}}"#, 3);
        assert_eq!(err, Err(r#"error reply {"code":1,"message":"x"}"#.into()));
        assert!(check_reply(br#"{"id":4,"result":1}"#, 3).is_err());
        assert!(check_reply(b"not json", 3).is_err());
        assert_eq!(check_reply(&[b' '; PARSE_LIMIT + 1], 3), Ok(()));
    }

    #[test]
    fn cpu_time_is_read_from_proc() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 9";
        assert_eq!(cpu_from_stat(stat), Some(Duration::from_millis(2810)));
        assert_eq!(cpu_from_stat("42 (x) S 1"), None);
        assert!(process_cpu(std::process::id()).is_ok());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let run = Run {
            latencies: (1..=200).map(Duration::from_millis).collect(),
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(run.percentile(50.0), Duration::from_millis(100));
        assert_eq!(run.percentile(99.0), Duration::from_millis(198));
        assert_eq!(run.percentile(100.0), Duration::from_millis(200));
        assert_eq!(run.requests_per_second(), 100.0);
    }

    /// A server answering every line with a result echoing its id, on two connections.
    #[test]
    fn runs_requests_on_every_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let stream = stream.unwrap();
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    for line in BufReader::new(stream).lines() {
                        let Ok(line) = line else { return };
                        let request: Value = serde_json::from_str(&line).unwrap();
                        let reply = serde_json::json!({"id": request["id"], "result": []});
                        if writeln!(writer, "{reply}").is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let scripts = vec!["a".to_string(), "b".to_string()];
        let run = run(addr, 2, Duration::from_millis(100), "m", &scripts).unwrap();
        assert!(run.latencies.len() >= 2);
        assert!(run.latencies.windows(2).all(|w| w[0] <= w[1]));
        assert!(run.elapsed >= Duration::from_millis(100));
    }
}
