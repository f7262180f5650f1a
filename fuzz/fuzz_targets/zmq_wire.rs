//! Fuzzes the ZMQ subscriber's reading of a publisher (`ferrum::zmq::wire`): the input is all
//! a publisher sends (greeting, commands, frames). Checks that nothing panics, that the
//! handshake and message reads end (every input is finite), and that each message accepted
//! respects the frame and part bounds.
#![no_main]

use std::sync::OnceLock;

use ferrum::zmq::wire::{Subscriber, MAX_FRAME, MAX_PARTS};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        // The publisher's end stays open (our writes land in it) but sends only `data`.
        let publisher = async move {
            let _ = theirs.write_all(data).await;
            let _ = theirs.shutdown().await;
            theirs
        };
        let subscriber = async move {
            let Ok(mut sub) = Subscriber::handshake(ours, b"hashblock").await else {
                return;
            };
            while let Ok(parts) = sub.next_message().await {
                assert!(!parts.is_empty() && parts.len() <= MAX_PARTS);
                assert!(parts.iter().all(|p| p.len() as u64 <= MAX_FRAME));
            }
        };
        let _ = tokio::join!(publisher, subscriber);
    });
});
