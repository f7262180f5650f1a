//! Method arguments checked the way ElectrumX checks them, with its error messages word for
//! word (Python's `int()`, `str()` and truthiness included).

use ferrum_storage::{Hash32, HashX, HASHX_LEN};
use serde_json::Value;

use crate::hex::{is_hex_str, parse_hash};
use crate::jsonrpc::{py_str, RpcError};

/// ElectrumX's `non_negative_integer`: anything Python's `int()` takes and is at least zero.
pub fn non_negative_integer(value: &Value) -> Result<u64, RpcError> {
    let shown = match python_int(value) {
        Some(n) if n >= 0 => return Ok(u64::try_from(n).unwrap_or(u64::MAX)),
        Some(n) => n.to_string(),
        None => py_str(value),
    };
    Err(RpcError::bad_request(format!(
        "{shown} should be a non-negative integer"
    )))
}

/// An optional integer argument with a default (absent means the default, as in Python).
pub fn non_negative_or(value: &Option<Value>, default: u64) -> Result<u64, RpcError> {
    value.as_ref().map_or(Ok(default), non_negative_integer)
}

/// Python's `int(value)` for a JSON value; None where it raises.
fn python_int(value: &Value) -> Option<i128> {
    match value {
        Value::Bool(b) => Some(i128::from(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Some(i128::from(i)),
            (_, Some(u), _) => Some(i128::from(u)),
            (_, _, Some(f)) if f.is_finite() => Some(f.trunc() as i128),
            _ => None,
        },
        Value::String(s) => parse_python_int(s),
        _ => None,
    }
}

/// Python's `int(str)`: surrounding whitespace, a sign, digits with single underscores
/// between them.
fn parse_python_int(text: &str) -> Option<i128> {
    let t = text.trim();
    let (negative, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let mut n: i128 = 0;
    for c in digits.bytes().filter(|&c| c != b'_') {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.saturating_mul(10).saturating_add(i128::from(c - b'0'));
    }
    Some(if negative { -n } else { n })
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

/// ElectrumX's `value in (False, True)` check: booleans, and the numbers equal to 0 or 1.
/// Returns the truth value.
pub fn boolean_flag(value: &Option<Value>, name: &str) -> Result<bool, RpcError> {
    match value {
        None | Some(Value::Bool(false)) => Ok(false),
        Some(Value::Bool(true)) => Ok(true),
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Ok(false),
        Some(Value::Number(n)) if n.as_f64() == Some(1.0) => Ok(true),
        Some(_) => Err(RpcError::bad_request(format!(
            "\"{name}\" must be a boolean"
        ))),
    }
}

/// ElectrumX's `scripthash_to_hashX`: the store key of an Electrum script hash.
pub fn script_hash(value: &Value) -> Result<HashX, RpcError> {
    if let Some(hash) = value.as_str().and_then(parse_hash) {
        let mut key = [0u8; HASHX_LEN];
        key.copy_from_slice(&hash[..HASHX_LEN]);
        return Ok(key);
    }
    Err(RpcError::bad_request(format!(
        "{} is not a valid script hash",
        py_str(value)
    )))
}

/// ElectrumX's `assert_txid_hum`: a txid as displayed, returned in internal order.
pub fn tx_hash(value: &Value) -> Result<Hash32, RpcError> {
    value.as_str().and_then(parse_hash).ok_or_else(|| {
        RpcError::bad_request(format!("{} should be a transaction hash", py_str(value)))
    })
}

/// ElectrumX's `assert_hex_str`.
pub fn hex_string(value: &Value) -> Result<&str, RpcError> {
    match value {
        Value::String(s) if is_hex_str(s) => Ok(s),
        other => Err(RpcError::bad_request(format!(
            "{} should be a hex string",
            py_str(other)
        ))),
    }
}

/// ElectrumX's `assert_list_or_tuple`.
pub fn list(value: &Value) -> Result<&[Value], RpcError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(RpcError::bad_request(format!(
            "{} should be a list",
            py_str(other)
        ))),
    }
}

/// `blockchain.estimatefee`'s mode: a string is upper-cased and must be a known mode;
/// anything else counts as no mode.
pub fn estimate_mode(value: &Option<Value>) -> Result<Option<String>, RpcError> {
    let Some(Value::String(mode)) = value else {
        return Ok(None);
    };
    let mode = mode.to_uppercase();
    if mode == "CONSERVATIVE" || mode == "ECONOMICAL" {
        Ok(Some(mode))
    } else {
        Err(RpcError::bad_request(format!(
            "unknown estimatefee mode: {mode}"
        )))
    }
}

/// ElectrumX's `util.protocol_tuple` of a client name: its dotted version, or [0].
pub fn version_tuple(text: &str) -> Vec<i128> {
    text.split('.')
        .map(parse_python_int)
        .collect::<Option<Vec<_>>>()
        .unwrap_or_else(|| vec![0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nni(v: Value) -> Result<u64, String> {
        non_negative_integer(&v).map_err(|e| {
            assert_eq!(e.code, 1);
            e.message
        })
    }

    #[test]
    fn non_negative_integers_like_python_int() {
        assert_eq!(nni(json!(5)), Ok(5));
        assert_eq!(nni(json!(true)), Ok(1));
        assert_eq!(nni(json!(2.9)), Ok(2));
        assert_eq!(nni(json!(-0.5)), Ok(0));
        assert_eq!(nni(json!(" 1_000 ")), Ok(1000));
        assert_eq!(nni(json!("+7")), Ok(7));
        assert_eq!(
            nni(json!(-1)).unwrap_err(),
            "-1 should be a non-negative integer"
        );
        assert_eq!(
            nni(json!(-1.5)).unwrap_err(),
            "-1 should be a non-negative integer"
        );
        assert_eq!(
            nni(json!("-3")).unwrap_err(),
            "-3 should be a non-negative integer"
        );
        assert_eq!(
            nni(json!("1.5")).unwrap_err(),
            "1.5 should be a non-negative integer"
        );
        assert_eq!(
            nni(json!("a")).unwrap_err(),
            "a should be a non-negative integer"
        );
        assert_eq!(
            nni(json!("1__0")).unwrap_err(),
            "1__0 should be a non-negative integer"
        );
        assert_eq!(
            nni(json!(null)).unwrap_err(),
            "None should be a non-negative integer"
        );
        assert_eq!(
            nni(json!([1])).unwrap_err(),
            "[1] should be a non-negative integer"
        );
        assert_eq!(non_negative_or(&None, 0), Ok(0));
    }

    #[test]
    fn boolean_flags() {
        for (v, b) in [
            (json!(true), true),
            (json!(0), false),
            (json!(1.0), true),
            (json!(false), false),
        ] {
            assert_eq!(boolean_flag(&Some(v), "verbose"), Ok(b));
        }
        assert_eq!(boolean_flag(&None, "merkle"), Ok(false));
        for v in [json!(2), json!("true"), json!(null), json!([])] {
            assert_eq!(
                boolean_flag(&Some(v), "merkle").unwrap_err().message,
                "\"merkle\" must be a boolean"
            );
        }
    }

    #[test]
    fn hashes() {
        let sh = "a".repeat(62) + "01";
        let key = script_hash(&json!(sh)).unwrap();
        assert_eq!(key[0], 0x01);
        assert_eq!(key[1], 0xaa);
        assert_eq!(
            script_hash(&json!("ab")).unwrap_err().message,
            "ab is not a valid script hash"
        );
        assert_eq!(
            script_hash(&json!(5)).unwrap_err().message,
            "5 is not a valid script hash"
        );
        assert!(tx_hash(&json!("00".repeat(32))).is_ok());
        assert_eq!(
            tx_hash(&json!(null)).unwrap_err().message,
            "None should be a transaction hash"
        );
        assert_eq!(
            tx_hash(&json!("zz")).unwrap_err().message,
            "zz should be a transaction hash"
        );
    }

    #[test]
    fn hex_and_lists() {
        assert_eq!(hex_string(&json!("00ff")), Ok("00ff"));
        assert_eq!(
            hex_string(&json!("0ff")).unwrap_err().message,
            "0ff should be a hex string"
        );
        assert_eq!(
            hex_string(&json!(1)).unwrap_err().message,
            "1 should be a hex string"
        );
        assert_eq!(
            list(&json!("ab")).unwrap_err().message,
            "ab should be a list"
        );
        assert_eq!(list(&json!(["ab"])).unwrap().len(), 1);
    }

    #[test]
    fn estimate_modes() {
        assert_eq!(estimate_mode(&None), Ok(None));
        assert_eq!(estimate_mode(&Some(json!(5))), Ok(None));
        assert_eq!(
            estimate_mode(&Some(json!("economical"))),
            Ok(Some("ECONOMICAL".into()))
        );
        assert_eq!(
            estimate_mode(&Some(json!("Conservative"))),
            Ok(Some("CONSERVATIVE".into()))
        );
        assert_eq!(
            estimate_mode(&Some(json!("fast"))).unwrap_err().message,
            "unknown estimatefee mode: FAST"
        );
    }

    #[test]
    fn client_versions() {
        assert_eq!(version_tuple("3.3.2"), vec![3, 3, 2]);
        assert_eq!(version_tuple("4.5"), vec![4, 5]);
        assert_eq!(version_tuple("electrum/4.5"), vec![0]);
        assert_eq!(version_tuple("unknown"), vec![0]);
        assert!(truthy(&json!(1)) && !truthy(&json!("")) && !truthy(&json!(null)));
    }
}
