use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

fn peer_greeting(major: u8, mechanism: &[u8]) -> Vec<u8> {
    let mut g = vec![0u8; GREETING_LEN];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = major;
    g[11] = 1;
    g[12..12 + mechanism.len()].copy_from_slice(mechanism);
    g
}

fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![flags, body.len() as u8];
    f.extend_from_slice(body);
    f
}

fn command(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(data);
    frame(FLAG_COMMAND, &body)
}

fn property(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut p = vec![name.len() as u8];
    p.extend_from_slice(name);
    p.extend_from_slice(&(value.len() as u32).to_be_bytes());
    p.extend_from_slice(value);
    p
}

/// A publisher's READY as libzmq sends it (Socket-Type, then an empty Identity).
fn ready(socket_type: &[u8]) -> Vec<u8> {
    let mut props = property(b"Socket-Type", socket_type);
    props.extend(property(b"Identity", b""));
    command(b"READY", &props)
}

/// The publisher's side: everything it will send, written before the subscriber starts, then
/// its end of the stream (the subscriber reads EOF after it).
async fn publisher(sends: &[Vec<u8>]) -> (DuplexStream, DuplexStream) {
    let (ours, mut theirs) = duplex(1 << 16);
    for bytes in sends {
        theirs.write_all(bytes).await.unwrap();
    }
    theirs.shutdown().await.unwrap();
    (ours, theirs)
}

async fn handshake_error(sends: &[Vec<u8>]) -> String {
    let (ours, _theirs) = publisher(sends).await;
    match Subscriber::handshake(ours, b"hashblock").await {
        Ok(_) => panic!("the handshake succeeded"),
        Err(e) => e.to_string(),
    }
}

/// A subscriber past a good handshake, and the publisher's end.
async fn subscribed(after: &[Vec<u8>]) -> (Subscriber<DuplexStream>, DuplexStream) {
    let mut sends = vec![peer_greeting(3, b"NULL"), ready(b"PUB")];
    sends.extend_from_slice(after);
    let (ours, theirs) = publisher(&sends).await;
    let sub = Subscriber::handshake(ours, b"hashblock").await.unwrap();
    (sub, theirs)
}

