//! Method arguments checked the way ElectrumX checks them, with its error messages word for
//! word (Python's `int()`, `str()` and truthiness included).

use std::fmt;

use ferrum_storage::{Hash32, HashX, HASHX_LEN};
use serde_json::Value;

use crate::hex::{is_hex_str, parse_hash};
use crate::jsonrpc::{py_str, RpcError};

/// CPython's cap on the digits `int(str)` converts (`sys.int_info.default_max_str_digits`).
const MAX_STR_DIGITS: usize = 4300;

/// A non-negative integer argument, exact however large: Python's ints are unbounded, and
/// ElectrumX prints a height or position too large for any chain in full in its messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Integer {
    Small(u64),
    /// Above `u64::MAX`: its decimal digits, without leading zeros.
    Huge(String),
}

impl Integer {
    /// Decimal digits (leading zeros allowed) as an integer.
    fn from_digits(digits: &str) -> Integer {
        let digits = digits.trim_start_matches('0');
        match digits.parse::<u64>() {
            Ok(n) => Integer::Small(n),
            Err(_) if digits.is_empty() => Integer::Small(0),
            Err(_) => Integer::Huge(digits.to_string()),
        }
    }

    /// The value, when it fits in a u64.
    pub fn get(&self) -> Option<u64> {
        match self {
            Integer::Small(n) => Some(*n),
            Integer::Huge(_) => None,
        }
    }

    /// The value, or `u64::MAX` above it: for counts and limits that are clamped anyway.
    pub fn saturating(&self) -> u64 {
        self.get().unwrap_or(u64::MAX)
    }

    /// Python's `f'{n:,d}'`.
    pub fn thousands(&self) -> String {
        crate::jsonrpc::group_thousands(&self.to_string())
    }
}

impl fmt::Display for Integer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Integer::Small(n) => write!(f, "{n}"),
            Integer::Huge(digits) => f.write_str(digits),
        }
    }
}

/// ElectrumX's `non_negative_integer`: anything Python's `int()` takes and is at least zero.
pub fn non_negative_integer(value: &Value) -> Result<Integer, RpcError> {
    let shown = match python_int(value) {
        Some((false, n)) | Some((true, n @ Integer::Small(0))) => return Ok(n),
        Some((true, n)) => format!("-{n}"),
        None => py_str(value),
    };
    Err(RpcError::bad_request(format!(
        "{shown} should be a non-negative integer"
    )))
}

/// An optional integer argument with a default (absent means the default, as in Python).
pub fn non_negative_or(value: &Option<Value>, default: u64) -> Result<Integer, RpcError> {
    value
        .as_ref()
        .map_or(Ok(Integer::Small(default)), non_negative_integer)
}

/// Python's `int(value)` for a JSON value as (is negative, magnitude); None where it raises.
fn python_int(value: &Value) -> Option<(bool, Integer)> {
    match value {
        Value::Bool(b) => Some((false, Integer::Small(u64::from(*b)))),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                return Some((false, Integer::Small(u)));
            }
            if let Some(i) = n.as_i64() {
                return Some((i < 0, Integer::Small(i.unsigned_abs())));
            }
            // Digits past 64 bits are exact where serde_json keeps the number's text (its
            // `arbitrary_precision` feature); without it they arrive as the nearest float.
            let text = n.to_string();
            let (negative, digits) = match text.strip_prefix('-') {
                Some(digits) => (true, digits),
                None => (false, text.as_str()),
            };
            if digits.bytes().all(|c| c.is_ascii_digit()) {
                return Some((negative, Integer::from_digits(digits)));
            }
            // A fraction or an exponent: a float, which int() truncates toward zero, exactly.
            let whole = n.as_f64().filter(|f| f.is_finite())?.trunc();
            Some((
                whole < 0.0,
                Integer::from_digits(&float_digits(whole.abs())),
            ))
        }
        Value::String(s) => parse_python_int(s),
        _ => None,
    }
}

/// The exact decimal digits of a whole, non-negative, finite float.
fn float_digits(whole: f64) -> String {
    if whole < 18_446_744_073_709_551_616.0 {
        return (whole as u64).to_string();
    }
    // whole = mantissa * 2^exponent with exponent > 0 here: double a base-1e9 number.
    let bits = whole.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32 - 1075;
    let mantissa = (bits & ((1 << 52) - 1)) | (1 << 52);
    const BASE: u64 = 1_000_000_000;
    let mut limbs = vec![
        mantissa % BASE,
        mantissa / BASE % BASE,
        mantissa / BASE / BASE,
    ];
    for _ in 0..exponent {
        let mut carry = 0;
        for limb in limbs.iter_mut() {
            let doubled = *limb * 2 + carry;
            *limb = doubled % BASE;
            carry = doubled / BASE;
        }
        if carry > 0 {
            limbs.push(carry);
        }
    }
    let mut digits = String::new();
    for (i, limb) in limbs.iter().rev().enumerate() {
        if i == 0 {
            digits.push_str(&limb.to_string());
        } else {
            digits.push_str(&format!("{limb:09}"));
        }
    }
    digits
}

