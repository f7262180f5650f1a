//! Electrum protocol versions and their negotiation in `server.version`, with Python's
//! tuple semantics as ElectrumX applies them.

use std::fmt;

use serde_json::Value;

/// A dotted protocol version, compared part by part like a Python tuple.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion(Vec<i64>);

/// The range this server speaks.
pub const PROTOCOL_MIN: &[i64] = &[1, 4];
pub const PROTOCOL_MAX: &[i64] = &[1, 6];

impl ProtocolVersion {
    pub fn new(parts: &[i64]) -> ProtocolVersion {
        ProtocolVersion(parts.to_vec())
    }

    pub fn min() -> ProtocolVersion {
        ProtocolVersion::new(PROTOCOL_MIN)
    }

    pub fn max() -> ProtocolVersion {
        ProtocolVersion::new(PROTOCOL_MAX)
    }

    /// Whether this version is at least `parts` (e.g. `at_least(&[1, 6])`).
    pub fn at_least(&self, parts: &[i64]) -> bool {
        self.0.as_slice() >= parts
    }

    /// ElectrumX's `protocol_tuple`: a bad string, or anything not a string, is version 0.
    fn from_value(value: &Value) -> ProtocolVersion {
        let bad = ProtocolVersion(vec![0]);
        let Value::String(text) = value else {
            return bad;
        };
        let parts: Option<Vec<i64>> = text.split('.').map(parse_python_int).collect();
        parts.map(ProtocolVersion).unwrap_or(bad)
    }

    fn is_zero(&self) -> bool {
        self.0 == [0]
    }
}

fn parse_python_int(part: &str) -> Option<i64> {
    let p = part.trim();
    let digits = p.strip_prefix(['+', '-']).unwrap_or(p);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.strip_prefix('+').unwrap_or(p).parse().ok()
}

impl fmt::Display for ProtocolVersion {
    /// Always at least one dot: (1,) is "1.0".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = self.0.clone();
        while parts.len() < 2 {
            parts.push(0);
        }
        let text: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        f.write_str(&text.join("."))
    }
}

/// Negotiates from the client's `protocol_version` argument (absent: our minimum; a
/// string; or a `[min, max]` pair). None when there is no version in common.
pub fn negotiate(requested: Option<&Value>) -> Option<ProtocolVersion> {
    let (client_min, client_max) = match requested {
        None | Some(Value::Null) => (ProtocolVersion::min(), ProtocolVersion::min()),
        Some(Value::Array(pair)) if pair.len() == 2 => (
            ProtocolVersion::from_value(&pair[0]),
            ProtocolVersion::from_value(&pair[1]),
        ),
        Some(other) => (
            ProtocolVersion::from_value(other),
            ProtocolVersion::from_value(other),
        ),
    };
    let result = client_max.min(ProtocolVersion::max());
    if result < client_min.max(ProtocolVersion::min()) || result.is_zero() {
        return None;
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn neg(v: Value) -> Option<String> {
        negotiate(Some(&v)).map(|v| v.to_string())
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(None).unwrap().to_string(), "1.4");
        assert_eq!(neg(Value::Null).as_deref(), Some("1.4"));
        assert_eq!(neg(json!("1.4")).as_deref(), Some("1.4"));
        assert_eq!(neg(json!("1.4.2")).as_deref(), Some("1.4.2"));
        assert_eq!(neg(json!("1.6")).as_deref(), Some("1.6"));
        assert_eq!(neg(json!(["1.1", "1.6"])).as_deref(), Some("1.6"));
        assert_eq!(neg(json!(["1.4", "2.0"])).as_deref(), Some("1.6"));
        assert_eq!(neg(json!(["1.4", "1.5"])).as_deref(), Some("1.5"));
        // Python tuples: (1, 6) < (1, 6, 0), so "1.6.0" alone is below its own minimum.
        assert_eq!(neg(json!("1.6.0")), None);
        assert_eq!(neg(json!(["1.4", "1.6.0"])).as_deref(), Some("1.6"));
        assert_eq!(neg(json!(["1.2", "1.4.1"])).as_deref(), Some("1.4.1"));
        assert_eq!(neg(json!(" 1 . 5 ")).as_deref(), Some("1.5"));
    }

    #[test]
    fn unsupported() {
        assert_eq!(neg(json!("1.3")), None);
        assert_eq!(neg(json!("1.7")), None);
        assert_eq!(neg(json!(["1.7", "1.8"])), None);
        assert_eq!(neg(json!("x")), None);
        assert_eq!(neg(json!("")), None);
        assert_eq!(neg(json!(1.4)), None);
        assert_eq!(neg(json!(["1.4", "1.5", "1.6"])), None);
        assert_eq!(neg(json!(["1.4", 1.6])), None);
    }

    #[test]
    fn comparisons() {
        let v = ProtocolVersion::new(&[1, 4, 2]);
        assert!(v.at_least(&[1, 4]) && v.at_least(&[1, 4, 2]) && !v.at_least(&[1, 5]));
        assert_eq!(ProtocolVersion::new(&[1]).to_string(), "1.0");
    }
}
