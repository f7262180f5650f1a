//! Bitcoin Core's JSON renderings of scripts and transactions (`TxToUniv`, `ScriptToAsmStr`,
//! inferred descriptors with checksums), byte for byte where the JSON text allows it.

use bitcoin::blockdata::script::Instruction;
use bitcoin::hex::DisplayHex;
use bitcoin::{Address, Network, Script, Transaction, TxOut};
use serde_json::{json, Map, Value};

/// The coin a transaction input spends, as Core's undo data holds it.
#[derive(Clone, Debug)]
pub struct Prevout {
    pub txout: TxOut,
    pub height: u32,
    pub coinbase: bool,
}

/// How much of each input `tx_to_json` shows (Core's `TxVerbosity` above `SHOW_TXID`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Inputs without their coins (the fee is still shown when the coins are known).
    Plain,
    /// Inputs with a `prevout` object each.
    WithPrevouts,
}

/// A satoshi amount as Core's `ValueFromAmount` (a JSON number in BTC).
pub fn amount(sats: u64) -> Value {
    json!(sats as f64 / 100_000_000.0)
}

/// Core's `FormatMoney`: eight decimals with trailing zeros cut down to two.
pub fn format_money(sats: i64) -> String {
    let sign = if sats < 0 { "-" } else { "" };
    let abs = sats.unsigned_abs();
    let mut s = format!("{sign}{}.{:08}", abs / 100_000_000, abs % 100_000_000);
    while s.ends_with('0') && s.len() - s.find('.').unwrap_or(0) > 3 {
        s.pop();
    }
    s
}

/// Core's `TxToUniv` (with `include_hex`), optionally followed by the block hash.
pub fn tx_to_json(
    tx: &Transaction,
    prevouts: Option<&[Prevout]>,
    detail: Detail,
) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("txid".into(), json!(tx.compute_txid().to_string()));
    o.insert("hash".into(), json!(tx.compute_wtxid().to_string()));
    o.insert("version".into(), json!(tx.version.0));
    o.insert("size".into(), json!(tx.total_size()));
    o.insert("vsize".into(), json!(tx.vsize()));
    o.insert("weight".into(), json!(tx.weight().to_wu()));
    o.insert("locktime".into(), json!(tx.lock_time.to_consensus_u32()));
    let coinbase = tx.is_coinbase();
    let prevouts = if coinbase { None } else { prevouts };
    let mut vin = Vec::with_capacity(tx.input.len());
    for (i, input) in tx.input.iter().enumerate() {
        let mut inp = Map::new();
        if coinbase {
            inp.insert(
                "coinbase".into(),
                json!(input.script_sig.as_bytes().to_lower_hex_string()),
            );
        } else {
            inp.insert("txid".into(), json!(input.previous_output.txid.to_string()));
            inp.insert("vout".into(), json!(input.previous_output.vout));
            inp.insert(
                "scriptSig".into(),
                json!({"asm": script_asm(&input.script_sig, true),
                       "hex": input.script_sig.as_bytes().to_lower_hex_string()}),
            );
        }
        if !input.witness.is_empty() {
            let items: Vec<Value> = input
                .witness
                .iter()
                .map(|w| json!(w.to_lower_hex_string()))
                .collect();
            inp.insert("txinwitness".into(), Value::Array(items));
        }
        if let (Some(prev), Detail::WithPrevouts) = (prevouts.and_then(|p| p.get(i)), detail) {
            inp.insert(
                "prevout".into(),
                json!({"generated": prev.coinbase, "height": prev.height,
                       "value": amount(prev.txout.value.to_sat()),
                       "scriptPubKey": script_pubkey_json(&prev.txout.script_pubkey)}),
            );
        }
        inp.insert("sequence".into(), json!(input.sequence.0));
        vin.push(Value::Object(inp));
    }
    o.insert("vin".into(), Value::Array(vin));
    let vout: Vec<Value> = tx
        .output
        .iter()
        .enumerate()
        .map(|(n, out)| {
            json!({"value": amount(out.value.to_sat()), "n": n,
                   "scriptPubKey": script_pubkey_json(&out.script_pubkey)})
        })
        .collect();
    o.insert("vout".into(), Value::Array(vout));
    if let Some(prev) = prevouts {
        let spent = prev
            .iter()
            .map(|p| p.txout.value.to_sat())
            .fold(0, u64::saturating_add);
        let paid = tx
            .output
            .iter()
            .map(|o| o.value.to_sat())
            .fold(0, u64::saturating_add);
        o.insert("fee".into(), amount(spent.saturating_sub(paid)));
    }
    o.insert(
        "hex".into(),
        json!(bitcoin::consensus::encode::serialize_hex(tx)),
    );
    o
}