async fn message_error(after: &[Vec<u8>]) -> String {
    let (mut sub, _theirs) = subscribed(after).await;
    match sub.next_message().await {
        Ok(parts) => panic!("got a message of {} parts", parts.len()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn subscribes_and_reads_block_notifications() {
    let hash = [7u8; 32];
    let (mut sub, mut theirs) = subscribed(&[
        frame(FLAG_MORE, b"hashblock"),
        frame(FLAG_MORE, &hash),
        frame(0, &1u32.to_le_bytes()),
        // A heartbeat between messages is skipped; a long-form size is read.
        command(b"PING", &[0, 0]),
        [
            &[FLAG_MORE | FLAG_LONG][..],
            &9u64.to_be_bytes(),
            b"hashblock",
        ]
        .concat(),
        frame(FLAG_MORE, &hash),
        frame(0, &2u32.to_le_bytes()),
    ])
    .await;
    for seq in 1u32..=2 {
        let parts = sub.next_message().await.unwrap();
        assert_eq!(
            parts,
            vec![
                b"hashblock".to_vec(),
                hash.to_vec(),
                seq.to_le_bytes().to_vec()
            ]
        );
    }
    // What the subscriber sent: greeting, READY (Socket-Type SUB), the subscription message.
    drop(sub);
    let mut sent = Vec::new();
    theirs.read_to_end(&mut sent).await.unwrap();
    let mut expected = greeting().to_vec();
    let mut ready_body = vec![5];
    ready_body.extend_from_slice(b"READY");
    ready_body.extend(property(b"Socket-Type", b"SUB"));
    expected.extend(frame(FLAG_COMMAND, &ready_body));
    expected.extend(frame(0, b"\x01hashblock"));
    assert_eq!(sent, expected);
    assert_eq!(&sent[..12], b"\xff\0\0\0\0\0\0\0\x01\x7f\x03\x00");
}

#[tokio::test]
async fn refuses_a_peer_that_is_not_a_publisher() {
    assert_eq!(
        handshake_error(&[b"HTTP/1.1 400 Bad Request\r\n\r\n".repeat(3)]).await,
        "not a ZMQ publisher: its greeting starts with [48, 54, 54, 50, 2f, 31, 2e, 31, 20, 34]"
    );
    assert_eq!(
        handshake_error(&[peer_greeting(2, b"NULL")]).await,
        "the publisher speaks ZMTP 2.1; 3.0 or later is needed"
    );
    assert_eq!(
        handshake_error(&[peer_greeting(3, b"CURVE")]).await,
        "the publisher asks for the \"CURVE\" security mechanism; only NULL is supported"
    );
    let greeting = peer_greeting(3, b"NULL");
    assert_eq!(
        handshake_error(&[greeting.clone(), ready(b"SUB")]).await,
        "the peer is a ZMQ SUB socket, not a publisher"
    );
    assert_eq!(
        handshake_error(&[
            greeting.clone(),
            command(b"READY", &property(b"Identity", b""))
        ])
        .await,
        "the publisher's READY command has no Socket-Type"
    );
    assert_eq!(
        handshake_error(&[greeting.clone(), command(b"ERROR", b"\x0eno access here")]).await,
        "the publisher refused the connection: \"no access here\""
    );
    assert_eq!(
        handshake_error(&[greeting.clone(), command(b"HELLO", b"")]).await,
        "the publisher sent \"HELLO\" where its READY command belongs"
    );
    assert_eq!(
        handshake_error(&[greeting.clone(), frame(0, b"early")]).await,
        "the publisher sent a message before its READY command"
    );
    assert_eq!(
        handshake_error(&[greeting.clone(), frame(FLAG_COMMAND, &[])]).await,
        "the publisher sent an empty command"
    );
    assert_eq!(
        handshake_error(&[greeting.clone(), frame(FLAG_COMMAND, b"\x09READY")]).await,
        "the publisher sent a truncated command name"
    );
    let truncated = |props: &[u8]| [greeting.clone(), command(b"READY", props)];
    assert_eq!(
        handshake_error(&truncated(b"\x0bSocket")).await,
        "the publisher's READY command has a truncated property name"
    );
    assert_eq!(
        handshake_error(&truncated(b"\x0bSocket-Type\0\0")).await,
        "the publisher's READY command has a truncated property length"
    );
    assert_eq!(
        handshake_error(&truncated(b"\x0bSocket-Type\0\0\0\x03PU")).await,
        "the publisher's READY command has a truncated property value"
    );
    assert_eq!(
        handshake_error(&[greeting[..40].to_vec()]).await,
        "the publisher closed the connection"
    );
}

#[tokio::test]
async fn refuses_bad_frames() {
    assert_eq!(
        message_error(&[frame(0x08, b"x")]).await,
        "the publisher sent a frame with flags 0x08"
    );
    assert_eq!(
        message_error(&[frame(FLAG_COMMAND | FLAG_MORE, b"\x04PING")]).await,
        "the publisher sent a command frame marked as continued"
    );
    let huge = [&[FLAG_LONG][..], &(MAX_FRAME + 1).to_be_bytes()].concat();
    assert_eq!(
        message_error(&[huge]).await,
        "the publisher sent a frame of 4097 bytes; at most 4096 are expected"
    );
    let endless = u64::MAX.to_be_bytes();
    assert_eq!(
        message_error(&[[&[FLAG_LONG][..], &endless].concat()]).await,
        "the publisher sent a frame of 18446744073709551615 bytes; at most 4096 are expected"
    );
    assert_eq!(
        message_error(&vec![frame(FLAG_MORE, b"part"); MAX_PARTS]).await,
        "the publisher sent a message of more than 8 frames"
    );
    assert_eq!(
        message_error(&[frame(FLAG_MORE, b"hashblock"), command(b"PING", b"")]).await,
        "the publisher sent a command inside a multipart message"
    );
    assert_eq!(
        message_error(&[command(b"ERROR", b"\x04gone")]).await,
        "the publisher refused the connection: \"gone\""
    );
    assert_eq!(
        message_error(&[frame(FLAG_MORE, b"hashblock"), vec![0, 32, 1, 2]]).await,
        "the publisher closed the connection"
    );
}
