//! Core's JSON-RPC framing over HTTP: basic auth, JSON-RPC 1.0/1.1 and 2.0 envelopes, batches,
//! notifications, and the HTTP status codes Core picks for each case.

use std::sync::Arc;

use bitcoin::base64::engine::general_purpose::STANDARD as BASE64;
use bitcoin::base64::Engine;
use serde_json::{json, Value};

use super::http::{Request, Response};

/// Core's RPC error codes used here.
pub mod code {
    pub const MISC_ERROR: i32 = -1;
    pub const TYPE_ERROR: i32 = -3;
    pub const INVALID_ADDRESS_OR_KEY: i32 = -5;
    pub const INVALID_PARAMETER: i32 = -8;
    pub const DESERIALIZATION_ERROR: i32 = -22;
    pub const TRANSACTION_ERROR: i32 = -25;
    pub const TRANSACTION_REJECTED: i32 = -26;
    pub const TRANSACTION_ALREADY_IN_CHAIN: i32 = -27;
    pub const IN_WARMUP: i32 = -28;
    pub const INVALID_REQUEST: i32 = -32600;
    pub const METHOD_NOT_FOUND: i32 = -32601;
    pub const PARSE_ERROR: i32 = -32700;
}

#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }
}

/// A method's result: a JSON value, JSON text, or a JSON string holding the hex of some bytes
/// (written straight into the response: serving block hex is the hot path).
pub enum Reply {
    Value(Value),
    Raw(String),
    Hex(Arc<Vec<u8>>),
}

impl From<Value> for Reply {
    fn from(v: Value) -> Self {
        Reply::Value(v)
    }
}

impl Reply {
    fn write_to(self, out: &mut Vec<u8>) {
        match self {
            Reply::Value(v) => out.extend_from_slice(v.to_string().as_bytes()),
            Reply::Raw(s) => out.extend_from_slice(s.as_bytes()),
            Reply::Hex(bytes) => {
                out.push(b'"');
                hex_into(out, &bytes);
                out.push(b'"');
            }
        }
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX_DIGITS[i >> 4], HEX_DIGITS[i & 15]];
        i += 1;
    }
    table
};

/// Appends lower-case hex of `data`.
pub fn hex_into(out: &mut Vec<u8>, data: &[u8]) {
    let start = out.len();
    out.resize(start + data.len() * 2, 0);
    for (pair, byte) in out[start..].chunks_exact_mut(2).zip(data) {
        pair.copy_from_slice(&HEX_PAIRS[*byte as usize]);
    }
}

/// Runs one call: method name and params (an array, or an object of named params).
pub trait Dispatch {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, RpcError>;
}

const WWW_AUTHENTICATE: &str = "Basic realm=\"jsonrpc\"";

/// Core's `HTTPReq_JSONRPC`, given the accepted `user:password` pair (None: no auth, for the
/// emulator's control port).
pub fn handle(req: &Request, credentials: Option<&str>, dispatch: &dyn Dispatch) -> Response {
    if req.method != "POST" {
        return Response::new(
            405,
            "text/html; charset=ISO-8859-1",
            b"JSONRPC server handles only POST requests".to_vec(),
        );
    }
    if credentials.is_some_and(|c| !authorized(req.header("authorization"), c)) {
        let mut r = Response::empty(401);
        r.headers
            .push(("WWW-Authenticate", WWW_AUTHENTICATE.into()));
        r.headers
            .push(("Content-Type", "text/html; charset=ISO-8859-1".into()));
        return r;
    }
    let request: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(_) => {
            let e = RpcError::new(code::PARSE_ERROR, "Parse error");
            return error_reply(&e, Some(&Value::Null));
        }
    };
    match request {
        Value::Object(_) => single(&request, dispatch),
        Value::Array(items) => batch(&items, dispatch),
        _ => error_reply(
            &RpcError::new(code::PARSE_ERROR, "Top-level object parse error"),
            Some(&Value::Null),
        ),
    }
}

fn authorized(header: Option<&str>, credentials: &str) -> bool {
    let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    match BASE64.decode(encoded.trim()) {
        Ok(decoded) => decoded.contains(&b':') && decoded == credentials.as_bytes(),
        Err(_) => false,
    }
}

/// A parsed request object (Core's `JSONRPCRequest::parse`).
struct Call<'a> {
    id: Option<&'a Value>,
    v2: bool,
    method: &'a str,
    params: Value,
}

