//! ZMTP 3.0 (ZeroMQ's wire protocol, rfc.zeromq.org/spec/23) as a SUB socket with NULL
//! security: the greeting, the READY handshake, one subscription, then multipart messages.
//! That is all bitcoind's `-zmqpub*` publishers need. Everything the peer sends is checked and
//! bounded: a block notification is three short frames, so a larger frame is an error, never
//! an allocation.

use std::fmt;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted: a `hashblock` notification's frames are 9, 32 and 4 bytes.
pub const MAX_FRAME: u64 = 4096;
/// Most frames in one message (bitcoind sends topic, body, sequence number).
pub const MAX_PARTS: usize = 8;

const GREETING_LEN: usize = 64;
const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;

#[derive(Debug)]
pub enum Error {
    Io(std::io::Error),
    /// The peer broke the protocol or refused us; the text says how.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                f.write_str("the publisher closed the connection")
            }
            Error::Io(e) => write!(f, "{e}"),
            Error::Protocol(m) => f.write_str(m),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn protocol<T>(message: impl Into<String>) -> Result<T> {
    Err(Error::Protocol(message.into()))
}

/// A subscribed connection to a publisher.
pub struct Subscriber<S> {
    stream: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Subscriber<S> {
    /// Greets the publisher, exchanges READY commands and subscribes to `topic` (a prefix).
    pub async fn handshake(mut stream: S, topic: &[u8]) -> Result<Subscriber<S>> {
        stream.write_all(&greeting()).await?;
        let mut peer = [0u8; GREETING_LEN];
        stream.read_exact(&mut peer).await?;
        check_greeting(&peer)?;
        write_frame(&mut stream, FLAG_COMMAND, &ready_command()).await?;
        let frame = read_frame(&mut stream).await?;
        if !frame.command {
            return protocol("the publisher sent a message before its READY command");
        }
        check_command(&frame.body)?;
        check_ready(&frame.body)?;
        // ZMTP 3.0 subscribes with a message: 1, then the topic.
        let mut subscribe = Vec::with_capacity(1 + topic.len());
        subscribe.push(1);
        subscribe.extend_from_slice(topic);
        write_frame(&mut stream, 0, &subscribe).await?;
        Ok(Subscriber { stream })
    }

    /// The next whole message, its frames in order. Commands between messages are checked
    /// (ERROR ends the connection) and otherwise skipped.
    pub async fn next_message(&mut self) -> Result<Vec<Vec<u8>>> {
        let mut parts = Vec::new();
        loop {
            let frame = read_frame(&mut self.stream).await?;
            if frame.command {
                if !parts.is_empty() {
                    return protocol("the publisher sent a command inside a multipart message");
                }
                check_command(&frame.body)?;
                continue;
            }
            parts.push(frame.body);
            if !frame.more {
                return Ok(parts);
            }
            if parts.len() == MAX_PARTS {
                return protocol(format!(
                    "the publisher sent a message of more than {MAX_PARTS} frames"
                ));
            }
        }
    }
}

/// Our greeting: signature, version 3.0, the NULL mechanism, as-server 0.
fn greeting() -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0] = 0xff;
    g[8] = 0x01; // padding that reads as a ZMTP 1.0 length, as libzmq sends
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

fn check_greeting(peer: &[u8; GREETING_LEN]) -> Result<()> {
    if peer[0] != 0xff || peer[9] & 1 == 0 {
        return protocol(format!(
            "not a ZMQ publisher: its greeting starts with {:02x?}",
            &peer[..10]
        ));
    }
    let (major, minor) = (peer[10], peer[11]);
    if major < 3 {
        return protocol(format!(
            "the publisher speaks ZMTP {major}.{minor}; 3.0 or later is needed"
        ));
    }
    let mechanism = &peer[12..32];
    let name_len = mechanism.iter().position(|&b| b == 0).unwrap_or(20);
    if &mechanism[..name_len] != b"NULL" {
        return protocol(format!(
            "the publisher asks for the {:?} security mechanism; only NULL is supported",
            String::from_utf8_lossy(&mechanism[..name_len])
        ));
    }
    Ok(())
}

