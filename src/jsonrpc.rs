//! JSON-RPC 1.0/2.0 messages as aiorpcx (ElectrumX's library) reads and writes them:
//! protocol auto-detection, batches, positional and named parameters, error codes and
//! their exact messages.

use serde_json::{Map, Value};

/// Error codes of JSON-RPC and of aiorpcx.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_ARGS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
pub const EXCESSIVE_RESOURCE_USAGE: i64 = -101;
pub const SERVER_BUSY: i64 = -102;
/// Electrum protocol errors (ElectrumX's session.py).
pub const BAD_REQUEST: i64 = 1;
pub const DAEMON_ERROR: i64 = 2;
pub const HISTORY_TOO_LARGE: i64 = 10_001;

/// An error answered to one request.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    /// Extra session cost for an error that took resources to discover.
    pub cost: f64,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            cost: 0.0,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> RpcError {
        RpcError::new(BAD_REQUEST, message)
    }

    pub fn daemon_error(message: impl Into<String>) -> RpcError {
        RpcError::new(DAEMON_ERROR, message)
    }

    pub fn invalid_args(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_ARGS, message)
    }

    pub fn unknown_method(method: &str) -> RpcError {
        RpcError::new(METHOD_NOT_FOUND, format!("unknown method \"{method}\""))
    }

    pub fn with_cost(mut self, cost: f64) -> RpcError {
        self.cost = cost;
        self
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// A result already serialized as JSON text. Backends can build large results (histories)
/// straight into text instead of through a `Value` tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawJson(String);

impl RawJson {
    /// Wraps text the caller guarantees to be one valid JSON value.
    pub fn from_json_unchecked(text: String) -> RawJson {
        debug_assert!(
            serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok(),
            "not JSON: {text}"
        );
        RawJson(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&Value> for RawJson {
    fn from(value: &Value) -> RawJson {
        RawJson(to_json(value))
    }
}

impl From<Value> for RawJson {
    fn from(value: Value) -> RawJson {
        RawJson::from(&value)
    }
}

/// Request parameters as sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Params {
    Positional(Vec<Value>),
    Named(Map<String, Value>),
}

/// A handler's parameters: names in order, the first `required` of them mandatory.
#[derive(Clone, Copy, Debug)]
pub struct Signature {
    pub names: &'static [&'static str],
    pub required: usize,
    /// Takes `*args, **kwargs` too: any count and any names, extras ignored.
    pub extras: bool,
}

impl Signature {
    pub const fn new(names: &'static [&'static str], required: usize) -> Signature {
        Signature {
            names,
            required,
            extras: false,
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

impl Params {
    /// Binds to a signature: one slot per name, None where an optional one is absent.
    /// Errors are aiorpcx's `handler_invocation` errors, word for word.
    pub fn bind(self, method: &str, sig: &Signature) -> Result<Vec<Option<Value>>, RpcError> {
        let max = sig.names.len();
        match self {
            Params::Positional(args) => {
                let n = args.len();
                if n < sig.required {
                    return Err(RpcError::invalid_args(format!(
                        "{n} argument{} passed to method \"{method}\" but it requires {}",
                        plural(n),
                        sig.required
                    )));
                }
                if n > max && !sig.extras {
                    return Err(RpcError::invalid_args(format!(
                        "{n} argument{} passed to method {method} taking at most {max}",
                        plural(n)
                    )));
                }
                let mut slots: Vec<Option<Value>> = args.into_iter().take(max).map(Some).collect();
                slots.resize(max, None);
                Ok(slots)
            }
            Params::Named(mut map) => {
                let mut missing: Vec<String> = sig.names[..sig.required]
                    .iter()
                    .filter(|n| !map.contains_key(**n))
                    .map(|n| format!("\"{n}\""))
                    .collect();
                if !missing.is_empty() {
                    missing.sort();
                    return Err(RpcError::invalid_args(format!(
                        "method \"{method}\" requires parameter{} {}",
                        plural(missing.len()),
                        missing.join(", ")
                    )));
                }
                if !sig.extras {
                    let mut excess: Vec<String> = map
                        .keys()
                        .filter(|k| !sig.names.contains(&k.as_str()))
                        .map(|k| format!("\"{k}\""))
                        .collect();
                    if !excess.is_empty() {
                        excess.sort();
                        return Err(RpcError::invalid_args(format!(
                            "method \"{method}\" does not take parameter{} {}",
                            plural(excess.len()),
                            excess.join(", ")
                        )));
                    }
                }
                Ok(sig.names.iter().map(|n| map.remove(*n)).collect())
            }
        }
    }
}

/// One incoming request or notification (a notification has no id).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub method: String,
    pub params: Params,
    /// None for a notification (no id, or a null id).
    pub id: Option<Value>,
}

/// What a received message holds.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Single(Request),
    /// Members in order: a request, or the encoded error answering a bad member.
    Batch(Vec<Result<Request, Vec<u8>>>),
}

/// A message that breaks the protocol. It counts as a session error; `reply`, when
/// present, is sent back as is.
#[derive(Debug, PartialEq)]
pub struct ProtocolError {
    pub code: i64,
    pub message: String,
    pub reply: Option<Vec<u8>>,
}

/// The JSON-RPC dialect of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    /// Not yet known: the first well-formed message decides.
    AutoDetect,
    V1,
    V2,
    /// No `"jsonrpc"` member: accepted, answered in 2.0 form.
    Loose,
}

/// Decodes and encodes messages of one connection.
#[derive(Debug)]
pub struct Codec {
    dialect: Dialect,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

fn dialect_of(payload: &Value) -> Dialect {
    let Value::Object(map) = payload else {
        return Dialect::Loose;
    };
    match map.get("jsonrpc") {
        Some(Value::String(v)) if v == "2.0" => Dialect::V2,
        Some(Value::String(v)) if v == "1.0" => Dialect::V1,
        _ if map.contains_key("result") && map.contains_key("error") => Dialect::V1,
        _ => Dialect::Loose,
    }
}

fn detect(payload: &Value) -> Dialect {
    match payload {
        Value::Array(items) => {
            let dialects: Vec<Dialect> = items.iter().map(dialect_of).collect();
            if let Some(first) = dialects.first() {
                if dialects.iter().all(|d| d == first) {
                    return *first;
                }
            }
            [Dialect::V2, Dialect::V1]
                .into_iter()
                .find(|d| dialects.contains(d))
                .unwrap_or(Dialect::Loose)
        }
        other => dialect_of(other),
    }
}

fn is_response(payload: &Value) -> bool {
    matches!(payload, Value::Object(m) if m.contains_key("result") || m.contains_key("error"))
}

impl Codec {
    pub fn new() -> Codec {
        Codec {
            dialect: Dialect::AutoDetect,
        }
    }

    /// Decodes one unframed message.
    pub fn decode(&mut self, message: &[u8]) -> Result<Incoming, ProtocolError> {
        let payload = self.parse(message)?;
        if self.dialect == Dialect::AutoDetect {
            self.dialect = detect(&payload);
        }
        match payload {
            Value::Object(ref map) if map.contains_key("method") => self
                .request(payload)
                .map(Incoming::Single)
                .map_err(|(code, message, id)| self.error(code, message, &id)),
            Value::Object(_) => Err(ProtocolError {
                code: INVALID_REQUEST,
                message: "response to unsent request".into(),
                reply: None,
            }),
            Value::Array(items) if self.dialect != Dialect::V1 => {
                if items.is_empty() {
                    return Err(self.error(INVALID_REQUEST, "batch is empty".into(), &Value::Null));
                }
                if items.iter().all(is_response) {
                    return Err(ProtocolError {
                        code: INVALID_REQUEST,
                        message: "response to unsent batch".into(),
                        reply: None,
                    });
                }
                let members: Vec<Result<Request, Vec<u8>>> = items
                    .into_iter()
                    .map(|item| {
                        self.request(item).map_err(|(code, message, id)| {
                            self.encode_error(&RpcError::new(code, message), &id)
                        })
                    })
                    .collect();
                if members.iter().all(|m| m.is_err()) {
                    let parts: Vec<Vec<u8>> = members.into_iter().filter_map(|m| m.err()).collect();
                    return Err(ProtocolError {
                        code: 0,
                        message: String::new(),
                        reply: Some(join_batch(&parts)),
                    });
                }
                Ok(Incoming::Batch(members))
            }
            _ => Err(self.error(
                INVALID_REQUEST,
                "request object must be a dictionary".into(),
                &Value::Null,
            )),
        }
    }

    fn parse(&self, message: &[u8]) -> Result<Value, ProtocolError> {
        let text = std::str::from_utf8(message).map_err(|_| {
            self.error(
                PARSE_ERROR,
                "messages must be encoded in UTF-8".into(),
                &Value::Null,
            )
        })?;
        serde_json::from_str(text)
            .map_err(|_| self.error(PARSE_ERROR, "invalid JSON".into(), &Value::Null))
    }

    fn error(&self, code: i64, message: String, id: &Value) -> ProtocolError {
        let reply = Some(self.encode_error(&RpcError::new(code, message.clone()), id));
        ProtocolError {
            code,
            message,
            reply,
        }
    }

    /// Validates a request payload; an error carries the id to answer with.
    fn request(&self, payload: Value) -> Result<Request, (i64, String, Value)> {
        let Value::Object(mut map) = payload else {
            return Err((
                INVALID_REQUEST,
                "request object must be a dictionary".into(),
                Value::Null,
            ));
        };
        let id = if self.dialect == Dialect::V1 {
            map.remove("id").ok_or((
                INVALID_REQUEST,
                "request has no \"id\"".into(),
                Value::Null,
            ))?
        } else {
            let id = map.remove("id").unwrap_or(Value::Null);
            if matches!(id, Value::Array(_) | Value::Object(_)) {
                return Err((
                    INVALID_REQUEST,
                    format!("invalid \"id\": {}", py_str(&id)),
                    Value::Null,
                ));
            }
            id
        };
        if matches!(self.dialect, Dialect::V2 | Dialect::AutoDetect)
            && map.get("jsonrpc") != Some(&Value::String("2.0".into()))
        {
            return Err((INVALID_REQUEST, "\"jsonrpc\" is not \"2.0\"".into(), id));
        }
        let params = match map.remove("params") {
            Some(Value::Array(args)) => Params::Positional(args),
            Some(Value::Object(args)) if self.dialect != Dialect::V1 => Params::Named(args),
            None if self.dialect != Dialect::V1 => Params::Positional(Vec::new()),
            other => {
                let shown = other.map(|v| py_str(&v)).unwrap_or_else(|| "None".into());
                return Err((
                    INVALID_ARGS,
                    format!("invalid request arguments: {shown}"),
                    id,
                ));
            }
        };
        let method = match map.remove("method") {
            Some(Value::String(method)) => method,
            _ => return Err((METHOD_NOT_FOUND, "method must be a string".into(), id)),
        };
        let id = if id.is_null() { None } else { Some(id) };
        Ok(Request { method, params, id })
    }

    /// Encodes a successful response.
    pub fn encode_result(&self, result: &RawJson, id: &Value) -> Vec<u8> {
        let (result, id) = (result.as_str(), to_json(id));
        let text = if self.dialect == Dialect::V1 {
            format!("{{\"result\":{result},\"error\":null,\"id\":{id}}}")
        } else {
            format!("{{\"jsonrpc\":\"2.0\",\"result\":{result},\"id\":{id}}}")
        };
        text.into_bytes()
    }

    /// Encodes an error response.
    pub fn encode_error(&self, error: &RpcError, id: &Value) -> Vec<u8> {
        let message = to_json(&Value::String(error.message.clone()));
        let (code, id) = (error.code, to_json(id));
        let text = if self.dialect == Dialect::V1 {
            format!("{{\"result\":null,\"error\":{{\"code\":{code},\"message\":{message}}},\"id\":{id}}}")
        } else {
            format!("{{\"jsonrpc\":\"2.0\",\"error\":{{\"code\":{code},\"message\":{message}}},\"id\":{id}}}")
        };
        text.into_bytes()
    }

    /// Encodes a response, or the error aiorpcx sends instead of one over `max_size` bytes
    /// (zero: no limit).
    pub fn encode_response(
        &self,
        result: &Result<RawJson, RpcError>,
        id: &Value,
        max_size: usize,
    ) -> Vec<u8> {
        let message = match result {
            Ok(value) => self.encode_result(value, id),
            Err(error) => self.encode_error(error, id),
        };
        if max_size > 0 && message.len() > max_size {
            return self.oversized(id, max_size);
        }
        message
    }

    /// aiorpcx's text, unbalanced parenthesis included.
    pub fn oversized(&self, id: &Value, max_size: usize) -> Vec<u8> {
        let text = format!(
            "response too large (over {} bytes",
            thousands(max_size as u64)
        );
        self.encode_error(&RpcError::new(INVALID_REQUEST, text), id)
    }

    /// Encodes a server-to-client notification.
    pub fn encode_notification(&self, method: &str, params: &[Value]) -> Vec<u8> {
        let method = to_json(&Value::String(method.to_string()));
        let params = to_json(&Value::Array(params.to_vec()));
        let text = if self.dialect == Dialect::V1 {
            format!("{{\"method\":{method},\"params\":{params},\"id\":null}}")
        } else if params == "[]" {
            format!("{{\"jsonrpc\":\"2.0\",\"method\":{method}}}")
        } else {
            format!("{{\"jsonrpc\":\"2.0\",\"method\":{method},\"params\":{params}}}")
        };
        text.into_bytes()
    }
}

fn to_json(value: &Value) -> String {
    // Serializing a Value cannot fail: its map keys are strings.
    serde_json::to_string(value).unwrap_or_default()
}

/// Joins encoded responses into a batch response, the way aiorpcx does (", ").
pub fn join_batch(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 2).sum::<usize>() + 2);
    out.push(b'[');
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(part);
    }
    out.push(b']');
    out
}