fn parse(request: &Value) -> Result<Call<'_>, (Option<&Value>, bool, RpcError)> {
    let invalid = |m: &str| RpcError::new(code::INVALID_REQUEST, m);
    let Some(obj) = request.as_object() else {
        return Err((None, false, invalid("Invalid Request object")));
    };
    let id = obj.get("id");
    let v2 = match obj.get("jsonrpc") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "1.0" => false,
        Some(Value::String(s)) if s == "2.0" => true,
        Some(Value::String(_)) => {
            return Err((id, false, invalid("JSON-RPC version not supported")))
        }
        Some(_) => return Err((id, false, invalid("jsonrpc field must be a string"))),
    };
    let method = match obj.get("method") {
        None | Some(Value::Null) => return Err((id, v2, invalid("Missing method"))),
        Some(Value::String(m)) => m.as_str(),
        Some(_) => return Err((id, v2, invalid("Method must be a string"))),
    };
    let params = match obj.get("params") {
        Some(p @ (Value::Array(_) | Value::Object(_))) => p.clone(),
        None | Some(Value::Null) => Value::Array(Vec::new()),
        Some(_) => return Err((id, v2, invalid("Params must be an array or object"))),
    };
    Ok(Call {
        id,
        v2,
        method,
        params,
    })
}

/// The reply object's text (Core's `JSONRPCReplyObj`).
fn envelope(result: Result<Reply, RpcError>, id: Option<&Value>, v2: bool) -> Vec<u8> {
    let capacity = match &result {
        Ok(Reply::Hex(bytes)) => bytes.len() * 2 + 64,
        _ => 256,
    };
    let mut out = Vec::with_capacity(capacity);
    out.push(b'{');
    if v2 {
        out.extend_from_slice(b"\"jsonrpc\":\"2.0\",");
    }
    match result {
        Ok(reply) => {
            out.extend_from_slice(b"\"result\":");
            reply.write_to(&mut out);
            if !v2 {
                out.extend_from_slice(b",\"error\":null");
            }
        }
        Err(e) => {
            if !v2 {
                out.extend_from_slice(b"\"result\":null,");
            }
            out.extend_from_slice(b"\"error\":");
            out.extend_from_slice(e.to_json().to_string().as_bytes());
        }
    }
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id.to_string().as_bytes());
    }
    out.push(b'}');
    out
}

/// A reply line: the envelope and Core's trailing newline.
fn line(mut envelope: Vec<u8>) -> Vec<u8> {
    envelope.push(b'\n');
    envelope
}

fn single(request: &Value, dispatch: &dyn Dispatch) -> Response {
    let call = match parse(request) {
        Ok(c) => c,
        Err((id, _, e)) => return error_reply(&e, id),
    };
    let result = dispatch.call(call.method, &call.params);
    if call.v2 {
        if call.id.is_none() {
            return Response::empty(204);
        }
        return Response::json_bytes(200, line(envelope(result, call.id, true)));
    }
    match result {
        Ok(r) => Response::json_bytes(200, line(envelope(Ok(r), call.id, false))),
        Err(e) => error_reply(&e, call.id),
    }
}

/// A legacy (1.x) error: HTTP 500, or 400 / 404 for invalid request / unknown method.
fn error_reply(e: &RpcError, id: Option<&Value>) -> Response {
    let status = match e.code {
        code::INVALID_REQUEST => 400,
        code::METHOD_NOT_FOUND => 404,
        _ => 500,
    };
    Response::json_bytes(status, line(envelope(Err(e.clone()), id, false)))
}

fn batch(items: &[Value], dispatch: &dyn Dispatch) -> Response {
    let mut replies = Vec::with_capacity(items.len());
    // Core parses every item into one request object, so an item that is not an object is
    // answered with the id and version of the item before it (null and 1.x at first).
    let null = Value::Null;
    let (mut last_id, mut last_v2) = (Some(&null), false);
    for item in items {
        match parse(item) {
            Ok(call) => {
                let result = dispatch.call(call.method, &call.params);
                if !(call.v2 && call.id.is_none()) {
                    replies.push(envelope(result, call.id, call.v2));
                }
                (last_id, last_v2) = (call.id, call.v2);
            }
            Err((id, v2, e)) => {
                if item.is_object() {
                    (last_id, last_v2) = (id, v2);
                }
                // Still a "notification" (2.0 without id): no reply, even to an error.
                if !(last_v2 && last_id.is_none()) {
                    replies.push(envelope(Err(e), last_id, last_v2));
                }
            }
        }
    }
    if replies.is_empty() && !items.is_empty() {
        return Response::empty(204);
    }
    let mut body = vec![b'['];
    for (i, reply) in replies.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(reply);
    }
    body.extend_from_slice(b"]\n");
    Response::json_bytes(200, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_follow_the_request_version() {
        let id = json!(7);
        assert_eq!(
            envelope(Ok(json!(1).into()), Some(&id), false),
            br#"{"result":1,"error":null,"id":7}"#
        );
        assert_eq!(
            envelope(Err(RpcError::new(-8, "x")), Some(&id), true),
            br#"{"jsonrpc":"2.0","error":{"code":-8,"message":"x"},"id":7}"#
        );
        let hex = envelope(
            Ok(Reply::Hex(Arc::new(vec![0, 0xab, 0xff]))),
            Some(&id),
            false,
        );
        assert_eq!(hex, br#"{"result":"00abff","error":null,"id":7}"#);
    }
}