/// READY with the one property a SUB socket must send.
fn ready_command() -> Vec<u8> {
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&3u32.to_be_bytes());
    body.extend_from_slice(b"SUB");
    body
}

/// Splits a command body into its name and data.
fn command_parts(body: &[u8]) -> Result<(&[u8], &[u8])> {
    let Some((&len, rest)) = body.split_first() else {
        return protocol("the publisher sent an empty command");
    };
    if rest.len() < len as usize {
        return protocol("the publisher sent a truncated command name");
    }
    Ok(rest.split_at(len as usize))
}

/// The publisher's READY (after `check_command`, which turns an ERROR into the peer's
/// reason): its properties must parse and name a publishing socket type.
fn check_ready(body: &[u8]) -> Result<()> {
    let (name, mut props) = command_parts(body)?;
    if name != b"READY" {
        return protocol(format!(
            "the publisher sent {:?} where its READY command belongs",
            String::from_utf8_lossy(name)
        ));
    }
    let mut socket_type = None;
    while !props.is_empty() {
        let name_len = props[0] as usize;
        let Some(name) = props.get(1..1 + name_len) else {
            return protocol("the publisher's READY command has a truncated property name");
        };
        let at = 1 + name_len;
        let Some(len) = props.get(at..at + 4) else {
            return protocol("the publisher's READY command has a truncated property length");
        };
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(value) = props.get(at + 4..).and_then(|v| v.get(..len)) else {
            return protocol("the publisher's READY command has a truncated property value");
        };
        if name.eq_ignore_ascii_case(b"Socket-Type") {
            socket_type = Some(value);
        }
        props = &props[at + 4 + len..];
    }
    match socket_type {
        Some(b"PUB") | Some(b"XPUB") => Ok(()),
        Some(other) => protocol(format!(
            "the peer is a ZMQ {} socket, not a publisher",
            String::from_utf8_lossy(other)
        )),
        None => protocol("the publisher's READY command has no Socket-Type"),
    }
}

/// A command after the handshake: ERROR ends the connection with the peer's reason; others
/// (heartbeats of later ZMTP versions) need nothing from a subscriber.
fn check_command(body: &[u8]) -> Result<()> {
    let (name, data) = command_parts(body)?;
    if name == b"ERROR" {
        let reason = data
            .split_first()
            .and_then(|(&len, text)| text.get(..len as usize))
            .unwrap_or_default();
        return protocol(format!(
            "the publisher refused the connection: {:?}",
            String::from_utf8_lossy(reason)
        ));
    }
    Ok(())
}

struct Frame {
    more: bool,
    command: bool,
    body: Vec<u8>,
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Frame> {
    let flags = stream.read_u8().await?;
    if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0 {
        return protocol(format!(
            "the publisher sent a frame with flags {flags:#04x}"
        ));
    }
    let command = flags & FLAG_COMMAND != 0;
    if command && flags & FLAG_MORE != 0 {
        return protocol("the publisher sent a command frame marked as continued");
    }
    let size = if flags & FLAG_LONG != 0 {
        stream.read_u64().await?
    } else {
        u64::from(stream.read_u8().await?)
    };
    if size > MAX_FRAME {
        return protocol(format!(
            "the publisher sent a frame of {size} bytes; at most {MAX_FRAME} are expected"
        ));
    }
    let mut body = vec![0u8; size as usize];
    stream.read_exact(&mut body).await?;
    Ok(Frame {
        more: flags & FLAG_MORE != 0,
        command,
        body,
    })
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, flags: u8, body: &[u8]) -> Result<()> {
    let mut frame = Vec::with_capacity(9 + body.len());
    match u8::try_from(body.len()) {
        Ok(len) => frame.extend_from_slice(&[flags, len]),
        Err(_) => {
            frame.push(flags | FLAG_LONG);
            frame.extend_from_slice(&(body.len() as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(body);
    stream.write_all(&frame).await?;
    Ok(stream.flush().await?)
}

#[cfg(test)]
mod tests;