/// A number with thousands separators, as Python's `{:,d}`.
pub fn thousands(n: u64) -> String {
    group_thousands(&n.to_string())
}

/// Decimal digits with a comma before each group of three from the right.
pub fn group_thousands(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Python truthiness of a JSON value.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Python's `str()` of a JSON-decoded value, used where ElectrumX formats one into a message.
pub fn py_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

fn py_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 => {
                format!("{f:.1}")
            }
            _ => n.to_string(),
        },
        Value::String(s) => {
            let quote = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            let mut out = String::from(quote);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c == quote => {
                        out.push('\\');
                        out.push(c);
                    }
                    c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                        out.push_str(&format!("\\x{:02x}", c as u32))
                    }
                    c => out.push(c),
                }
            }
            out.push(quote);
            out
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(py_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", py_repr(&Value::String(k.clone())), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_truthiness() {
        for v in [
            json!(null),
            json!(false),
            json!(0),
            json!(0.0),
            json!(""),
            json!([]),
            json!({}),
        ] {
            assert!(!truthy(&v), "{v}");
        }
        for v in [
            json!(true),
            json!(1),
            json!("x"),
            json!([0]),
            json!({"a": 0}),
        ] {
            assert!(truthy(&v), "{v}");
        }
    }

    fn decode(codec: &mut Codec, text: &str) -> Result<Incoming, ProtocolError> {
        codec.decode(text.as_bytes())
    }

    fn reply(err: ProtocolError) -> String {
        String::from_utf8(err.reply.expect("a reply")).unwrap()
    }

    #[test]
    fn v2_request_and_response() {
        let mut c = Codec::new();
        let got = decode(
            &mut c,
            r#"{"jsonrpc":"2.0","method":"m","params":[1],"id":7}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            Incoming::Single(Request {
                method: "m".into(),
                params: Params::Positional(vec![json!(1)]),
                id: Some(json!(7))
            })
        );
        assert_eq!(
            c.encode_result(&json!([1, "a"]).into(), &json!(7)),
            br#"{"jsonrpc":"2.0","result":[1,"a"],"id":7}"#
        );
        assert_eq!(
            c.encode_error(&RpcError::bad_request("x \"y\""), &json!("s")),
            br#"{"jsonrpc":"2.0","error":{"code":1,"message":"x \"y\""},"id":"s"}"#
        );
        // Dialect fixed by the first message: a later one without "jsonrpc" is refused.
        let e = decode(&mut c, r#"{"method":"m","id":8}"#).unwrap_err();
        assert_eq!(
            reply(e),
            r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"\"jsonrpc\" is not \"2.0\""},"id":8}"#
        );
    }

    #[test]
    fn notifications_have_no_id() {
        let mut c = Codec::new();
        let got = decode(&mut c, r#"{"jsonrpc":"2.0","method":"m","id":null}"#).unwrap();
        assert_eq!(
            got,
            Incoming::Single(Request {
                method: "m".into(),
                params: Params::Positional(vec![]),
                id: None
            })
        );
        assert_eq!(
            c.encode_notification("n", &[json!(1)]),
            br#"{"jsonrpc":"2.0","method":"n","params":[1]}"#
        );
        assert_eq!(
            c.encode_notification("n", &[]),
            br#"{"jsonrpc":"2.0","method":"n"}"#
        );
    }

    #[test]
    fn v1_dialect() {
        let mut c = Codec::new();
        let got = decode(
            &mut c,
            r#"{"jsonrpc":"1.0","method":"m","params":["a"],"id":"x"}"#,
        )
        .unwrap();
        assert!(matches!(got, Incoming::Single(Request { id: Some(_), .. })));
        assert_eq!(
            c.encode_result(&json!(null).into(), &json!("x")),
            br#"{"result":null,"error":null,"id":"x"}"#
        );
        assert_eq!(
            c.encode_error(&RpcError::new(2, "e"), &json!(1)),
            br#"{"result":null,"error":{"code":2,"message":"e"},"id":1}"#
        );
        let e = decode(&mut c, r#"{"method":"m","params":[]}"#).unwrap_err();
        assert_eq!(
            reply(e),
            r#"{"result":null,"error":{"code":-32600,"message":"request has no \"id\""},"id":null}"#
        );
        let e = decode(&mut c, r#"{"method":"m","id":1}"#).unwrap_err();
        assert_eq!(
            reply(e),
            r#"{"result":null,"error":{"code":-32602,"message":"invalid request arguments: None"},"id":1}"#
        );
        let e = decode(&mut c, r#"{"method":"m","params":{"a":1},"id":1}"#).unwrap_err();
        assert_eq!(e.message, "invalid request arguments: {'a': 1}");
        let e = decode(&mut c, r#"[{"method":"m","params":[],"id":1}]"#).unwrap_err();
        assert_eq!(e.message, "request object must be a dictionary");
        assert_eq!(
            c.encode_notification("n", &[]),
            br#"{"method":"n","params":[],"id":null}"#
        );
    }

    #[test]
    fn loose_dialect_answers_in_v2_form() {
        let mut c = Codec::new();
        let got = decode(&mut c, r#"{"method":"m","params":{"a":1},"id":1}"#).unwrap();
        let Incoming::Single(req) = got else { panic!() };
        assert!(matches!(req.params, Params::Named(_)));
        assert_eq!(
            c.encode_result(&json!(1).into(), &json!(1)),
            br#"{"jsonrpc":"2.0","result":1,"id":1}"#
        );
        assert!(decode(&mut c, r#"{"jsonrpc":"2.0","method":"m","id":2}"#).is_ok());
    }

    #[test]
    fn parse_errors() {
        let mut c = Codec::new();
        let e = decode(&mut c, "{").unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (PARSE_ERROR, "invalid JSON"));
        assert_eq!(
            reply(e),
            r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"invalid JSON"},"id":null}"#
        );
        let e = c.decode(b"\"\xff\"").unwrap_err();
        assert_eq!(e.message, "messages must be encoded in UTF-8");
        // Still undetected after parse errors: a v1 message can come next.
        assert!(decode(
            &mut c,
            r#"{"jsonrpc":"1.0","method":"m","params":[],"id":1}"#
        )
        .is_ok());
        assert_eq!(c.dialect, Dialect::V1);
    }

    #[test]
    fn invalid_requests() {
        let mut c = Codec::new();
        let e = decode(&mut c, "5").unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (INVALID_REQUEST, "request object must be a dictionary")
        );
        let mut c = Codec::new();
        let e = decode(&mut c, "[]").unwrap_err();
        assert_eq!(
            reply(e),
            r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"batch is empty"},"id":null}"#
        );
        let mut c = Codec::new();
        let e = decode(&mut c, r#"{"jsonrpc":"2.0","method":"m","id":[1,"a"]}"#).unwrap_err();
        assert_eq!(
            reply(e),
            r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"invalid \"id\": [1, 'a']"},"id":null}"#
        );
        let e = decode(&mut c, r#"{"jsonrpc":"2.0","method":5,"id":1}"#).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (METHOD_NOT_FOUND, "method must be a string")
        );
        let e = decode(
            &mut c,
            r#"{"jsonrpc":"2.0","method":"m","params":"x","id":1}"#,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (INVALID_ARGS, "invalid request arguments: x")
        );
        // Responses from the client answer nothing we sent: counted, not answered.
        let e = decode(&mut c, r#"{"jsonrpc":"2.0","result":1,"id":1}"#).unwrap_err();
        assert_eq!(e.reply, None);
        let e = decode(&mut c, r#"[{"jsonrpc":"2.0","result":1,"id":1}]"#).unwrap_err();
        assert_eq!(e.reply, None);
    }

    #[test]
    fn batches() {
        let mut c = Codec::new();
        let got = decode(
            &mut c,
            r#"[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"b"},{"jsonrpc":"2.0","id":3}]"#,
        )
        .unwrap();
        let Incoming::Batch(members) = got else {
            panic!()
        };
        assert_eq!(members.len(), 3);
        assert!(matches!(&members[1], Ok(Request { id: None, .. })));
        assert_eq!(
            members[2].as_ref().unwrap_err(),
            br#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"method must be a string"},"id":3}"#
        );
        let e = decode(&mut c, r#"[1, 2]"#).unwrap_err();
        let text = r#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"request object must be a dictionary"},"id":null}"#;
        assert_eq!(reply(e), format!("[{text}, {text}]"));
        assert_eq!(join_batch(&[b"1".to_vec(), b"2".to_vec()]), b"[1, 2]");
    }

    #[test]
    fn oversized_response() {
        let c = Codec::new();
        let big = Ok(RawJson::from(json!("x".repeat(100))));
        assert_eq!(
            c.encode_response(&big, &json!(1), 50),
            br#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"response too large (over 50 bytes"},"id":1}"#
        );
        assert!(c.encode_response(&big, &json!(1), 0).len() > 100);
        assert!(String::from_utf8(c.oversized(&json!(1), 1_000_000))
            .unwrap()
            .contains("(over 1,000,000 bytes\""));
    }

    #[test]
    fn binding_positional() {
        let sig = Signature::new(&["a", "b"], 1);
        let p = |v: Vec<Value>| Params::Positional(v);
        assert_eq!(
            p(vec![json!(1)]).bind("m", &sig).unwrap(),
            vec![Some(json!(1)), None]
        );
        assert_eq!(
            p(vec![]).bind("m", &sig).unwrap_err(),
            RpcError::invalid_args("0 arguments passed to method \"m\" but it requires 1")
        );
        assert_eq!(
            p(vec![json!(1), json!(2), json!(3)])
                .bind("m", &sig)
                .unwrap_err()
                .message,
            "3 arguments passed to method m taking at most 2"
        );
        let sig1 = Signature::new(&["a", "b"], 2);
        assert_eq!(
            p(vec![json!(1)]).bind("m", &sig1).unwrap_err().message,
            "1 argument passed to method \"m\" but it requires 2"
        );
        let extras = Signature {
            names: &["a"],
            required: 0,
            extras: true,
        };
        assert_eq!(
            p(vec![json!(1), json!(2)]).bind("m", &extras).unwrap(),
            vec![Some(json!(1))]
        );
    }

    #[test]
    fn binding_named() {
        let sig = Signature::new(&["a", "b", "c"], 2);
        let named = |v: Value| Params::Named(v.as_object().unwrap().clone());
        assert_eq!(
            named(json!({"b": 2, "a": 1})).bind("m", &sig).unwrap(),
            vec![Some(json!(1)), Some(json!(2)), None]
        );
        assert_eq!(
            named(json!({})).bind("m", &sig).unwrap_err().message,
            "method \"m\" requires parameters \"a\", \"b\""
        );
        assert_eq!(
            named(json!({"a": 1})).bind("m", &sig).unwrap_err().message,
            "method \"m\" requires parameter \"b\""
        );
        assert_eq!(
            named(json!({"a": 1, "b": 2, "z": 0, "y": 0}))
                .bind("m", &sig)
                .unwrap_err()
                .message,
            "method \"m\" does not take parameters \"y\", \"z\""
        );
        let extras = Signature {
            names: &["a"],
            required: 0,
            extras: true,
        };
        assert_eq!(
            named(json!({"q": 1})).bind("m", &extras).unwrap(),
            vec![None]
        );
    }

    #[test]
    fn python_formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(5_000_000), "5,000,000");
        assert_eq!(py_str(&json!("1.4")), "1.4");
        assert_eq!(
            py_str(&json!(["1.4", 1, 1.5, 2.0, null, true, {"k": false}])),
            "['1.4', 1, 1.5, 2.0, None, True, {'k': False}]"
        );
        assert_eq!(py_str(&json!(["it's"])), "[\"it's\"]");
    }
}