/// Core's `ScriptToUniv` for an output script: asm, desc, hex, address (if any), type.
pub fn script_pubkey_json(script: &Script) -> Value {
    let kind = classify(script);
    let mut o = Map::new();
    o.insert("asm".into(), json!(script_asm(script, false)));
    o.insert(
        "desc".into(),
        json!(with_checksum(&infer_descriptor(script, kind))),
    );
    o.insert("hex".into(), json!(script.as_bytes().to_lower_hex_string()));
    if kind != OutputType::PubKey {
        if let Some(addr) = address(script, kind) {
            o.insert("address".into(), json!(addr));
        }
    }
    o.insert("type".into(), json!(kind.name()));
    Value::Object(o)
}

/// Core's `Solver` output types.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OutputType {
    NonStandard,
    PubKey,
    PubKeyHash,
    ScriptHash,
    Multisig,
    NullData,
    WitnessV0KeyHash,
    WitnessV0ScriptHash,
    WitnessV1Taproot,
    Anchor,
    WitnessUnknown,
}

impl OutputType {
    pub fn name(self) -> &'static str {
        match self {
            OutputType::NonStandard => "nonstandard",
            OutputType::PubKey => "pubkey",
            OutputType::PubKeyHash => "pubkeyhash",
            OutputType::ScriptHash => "scripthash",
            OutputType::Multisig => "multisig",
            OutputType::NullData => "nulldata",
            OutputType::WitnessV0KeyHash => "witness_v0_keyhash",
            OutputType::WitnessV0ScriptHash => "witness_v0_scripthash",
            OutputType::WitnessV1Taproot => "witness_v1_taproot",
            OutputType::Anchor => "anchor",
            OutputType::WitnessUnknown => "witness_unknown",
        }
    }
}

/// Core's `Solver`, reduced to the type.
pub fn classify(script: &Script) -> OutputType {
    let b = script.as_bytes();
    if script.is_p2sh() {
        return OutputType::ScriptHash;
    }
    if let Some(version) = script.witness_version() {
        let program_len = b.len() - 2;
        return match (version.to_num(), program_len) {
            (0, 20) => OutputType::WitnessV0KeyHash,
            (0, 32) => OutputType::WitnessV0ScriptHash,
            (0, _) => OutputType::NonStandard,
            (1, 32) => OutputType::WitnessV1Taproot,
            (1, 2) if b[2..] == [0x4e, 0x73] => OutputType::Anchor,
            _ => OutputType::WitnessUnknown,
        };
    }
    if !b.is_empty() && b[0] == 0x6a && Script::from_bytes(&b[1..]).is_push_only() {
        return OutputType::NullData;
    }
    if p2pk_key(b).is_some() {
        return OutputType::PubKey;
    }
    if script.is_p2pkh() {
        return OutputType::PubKeyHash;
    }
    if multisig(script).is_some() {
        return OutputType::Multisig;
    }
    OutputType::NonStandard
}

/// The key of a pay-to-pubkey script (Core's `MatchPayToPubkey`: size and prefix only).
fn p2pk_key(b: &[u8]) -> Option<&[u8]> {
    let valid_prefix = |k: &[u8]| match k.len() {
        33 => matches!(k[0], 2 | 3),
        65 => matches!(k[0], 4 | 6 | 7),
        _ => false,
    };
    match b.len() {
        35 if b[0] == 33 && b[34] == 0xac && valid_prefix(&b[1..34]) => Some(&b[1..34]),
        67 if b[0] == 65 && b[66] == 0xac && valid_prefix(&b[1..66]) => Some(&b[1..66]),
        _ => None,
    }
}

/// `(required, keys)` of a bare multisig script (Core's `MatchMultisig`).
fn multisig(script: &Script) -> Option<(u8, Vec<Vec<u8>>)> {
    let b = script.as_bytes();
    if b.len() < 3 || *b.last()? != 0xae {
        return None;
    }
    let small_int = |op: u8| (0x51..=0x60).contains(&op).then(|| op - 0x50);
    let required = small_int(b[0])?;
    let mut keys = Vec::new();
    let mut rest = &b[1..b.len() - 2];
    while let Some(&len) = rest.first() {
        let len = len as usize;
        if !(len == 33 || len == 65) || rest.len() < 1 + len {
            return None;
        }
        keys.push(rest[1..1 + len].to_vec());
        rest = &rest[1 + len..];
    }
    let count = small_int(b[b.len() - 2])?;
    (count as usize == keys.len() && required <= count).then_some((required, keys))
}

