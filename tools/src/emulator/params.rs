//! Core's RPC argument handling: positional or named params, argument counts, type checks
//! ("Wrong type passed"), hashes, integers, verbosity flags and amounts.

use std::str::FromStr;

use serde_json::Value;

use super::jsonrpc::{code, RpcError};

/// The JSON type Core's `RPCArg` expects (`Any` skips the check, as Core's verbosity args do).
#[derive(Clone, Copy)]
pub enum Ty {
    Num,
    Str,
    Bool,
    Arr,
    Any,
}

/// One declared argument: its name(s) as Core prints them and its type.
pub struct Arg(pub &'static str, pub Ty);

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Turns the request's params into one value per declared argument (null when omitted).
pub fn bind(
    method: &str,
    args: &[Arg],
    required: usize,
    params: &Value,
) -> Result<Vec<Value>, RpcError> {
    let mut values = match params {
        Value::Object(named) => {
            let mut values = vec![Value::Null; args.len()];
            for (key, value) in named {
                let pos = args.iter().position(|a| a.0.split('|').any(|n| n == key));
                match pos {
                    Some(i) => values[i] = value.clone(),
                    None => {
                        return Err(RpcError::new(
                            code::INVALID_PARAMETER,
                            format!("Unknown named parameter {key}"),
                        ))
                    }
                }
            }
            values
        }
        Value::Array(list) => list.clone(),
        _ => Vec::new(),
    };
    let given = values
        .iter()
        .rposition(|v| !v.is_null())
        .map_or(0, |i| i + 1);
    if values.len() > args.len() || given < required {
        let names: Vec<&str> = args
            .iter()
            .map(|a| a.0.split('|').next().unwrap_or(a.0))
            .collect();
        return Err(RpcError::new(
            code::MISC_ERROR,
            format!("{method} {}\n", names.join(" ")),
        ));
    }
    values.resize(args.len(), Value::Null);
    let mut mismatches = Vec::new();
    for (i, (arg, value)) in args.iter().zip(&values).enumerate() {
        let ok = matches!(
            (arg.1, value),
            (_, Value::Null)
                | (Ty::Any, _)
                | (Ty::Num, Value::Number(_))
                | (Ty::Str, Value::String(_))
                | (Ty::Bool, Value::Bool(_))
                | (Ty::Arr, Value::Array(_))
        );
        if !ok {
            let want = match arg.1 {
                Ty::Num => "number",
                Ty::Str => "string",
                Ty::Bool => "bool",
                Ty::Arr => "array",
                Ty::Any => "any",
            };
            mismatches.push(format!(
                "    \"Position {} ({})\": \"JSON value of type {} is not of expected type {want}\"",
                i + 1,
                arg.0,
                type_name(value)
            ));
        }
    }
    if !mismatches.is_empty() {
        return Err(RpcError::new(
            code::TYPE_ERROR,
            format!("Wrong type passed:\n{{\n{}\n}}", mismatches.join(",\n")),
        ));
    }
    Ok(values)
}

/// Core's `ParseHashV`.
pub fn hash<T: FromStr>(v: &Value, name: &str) -> Result<T, RpcError> {
    let s = v.as_str().unwrap_or_default();
    if s.len() != 64 {
        return Err(RpcError::new(
            code::INVALID_PARAMETER,
            format!("{name} must be of length 64 (not {}, for '{s}')", s.len()),
        ));
    }
    s.parse().map_err(|_| {
        RpcError::new(
            code::INVALID_PARAMETER,
            format!("{name} must be hexadecimal string (not '{s}')"),
        )
    })
}

/// `UniValue::getInt` (after the type check).
pub fn int(v: &Value) -> Result<i64, RpcError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| RpcError::new(code::MISC_ERROR, "JSON integer out of range")),
        other => Err(RpcError::new(
            code::MISC_ERROR,
            format!(
                "JSON value of type {} is not of expected type number",
                type_name(other)
            ),
        )),
    }
}

/// Core's `ParseVerbosity` (bool allowed).
pub fn verbosity(v: &Value, default: i64) -> Result<i64, RpcError> {
    match v {
        Value::Null => Ok(default),
        Value::Bool(b) => Ok(*b as i64),
        other => int(other),
    }
}

pub fn flag(v: &Value, default: bool) -> bool {
    v.as_bool().unwrap_or(default)
}

/// Core's `AmountFromValue` in satoshis.
pub fn amount(v: &Value) -> Result<u64, RpcError> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => {
            return Err(RpcError::new(
                code::TYPE_ERROR,
                "Amount is not a number or string",
            ))
        }
    };
    let invalid = || RpcError::new(code::TYPE_ERROR, "Invalid amount");
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    if frac.len() > 8 || whole.is_empty() && frac.is_empty() {
        return Err(invalid());
    }
    let digits = |s: &str| s.is_empty() || s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(frac) {
        return Err(invalid());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| invalid())?
    };
    let frac: u64 = format!("{frac:0<8}").parse().map_err(|_| invalid())?;
    let sats = whole
        .checked_mul(100_000_000)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(invalid)?;
    if sats > 21_000_000 * 100_000_000 {
        return Err(RpcError::new(code::TYPE_ERROR, "Amount out of range"));
    }
    Ok(sats)
}

/// Core's `ParseFeeRate` in sat per 1000 vbytes, `default` when omitted.
pub fn fee_rate(v: &Value, default: u64) -> Result<u64, RpcError> {
    if v.is_null() {
        return Ok(default);
    }
    let rate = amount(v)?;
    if rate >= 100_000_000 {
        return Err(RpcError::new(
            code::INVALID_PARAMETER,
            "Fee rates larger than or equal to 1BTC/kvB are not accepted",
        ));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ARGS: &[Arg] = &[Arg("height", Ty::Num), Arg("verbosity|verbose", Ty::Any)];

    #[test]
    fn type_errors_read_like_core() {
        let e = bind("getblockhash", &ARGS[..1], 1, &json!(["x"])).unwrap_err();
        assert_eq!(e.code, -3);
        assert_eq!(
            e.message,
            "Wrong type passed:\n{\n    \"Position 1 (height)\": \"JSON value of type string is not of expected type number\"\n}"
        );
        assert_eq!(
            bind("getblockhash", &ARGS[..1], 1, &json!([]))
                .unwrap_err()
                .code,
            -1
        );
        assert_eq!(
            bind("x", ARGS, 1, &json!({"verbose": 1, "height": 2})).unwrap(),
            vec![json!(2), json!(1)]
        );
        assert_eq!(
            bind("x", ARGS, 1, &json!({"nope": 1})).unwrap_err().message,
            "Unknown named parameter nope"
        );
    }

    #[test]
    fn amounts_parse_exactly() {
        assert_eq!(amount(&json!(0.1)).unwrap(), 10_000_000);
        assert_eq!(amount(&json!("0.00000001")).unwrap(), 1);
        assert_eq!(amount(&json!(21)).unwrap(), 2_100_000_000);
        assert!(amount(&json!("0.000000001")).is_err());
        assert_eq!(fee_rate(&json!(1), 0).unwrap_err().code, -8);
    }
}
