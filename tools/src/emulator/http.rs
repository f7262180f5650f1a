//! A small HTTP/1.1 server (keep-alive, Content-Length bodies) that Core's RPC and REST
//! interfaces run on, with a switch that closes every connection and the listener.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Core's `-rpcservertimeout` default: a connection idle this long is closed.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

pub struct Request {
    pub method: String,
    /// Path with the query string.
    pub target: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self, key: &str) -> Option<&str> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|kv| match kv.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            None if kv == key => Some(""),
            _ => None,
        })
    }
}

pub enum Body {
    Owned(Vec<u8>),
    /// A raw block served without copying it.
    Shared(Arc<Vec<u8>>),
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Response {
            status,
            headers: vec![("Content-Type", content_type.into())],
            body: Body::Owned(body),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain", body.into().into_bytes())
    }

    pub fn json(status: u16, body: String) -> Self {
        Self::new(status, "application/json", body.into_bytes())
    }

    pub fn json_bytes(status: u16, body: Vec<u8>) -> Self {
        Self::new(status, "application/json", body)
    }

    /// A bare status, as libevent sends it (Core's 401, 204 and unknown paths).
    pub fn empty(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Owned(Vec::new()),
        }
    }

    fn body(&self) -> &[u8] {
        match &self.body {
            Body::Owned(b) => b,
            Body::Shared(b) => b,
        }
    }
}

pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Accepts connections until `online` turns false, then drops the listener and returns
/// (`stopped`, if given, hears when the port is closed).
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    mut online: watch::Receiver<bool>,
    stopped: Option<std::sync::mpsc::Sender<()>>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, handler.clone(), online.clone()));
            }
            changed = online.changed() => {
                if changed.is_err() || !*online.borrow() {
                    drop(listener);
                    if let Some(stopped) = stopped {
                        let _ = stopped.send(());
                    }
                    return;
                }
            }
        }
    }
}

async fn connection(stream: TcpStream, handler: Handler, mut online: watch::Receiver<bool>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    loop {
        let request = tokio::select! {
            biased;
            _ = online.wait_for(|up| !*up) => return,
            r = tokio::time::timeout(IDLE_TIMEOUT, read_request(&mut reader, &mut write)) => match r {
                Ok(r) => r,
                Err(_) => return, // idle: Core (libevent) drops the connection too
            },
        };
        let (request, keep_alive) = match request {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(status) => {
                let _ = write_response(&mut write, &Response::text(status, ""), false).await;
                return;
            }
        };
        if !*online.borrow() {
            return;
        }
        let response = handler(request);
        tokio::select! {
            biased;
            _ = online.wait_for(|up| !*up) => return,
            r = write_response(&mut write, &response, keep_alive) => if r.is_err() { return },
        }
        if !keep_alive {
            return;
        }
    }
}

/// Reads one request; `Ok(None)` at a clean end of stream, `Err(status)` for a bad request.
/// Answers `Expect: 100-continue` (curl sends it for bodies over 1 kB) on `write`.
async fn read_request<R: AsyncBufReadExt + Unpin, W: AsyncWriteExt + Unpin>(
    reader: &mut R,
    write: &mut W,
) -> Result<Option<(Request, bool)>, u16> {
    let mut head = Vec::with_capacity(512);
    loop {
        let before = head.len();
        let n = reader
            .read_until(b'\n', &mut head)
            .await
            .map_err(|_| 400u16)?;
        if n == 0 {
            return if head.is_empty() { Ok(None) } else { Err(400) };
        }
        if head.len() > MAX_HEADER_BYTES {
            return Err(400);
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                head.clear(); // tolerate blank lines between requests
                continue;
            }
            break;
        }
    }
    let text = std::str::from_utf8(&head).map_err(|_| 400u16)?;
    let mut lines = text.lines();
    let mut parts = lines.next().ok_or(400u16)?.split_whitespace();
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) => (m.to_string(), t.to_string(), v.to_string()),
        _ => return Err(400),
    };
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(400u16)?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut request = Request {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    let length = match request.header("content-length") {
        Some(v) => v.parse::<usize>().map_err(|_| 400u16)?,
        None => 0,
    };
    if length > MAX_BODY_BYTES {
        return Err(400);
    }
    let expect = request.header("expect").map(|e| e.to_ascii_lowercase());
    if expect.as_deref() == Some("100-continue") && length > 0 {
        write
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| 400u16)?;
    }
    request.body = vec![0; length];
    reader
        .read_exact(&mut request.body)
        .await
        .map_err(|_| 400u16)?;
    let connection = request.header("connection").map(|c| c.to_ascii_lowercase());
    let keep_alive = match connection.as_deref() {
        Some("close") => false,
        Some("keep-alive") => true,
        _ => version == "HTTP/1.1",
    };
    Ok(Some((request, keep_alive)))
}

async fn write_response<W: AsyncWriteExt + Unpin>(
    write: &mut W,
    response: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
    let body = response.body();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    if response.status != 204 {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    if body.len() < 16 * 1024 {
        let mut all = head.into_bytes();
        all.extend_from_slice(body);
        write.write_all(&all).await
    } else {
        write.write_all(head.as_bytes()).await?;
        write.write_all(body).await
    }
}

/// Binds a loopback or given address (reusing the port after going offline).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