fn address(script: &Script, kind: OutputType) -> Option<String> {
    match kind {
        OutputType::NonStandard | OutputType::NullData | OutputType::Multisig => None,
        _ => Address::from_script(script, Network::Regtest)
            .ok()
            .map(|a| a.to_string()),
    }
}

/// Core's `InferDescriptor` with no signing provider (what RPC output uses).
fn infer_descriptor(script: &Script, kind: OutputType) -> String {
    let b = script.as_bytes();
    match kind {
        OutputType::PubKey => {
            if let Some(key) = p2pk_key(b).filter(|k| bitcoin::PublicKey::from_slice(k).is_ok()) {
                return format!("pk({})", key.to_lower_hex_string());
            }
        }
        OutputType::Multisig => {
            if let Some((k, keys)) = multisig(script) {
                if keys
                    .iter()
                    .all(|key| bitcoin::PublicKey::from_slice(key).is_ok())
                {
                    let keys: Vec<String> =
                        keys.iter().map(|key| key.to_lower_hex_string()).collect();
                    return format!("multi({k},{})", keys.join(","));
                }
            }
        }
        OutputType::WitnessV1Taproot
            if bitcoin::key::XOnlyPublicKey::from_slice(&b[2..]).is_ok() =>
        {
            return format!("rawtr({})", b[2..].to_lower_hex_string());
        }
        _ => {}
    }
    match address(script, kind) {
        Some(addr) => format!("addr({addr})"),
        None => format!("raw({})", b.to_lower_hex_string()),
    }
}

/// Appends the BIP-380 descriptor checksum.
pub fn with_checksum(desc: &str) -> String {
    const INPUT: &str = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ ";
    const CHECKSUM: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    const GEN: [u64; 5] = [
        0xf5dee51989,
        0xa9fdca3312,
        0x1bab10e32d,
        0x3706b1677a,
        0x644d626ffd,
    ];
    fn polymod(chk: u64, value: u64) -> u64 {
        let top = chk >> 35;
        let mut chk = ((chk & 0x7ffffffff) << 5) ^ value;
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
        chk
    }
    let mut chk = 1u64;
    let mut groups = Vec::with_capacity(3);
    for c in desc.chars() {
        // Descriptors rendered here only hold characters of INPUT; anything else has no checksum.
        let Some(v) = INPUT.find(c) else {
            return desc.to_string();
        };
        chk = polymod(chk, v as u64 & 31);
        groups.push(v as u64 >> 5);
        if groups.len() == 3 {
            chk = polymod(chk, groups[0] * 9 + groups[1] * 3 + groups[2]);
            groups.clear();
        }
    }
    match groups.len() {
        1 => chk = polymod(chk, groups[0]),
        2 => chk = polymod(chk, groups[0] * 3 + groups[1]),
        _ => {}
    }
    for _ in 0..8 {
        chk = polymod(chk, 0);
    }
    chk ^= 1;
    let sum: String = (0..8)
        .map(|i| CHECKSUM[((chk >> (5 * (7 - i))) & 31) as usize] as char)
        .collect();
    format!("{desc}#{sum}")
}

/// Core's `ScriptToAsmStr`.
pub fn script_asm(script: &Script, decode_sighash: bool) -> String {
    let unspendable = script.as_bytes().first() == Some(&0x6a) || script.len() > 10_000;
    let mut parts = Vec::new();
    for ins in script.instructions() {
        match ins {
            Err(_) => {
                parts.push("[error]".to_string());
                break;
            }
            Ok(Instruction::PushBytes(p)) => {
                let data = p.as_bytes();
                if data.len() <= 4 {
                    parts.push(script_num(data).to_string());
                } else if decode_sighash && !unspendable && is_strict_signature(data) {
                    let (sig, hash_type) = data.split_at(data.len() - 1);
                    match sighash_name(hash_type[0]) {
                        Some(name) => parts.push(format!("{}[{name}]", sig.to_lower_hex_string())),
                        None => parts.push(data.to_lower_hex_string()),
                    }
                } else {
                    parts.push(data.to_lower_hex_string());
                }
            }
            Ok(Instruction::Op(op)) => parts.push(op_name(op.to_u8())),
        }
    }
    parts.join(" ")
}

/// `CScriptNum(vch, false).getint()`: little-endian sign-magnitude.
fn script_num(data: &[u8]) -> i64 {
    let Some(&last) = data.last() else { return 0 };
    let mut v: i64 = 0;
    for (i, byte) in data.iter().enumerate() {
        v |= (*byte as i64) << (8 * i);
    }
    if last & 0x80 != 0 {
        -(v & !(0x80i64 << (8 * (data.len() - 1))))
    } else {
        v
    }
}

