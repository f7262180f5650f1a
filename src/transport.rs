//! Message transports: newline-framed streams (tcp, ssl, rpc) and WebSocket messages (ws,
//! wss), over plain TCP or TLS (tokio-rustls), with the size bound on incoming messages.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// What one read from a connection gives.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEvent {
    /// One message, without its framing.
    Message(Vec<u8>),
    /// A message over the size limit; the connection cannot be trusted to resynchronize.
    Oversize,
    /// The peer closed the connection.
    Closed,
}

/// Reads framed messages. `read` must be cancel-safe: a dropped read loses no data.
pub trait MessageReader: Send + 'static {
    fn read(&mut self) -> impl Future<Output = io::Result<ReadEvent>> + Send;
}

/// Writes framed messages.
pub trait MessageWriter: Send + 'static {
    fn write(&mut self, message: Vec<u8>) -> impl Future<Output = io::Result<()>> + Send;
    /// Flushes and closes the sending side.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// Per-connection read buffer: small, since a thousand idle sessions each hold one.
const READ_BUFFER: usize = 8 * 1024;

/// Newline-framed messages with at most `max_size` bytes each (zero: no limit).
pub struct LineReader<R> {
    inner: BufReader<R>,
    partial: Vec<u8>,
    max_size: usize,
}

impl<R: AsyncRead + Unpin + Send + 'static> LineReader<R> {
    pub fn new(inner: R, max_size: usize) -> Self {
        LineReader {
            inner: BufReader::with_capacity(READ_BUFFER, inner),
            partial: Vec::new(),
            max_size,
        }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> MessageReader for LineReader<R> {
    async fn read(&mut self) -> io::Result<ReadEvent> {
        loop {
            // State lives in self between awaits, so cancelling here loses nothing.
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                return Ok(ReadEvent::Closed);
            }
            let (taken, complete) = match memchr_newline(available) {
                Some(pos) => (pos + 1, true),
                None => (available.len(), false),
            };
            let body = if complete {
                &available[..taken - 1]
            } else {
                available
            };
            if self.max_size > 0 && self.partial.len() + body.len() > self.max_size {
                self.partial.clear();
                self.inner.consume(taken);
                return Ok(ReadEvent::Oversize);
            }
            self.partial.extend_from_slice(body);
            self.inner.consume(taken);
            if complete {
                return Ok(ReadEvent::Message(std::mem::take(&mut self.partial)));
            }
        }
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Writes each message followed by a newline.
pub struct LineWriter<W> {
    inner: W,
}

impl<W: AsyncWrite + Unpin + Send + 'static> LineWriter<W> {
    pub fn new(inner: W) -> Self {
        LineWriter { inner }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> MessageWriter for LineWriter<W> {
    async fn write(&mut self, mut message: Vec<u8>) -> io::Result<()> {
        message.push(b'\n');
        self.inner.write_all(&message).await?;
        self.inner.flush().await
    }

    async fn shutdown(&mut self) {
        let _ = self.inner.shutdown().await;
    }
}

/// One JSON-RPC message per WebSocket text (or binary) message.
pub struct WsReader<S> {
    inner: SplitStream<WebSocketStream<S>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MessageReader for WsReader<S> {
    async fn read(&mut self) -> io::Result<ReadEvent> {
        loop {
            return match self.inner.next().await {
                None | Some(Ok(Message::Close(_))) => Ok(ReadEvent::Closed),
                Some(Ok(Message::Text(text))) => Ok(ReadEvent::Message(text.as_bytes().to_vec())),
                Some(Ok(Message::Binary(data))) => Ok(ReadEvent::Message(data.to_vec())),
                // Pings are answered by tungstenite itself.
                Some(Ok(_)) => continue,
                Some(Err(tungstenite::Error::Capacity(_))) => Ok(ReadEvent::Oversize),
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => Ok(ReadEvent::Closed),
                Some(Err(tungstenite::Error::Io(e))) => Err(e),
                Some(Err(e)) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            };
        }
    }
}

/// Sends each message as one WebSocket text message.
pub struct WsWriter<S> {
    inner: SplitSink<WebSocketStream<S>, Message>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MessageWriter for WsWriter<S> {
    async fn write(&mut self, message: Vec<u8>) -> io::Result<()> {
        // Our messages are serialized JSON: always UTF-8.
        let text = String::from_utf8(message)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.inner
            .send(Message::text(text))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
    }

    async fn shutdown(&mut self) {
        let _ = self.inner.close().await;
    }
}

/// Performs the server side of the WebSocket handshake and splits the stream.
pub async fn accept_websocket<S>(
    stream: S,
    max_size: usize,
) -> io::Result<(WsReader<S>, WsWriter<S>)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limit = (max_size > 0).then_some(max_size);
    let config = WebSocketConfig::default()
        .max_message_size(limit)
        .max_frame_size(limit);
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config))
        .await
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("websocket handshake failed: {e}"),
            )
        })?;
    let (sink, stream) = ws.split();
    Ok((WsReader { inner: stream }, WsWriter { inner: sink }))
}

/// Builds the TLS acceptor from PEM files; errors name the file and what is wrong with it.
pub fn load_tls(certfile: &Path, keyfile: &Path) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certfile)
        .map_err(|e| format!("SSL_CERTFILE {}: {e}", certfile.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("SSL_CERTFILE {}: {e}", certfile.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "SSL_CERTFILE {}: no certificate found",
            certfile.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(keyfile)
        .map_err(|e| format!("SSL_KEYFILE {}: {e}", keyfile.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "SSL_CERTFILE {} and SSL_KEYFILE {}: {e}",
                certfile.display(),
                keyfile.display()
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        let (client, server) = tokio::io::duplex(64);
        let mut reader = LineReader::new(server, 10);
        let writer = tokio::spawn(async move {
            let mut client = client;
            client.write_all(b"abc\n\ndefghij").await.unwrap();
            client.write_all(b"klmnop\nok\n").await.unwrap();
        });
        assert_eq!(
            reader.read().await.unwrap(),
            ReadEvent::Message(b"abc".to_vec())
        );
        assert_eq!(
            reader.read().await.unwrap(),
            ReadEvent::Message(b"".to_vec())
        );
        assert_eq!(reader.read().await.unwrap(), ReadEvent::Oversize);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn exactly_max_size_is_accepted() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = LineReader::new(server, 3);
        client.write_all(b"abc\nabcd\n").await.unwrap();
        drop(client);
        assert_eq!(
            reader.read().await.unwrap(),
            ReadEvent::Message(b"abc".to_vec())
        );
        assert_eq!(reader.read().await.unwrap(), ReadEvent::Oversize);
    }

    #[tokio::test]
    async fn partial_line_at_eof_is_dropped() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = LineReader::new(server, 0);
        client.write_all(b"x\ny").await.unwrap();
        drop(client);
        assert_eq!(
            reader.read().await.unwrap(),
            ReadEvent::Message(b"x".to_vec())
        );
        assert_eq!(reader.read().await.unwrap(), ReadEvent::Closed);
    }

    #[test]
    fn tls_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = load_tls(&missing, &missing).err().unwrap();
        assert!(
            e.starts_with(&format!("SSL_CERTFILE {}: ", missing.display())),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(
            load_tls(&empty, &missing).err().unwrap(),
            format!("SSL_CERTFILE {}: no certificate found", empty.display())
        );
    }
}