/// Python's `int(str)`: surrounding whitespace, a sign, then at most 4,300 ASCII digits
/// with single underscores between them.
fn parse_python_int(text: &str) -> Option<(bool, Integer)> {
    // Rust's White_Space is the set int() strips (str.isspace() adds \x1c-\x1f, int() not).
    let t = text.trim();
    let (negative, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let well_formed = digits
        .split('_')
        .all(|run| !run.is_empty() && run.bytes().all(|c| c.is_ascii_digit()));
    let digits = digits.replace('_', "");
    if !well_formed || digits.len() > MAX_STR_DIGITS {
        return None;
    }
    Some((negative, Integer::from_digits(&digits)))
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
    let part = |p: &str| {
        let (negative, n) = parse_python_int(p)?;
        let n = n.get().map_or(i128::MAX, i128::from);
        Some(if negative { -n } else { n })
    };
    text.split('.')
        .map(part)
        .collect::<Option<Vec<_>>>()
        .unwrap_or_else(|| vec![0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `non_negative_integer` of a parameter as it arrives: JSON text.
    fn nni(text: &str) -> Result<Integer, String> {
        let value: Value = serde_json::from_str(text).unwrap();
        non_negative_integer(&value).map_err(|e| {
            assert_eq!(e.code, 1);
            e.message
        })
    }

    fn huge(digits: &str) -> Integer {
        Integer::Huge(digits.into())
    }

    /// Every expectation is what ElectrumX's own `non_negative_integer` answered for
    /// `json.loads(text)`.
    #[test]
    fn non_negative_integers_like_python_int() {
        let ok = [
            ("5", Integer::Small(5)),
            ("true", Integer::Small(1)),
            ("false", Integer::Small(0)),
            ("1.0", Integer::Small(1)),
            ("1.5", Integer::Small(1)),
            ("2.9", Integer::Small(2)),
            ("-0.5", Integer::Small(0)),
            ("-0", Integer::Small(0)),
            ("1E2", Integer::Small(100)),
            ("18446744073709551615", Integer::Small(u64::MAX)),
            ("1e19", Integer::Small(10_000_000_000_000_000_000)),
            (r#"" 1_000 ""#, Integer::Small(1000)),
            (r#""+7""#, Integer::Small(7)),
            (r#""-0""#, Integer::Small(0)),
            (r#""007""#, Integer::Small(7)),
            (r#""\u00a012\u2003""#, Integer::Small(12)),
            ("18446744073709551616", huge("18446744073709551616")),
            ("1e20", huge("100000000000000000000")),
            ("100000000000000000000", huge("100000000000000000000")),
            (
                "1.2345678901234568e+29",
                huge("123456789012345677877719597056"),
            ),
            (r#""00018446744073709551616""#, huge("18446744073709551616")),
            (
                "1.7976931348623157e308",
                huge(concat!(
                    "1797693134862315708145274237317043567980705675258449965989174768031572607",
                    "8002853876058955863276687817154045895351438246423432132688946418276846754",
                    "6703537516986049910576551282076245490090389328944075868508455133942304583",
                    "2369032229481658085593321233482747978262041447231687381771809192998812504",
                    "04026184124858368"
                )),
            ),
        ];
        for (text, expected) in ok {
            assert_eq!(nni(text), Ok(expected), "{text}");
        }
        // Python keeps every digit; serde_json only with `arbitrary_precision`, else the
        // nearest float.
        let past_64_bits = "100000000000000000001";
        let kept = !serde_json::from_str::<Value>(past_64_bits)
            .unwrap()
            .is_f64();
        let read = if kept {
            past_64_bits
        } else {
            "100000000000000000000"
        };
        assert_eq!(nni(past_64_bits), Ok(huge(read)));
        let refused = [
            ("-1", "-1"),
            ("-1.5", "-1"),
            ("-1e20", "-100000000000000000000"),
            ("-18446744073709551616", "-18446744073709551616"),
            (r#""-3""#, "-3"),
            (r#""-99999999999999999999999""#, "-99999999999999999999999"),
            (r#""1.5""#, "1.5"),
            (r#""1e3""#, "1e3"),
            (r#""a""#, "a"),
            (r#""1__0""#, "1__0"),
            (r#""_1""#, "_1"),
            (r#""1_""#, "1_"),
            (r#""+_1""#, "+_1"),
            (r#""- 1""#, "- 1"),
            (r#""1 2""#, "1 2"),
            (r#""-""#, "-"),
            (r#""""#, ""),
            (r#""\u001c42""#, "\u{1c}42"),
            ("null", "None"),
            ("[1]", "[1]"),
            (r#"{"a": 1}"#, "{'a': 1}"),
        ];
        for (text, shown) in refused {
            assert_eq!(
                nni(text),
                Err(format!("{shown} should be a non-negative integer")),
                "{text}"
            );
        }
        // CPython converts at most 4,300 digits of a string, leading zeros included.
        let longest = "0".repeat(10) + &"1".repeat(4290);
        assert_eq!(nni(&format!("\"{longest}\"")), Ok(huge(&"1".repeat(4290))));
        let too_long = "1".repeat(4301);
        assert_eq!(
            nni(&format!("\"{too_long}\"")),
            Err(format!("{too_long} should be a non-negative integer"))
        );
        assert_eq!(non_negative_or(&None, 3), Ok(Integer::Small(3)));
    }

    #[test]
    fn integers_print_like_python() {
        assert_eq!(Integer::Small(0).thousands(), "0");
        assert_eq!(Integer::Small(999).thousands(), "999");
        assert_eq!(Integer::Small(1000).thousands(), "1,000");
        assert_eq!(
            Integer::Small(u64::MAX).thousands(),
            "18,446,744,073,709,551,615"
        );
        let big = huge("100000000000000000000");
        assert_eq!(big.thousands(), "100,000,000,000,000,000,000");
        assert_eq!(big.to_string(), "100000000000000000000");
        assert_eq!((big.get(), big.saturating()), (None, u64::MAX));
        assert_eq!(Integer::Small(7).get(), Some(7));
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
    }
}
