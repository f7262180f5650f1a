//! Fuzzes the wallet-facing input path: newline framing with a size bound, JSON-RPC
//! decoding (dialect detection, batches), parameter binding, version negotiation and
//! response encoding. Checks that nothing panics and that everything we would send back
//! is valid JSON within the size limit.
#![no_main]

use std::sync::OnceLock;

use ferrum::jsonrpc::{py_str, Codec, Incoming, Params, RawJson, Request, RpcError, Signature};
use ferrum::session::version::negotiate;
use ferrum::transport::{LineReader, MessageReader, ReadEvent};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

const SIGNATURES: [Signature; 3] = [
    Signature::new(&[], 0),
    Signature::new(&["scripthash", "cp_height"], 1),
    Signature {
        names: &["client_name", "protocol_version"],
        required: 0,
        extras: true,
    },
];

fn assert_json(bytes: &[u8]) {
    if let Err(e) = serde_json::from_slice::<Value>(bytes) {
        panic!("invalid JSON sent: {e}: {}", String::from_utf8_lossy(bytes));
    }
}

fn answer(codec: &Codec, request: Request, max_send: usize) {
    for signature in &SIGNATURES {
        let result: Result<Value, RpcError> = request
            .params
            .clone()
            .bind(&request.method, signature)
            .map(|args| Value::Array(args.into_iter().map(|a| a.unwrap_or(Value::Null)).collect()));
        if let Ok(Value::Array(args)) = &result {
            if args.len() == 2 {
                let _ = negotiate(Some(&args[1]));
                let _ = py_str(&args[0]);
            }
        }
        let id = request.id.clone().unwrap_or(Value::Null);
        let reply = codec.encode_response(&result.map(RawJson::from), &id, max_send);
        assert_json(&reply);
        if max_send > 0 && reply.len() > max_send {
            // Only the fixed-size "response too large" error may exceed a tiny limit.
            assert!(String::from_utf8_lossy(&reply).contains("response too large"));
        }
    }
    if let Params::Named(map) = &request.params {
        let _ = py_str(&Value::Object(map.clone()));
    }
    assert_json(&codec.encode_notification(&request.method, &[]));
}

fuzz_target!(|data: &[u8]| {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let max_recv = limit as usize * 16;
    let max_send = (limit as usize % 7) * 64;
    runtime().block_on(async {
        let mut reader = LineReader::new(std::io::Cursor::new(rest.to_vec()), max_recv);
        let mut codec = Codec::new();
        loop {
            let message = match reader.read().await {
                Ok(ReadEvent::Message(message)) => message,
                Ok(ReadEvent::Oversize | ReadEvent::Closed) | Err(_) => break,
            };
            assert!(max_recv == 0 || message.len() <= max_recv);
            match codec.decode(&message) {
                Err(error) => {
                    if let Some(reply) = error.reply {
                        assert_json(&reply);
                    }
                }
                Ok(Incoming::Single(request)) => answer(&codec, request, max_send),
                Ok(Incoming::Batch(members)) => {
                    for member in members {
                        match member {
                            Ok(request) => answer(&codec, request, max_send),
                            Err(reply) => assert_json(&reply),
                        }
                    }
                }
            }
        }
    });
});