fn sighash_name(t: u8) -> Option<&'static str> {
    Some(match t {
        0x01 => "ALL",
        0x81 => "ALL|ANYONECANPAY",
        0x02 => "NONE",
        0x82 => "NONE|ANYONECANPAY",
        0x03 => "SINGLE",
        0x83 => "SINGLE|ANYONECANPAY",
        _ => return None,
    })
}

/// `CheckSignatureEncoding` under STRICTENC: strict DER (BIP 66) and a defined hash type.
fn is_strict_signature(sig: &[u8]) -> bool {
    let n = sig.len();
    if !(9..=73).contains(&n) || sig[0] != 0x30 || sig[1] as usize != n - 3 {
        return false;
    }
    let len_r = sig[3] as usize;
    if 5 + len_r >= n {
        return false;
    }
    let len_s = sig[5 + len_r] as usize;
    if len_r + len_s + 7 != n || sig[2] != 0x02 || len_r == 0 || sig[4] & 0x80 != 0 {
        return false;
    }
    if len_r > 1 && sig[4] == 0 && sig[5] & 0x80 == 0 {
        return false;
    }
    if sig[len_r + 4] != 0x02 || len_s == 0 || sig[len_r + 6] & 0x80 != 0 {
        return false;
    }
    if len_s > 1 && sig[len_r + 6] == 0 && sig[len_r + 7] & 0x80 == 0 {
        return false;
    }
    let hash_type = sig[n - 1] & !0x80;
    (1..=3).contains(&hash_type)
}

/// Core's `GetOpName` for opcodes that are not data pushes.
fn op_name(op: u8) -> String {
    match op {
        0x4f => "-1".into(),
        0x51..=0x60 => (op - 0x50).to_string(),
        0xb1 => "OP_CHECKLOCKTIMEVERIFY".into(),
        0xb2 => "OP_CHECKSEQUENCEVERIFY".into(),
        0xbb..=0xfe => "OP_UNKNOWN".into(),
        _ => bitcoin::opcodes::Opcode::from(op).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::ScriptBuf;

    fn script(hex: &str) -> ScriptBuf {
        ScriptBuf::from_hex(hex).unwrap()
    }

    #[test]
    fn descriptors_match_core() {
        let wpkh = script("0014751e76e8199196d454941c45d1b3a323f1433bd6");
        let j = script_pubkey_json(&wpkh);
        assert_eq!(
            j["desc"],
            "addr(bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080)#8pk5s7ya"
        );
        assert_eq!(j["asm"], "0 751e76e8199196d454941c45d1b3a323f1433bd6");
        assert_eq!(j["type"], "witness_v0_keyhash");
        let ret =
            script("6a24aa21a9ede2f61c3f71d1defd3fa999dfa36953755c690689799962b48bebd836974e8cf9");
        let j = script_pubkey_json(&ret);
        assert_eq!(
            j["desc"],
            "raw(6a24aa21a9ede2f61c3f71d1defd3fa999dfa36953755c690689799962b48bebd836974e8cf9)#cav96mf3"
        );
        assert_eq!(
            j["asm"],
            "OP_RETURN aa21a9ede2f61c3f71d1defd3fa999dfa36953755c690689799962b48bebd836974e8cf9"
        );
        assert_eq!(j["type"], "nulldata");
        assert!(j.get("address").is_none());
    }

    #[test]
    fn money_and_numbers_format_like_core() {
        assert_eq!(format_money(101_000), "0.00101");
        assert_eq!(format_money(5_000_000_000), "50.00");
        assert_eq!(format_money(110_000), "0.0011");
        assert_eq!(script_num(&[0x81]), -1);
        assert_eq!(script_num(&[0x00, 0x01]), 256);
        assert_eq!(op_name(0x76), "OP_DUP");
        assert_eq!(op_name(0x52), "2");
    }

    #[test]
    fn signatures_in_script_sigs_show_their_hash_type() {
        let sig = "304402201ad11a35b4e242e0da79370661f84e1b4850bdcf7e3177f850ca81a5e381300802205e3dc5bff8065cab615748df79158e53f1bbf38572adf0282ca9b250a0868ff801";
        let s = script(&format!("47{sig}"));
        assert_eq!(
            script_asm(&s, true),
            format!("{}[ALL]", &sig[..sig.len() - 2])
        );
        assert_eq!(script_asm(&s, false), sig);
    }
}
