//! A minimal HTTP/1.1 client for talking to the node: keep-alive connections, Content-Length
//! and chunked bodies, bounded sizes. Just enough for bitcoind's JSON-RPC and REST servers.

use std::fmt;
use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest response body accepted (a 4 MB block as hex in JSON is ~8 MB; batches are smaller).
pub const MAX_BODY: usize = 256 << 20;
/// Largest status line + headers accepted.
const MAX_HEAD: usize = 64 << 10;

#[derive(Debug)]
pub enum HttpError {
    /// The connection failed or was closed (retryable on a fresh connection).
    Io(io::Error),
    /// The peer sent something that is not HTTP/1.x as we understand it.
    Malformed(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Io(e) => write!(f, "{e}"),
            HttpError::Malformed(m) => write!(f, "malformed HTTP response: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> Self {
        HttpError::Io(e)
    }
}

fn malformed(msg: impl Into<String>) -> HttpError {
    HttpError::Malformed(msg.into())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// Whether the connection may carry another request.
    pub keep_alive: bool,
}

/// One keep-alive connection to `host:port`.
pub struct HttpConn {
    stream: BufReader<TcpStream>,
    host: String,
}

impl HttpConn {
    pub async fn connect(host: &str, port: u16) -> io::Result<HttpConn> {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream: BufReader::with_capacity(64 << 10, stream),
            host: format!("{host}:{port}"),
        })
    }

    /// Sends one request and reads its whole response. `authorization` is a full header value
    /// (e.g. "Basic ..."). After an error the connection must be dropped.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(auth) = authorization {
            head.push_str(&format!("Authorization: {auth}\r\n"));
        }
        if method == "POST" {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        self.stream.get_mut().write_all(&out).await?;
        read_response(&mut self.stream).await
    }
}

/// Reads one response (status line, headers, body) from `r`.
pub async fn read_response<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Response, HttpError> {
    let mut head_bytes = 0usize;
    let status_line = read_line(r, &mut head_bytes).await?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(malformed(format!("bad status line {status_line:?}"))),
    };
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| malformed(format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_string();

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut keep_alive = http11;
    let mut content_type = None;
    loop {
        let line = read_line(r, &mut head_bytes).await?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| malformed(format!("bad header line {line:?}")))?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = value
                    .parse()
                    .map_err(|_| malformed(format!("bad Content-Length {value:?}")))?;
                content_length = Some(n);
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    keep_alive = false;
                } else if v.contains("keep-alive") {
                    keep_alive = true;
                }
            }
            "content-type" => content_type = Some(value.to_string()),
            _ => {}
        }
    }

    let body = if chunked {
        read_chunked(r).await?
    } else if let Some(n) = content_length {
        if n > MAX_BODY {
            return Err(malformed(format!("body of {n} bytes exceeds {MAX_BODY}")));
        }
        let mut body = vec![0; n];
        r.read_exact(&mut body).await?;
        body
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        // No length: the body runs to the end of the connection.
        keep_alive = false;
        let mut body = Vec::new();
        r.take(MAX_BODY as u64 + 1).read_to_end(&mut body).await?;
        if body.len() > MAX_BODY {
            return Err(malformed(format!("body exceeds {MAX_BODY} bytes")));
        }
        body
    };
    Ok(Response {
        status,
        reason,
        content_type,
        body,
        keep_alive,
    })
}

async fn read_chunked<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let mut line_bytes = 0usize;
        let line = read_line(r, &mut line_bytes).await?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| malformed(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            // Trailer headers, then an empty line.
            let mut trailer_bytes = 0usize;
            while !read_line(r, &mut trailer_bytes).await?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(malformed(format!("chunked body exceeds {MAX_BODY} bytes")));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..]).await?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf).await?;
        if &crlf != b"\r\n" {
            return Err(malformed("chunk not followed by CRLF"));
        }
    }
}

/// Reads a CRLF- (or LF-) terminated line, counting bytes against the header budget.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    budget_used: &mut usize,
) -> Result<String, HttpError> {
    let mut line = Vec::new();
    let limit = (MAX_HEAD - (*budget_used).min(MAX_HEAD)) as u64 + 1;
    let n = (&mut *r).take(limit).read_until(b'\n', &mut line).await?;
    *budget_used += n;
    if n == 0 {
        return Err(HttpError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed by the node",
        )));
    }
    if line.last() != Some(&b'\n') {
        return Err(if *budget_used > MAX_HEAD {
            malformed(format!("response head exceeds {MAX_HEAD} bytes"))
        } else {
            HttpError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-response",
            ))
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| malformed("non-UTF-8 header line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &[u8]) -> Result<Response, HttpError> {
        let mut r = raw;
        read_response(&mut r).await
    }

    #[tokio::test]
    async fn content_length_body() {
        let resp = parse(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhelloEXTRA")
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.reason, "OK");
        assert_eq!(resp.content_type.as_deref(), Some("application/json"));
        assert_eq!(resp.body, b"hello");
        assert!(resp.keep_alive);
    }

    #[tokio::test]
    async fn chunked_body_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: y\r\n\r\n";
        let resp = parse(raw).await.unwrap();
        assert_eq!(resp.body, b"Wikipedia in\r\n\r\nchunks.");
        assert!(resp.keep_alive);
    }

    #[tokio::test]
    async fn two_responses_on_one_connection() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n";
        let mut r = &raw[..];
        assert_eq!(read_response(&mut r).await.unwrap().body, b"ab");
        let second = read_response(&mut r).await.unwrap();
        assert_eq!((second.status, second.body.as_slice()), (404, &b"xyz"[..]));
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn connection_close_and_http10_end_keep_alive() {
        let resp = parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        assert!(!resp.keep_alive);
        let resp = parse(b"HTTP/1.0 200 OK\r\n\r\nuntil eof").await.unwrap();
        assert_eq!(resp.body, b"until eof");
        assert!(!resp.keep_alive);
    }

    #[tokio::test]
    async fn malformed_responses_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"SSH-2.0-OpenSSH\r\n",
                "malformed HTTP response: bad status line \"SSH-2.0-OpenSSH\"",
            ),
            (
                b"HTTP/1.1 abc OK\r\n",
                "malformed HTTP response: bad status line \"HTTP/1.1 abc OK\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "malformed HTTP response: bad Content-Length \"x\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "malformed HTTP response: bad chunk size line \"zz\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",
                "malformed HTTP response: chunk not followed by CRLF",
            ),
            (
                b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                "malformed HTTP response: bad header line \"no colon\"",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n",
                "malformed HTTP response: body of 999999999999 bytes exceeds 268435456",
            ),
            (b"", "connection closed by the node"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Le",
                "connection closed mid-response",
            ),
        ];
        for (raw, expected) in cases {
            let err = parse(raw).await.unwrap_err();
            assert_eq!(err.to_string(), *expected);
        }
        let huge = [
            b"HTTP/1.1 200 OK\r\nX: ".as_slice(),
            &vec![b'a'; MAX_HEAD],
            b"\r\n\r\n",
        ]
        .concat();
        assert_eq!(
            parse(&huge).await.unwrap_err().to_string(),
            "malformed HTTP response: response head exceeds 65536 bytes"
        );
    }

    #[tokio::test]
    async fn truncated_body_is_an_io_error() {
        let err = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Io(_)), "{err}");
    }
}
