//! Numbers in case and result files: integers or `"0x…"` strings on input, `"0x…"` strings on output.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A 64-bit value read as an integer, a decimal string or a `"0x…"` string, written as `"0x…"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hex(pub u64);

impl Hex {
    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for Hex {
    fn from(v: u64) -> Self {
        Hex(v)
    }
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:#x}", self.0))
    }
}

/// Parses `"0x1f"`, `"0X1F"`, `"31"` or `"0b11111"`, with optional `_` separators.
pub fn parse_u64(text: &str) -> Option<u64> {
    let t: String = text.trim().chars().filter(|&c| c != '_').collect();
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if let Some(b) = t.strip_prefix("0b") {
        u64::from_str_radix(b, 2).ok()
    } else {
        t.parse().ok()
    }
}

struct HexVisitor;

impl Visitor<'_> for HexVisitor {
    type Value = Hex;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an unsigned integer or a \"0x…\" string")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Hex, E> {
        Ok(Hex(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Hex, E> {
        u64::try_from(v)
            .map(Hex)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Hex, E> {
        parse_u64(v)
            .map(Hex)
            .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(HexVisitor)
    }
}

/// Bytes written as a hex string (`"b0 48 e6 f1"`; spaces, newlines and `_` are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct HexBytes(pub Vec<u8>);

/// Decodes a hex byte string, ignoring white space and `_`.
pub fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'_')
        .collect();
    if digits.len() % 2 != 0 {
        return Err(format!(
            "an even number of hex digits (got {})",
            digits.len()
        ));
    }
    digits
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            let s = std::str::from_utf8(pair).map_err(|_| "ASCII hex digits".to_string())?;
            u8::from_str_radix(s, 16).map_err(|_| format!("hex digits, found {s:?} at byte {i}"))
        })
        .collect()
}

/// Encodes bytes as lower-case hex with no separators.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Both digits of every byte value, looked up once per byte.
    static PAIRS: std::sync::LazyLock<[[u8; 2]; 256]> =
        std::sync::LazyLock::new(|| std::array::from_fn(|b| [DIGITS[b >> 4], DIGITS[b & 0xf]]));
    let pairs = &*PAIRS;
    let mut out = vec![0u8; bytes.len() * 2];
    for (o, &b) in out.chunks_exact_mut(2).zip(bytes) {
        o.copy_from_slice(&pairs[usize::from(b)]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

impl Serialize for HexBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode_hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        decode_hex(&s)
            .map(HexBytes)
            .map_err(|want| de::Error::invalid_value(de::Unexpected::Str(&s), &want.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_u64_accepts_hex_decimal_binary_and_separators() {
        assert_eq!(parse_u64("0x1F"), Some(31));
        assert_eq!(parse_u64("31"), Some(31));
        assert_eq!(parse_u64("0b11111"), Some(31));
        assert_eq!(parse_u64("0xffff_ffff"), Some(0xffff_ffff));
        assert_eq!(parse_u64("0x"), None);
        assert_eq!(parse_u64("-1"), None);
        assert_eq!(parse_u64("0x1_0000_0000_0000_0000"), None);
    }

    #[test]
    fn decode_hex_ignores_spaces_and_rejects_odd_digits() {
        assert_eq!(
            decode_hex("b0 48\ne6f1").unwrap(),
            vec![0xb0, 0x48, 0xe6, 0xf1]
        );
        assert!(decode_hex("b04").unwrap_err().contains("even"));
        assert!(decode_hex("zz").unwrap_err().contains("hex digits"));
    }

    #[test]
    fn hex_round_trips_through_json() {
        let v: Vec<Hex> = serde_json::from_str(r#"[1, "0x10", "17"]"#).unwrap();
        assert_eq!(v, vec![Hex(1), Hex(16), Hex(17)]);
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"["0x1","0x10","0x11"]"#
        );
        assert!(serde_json::from_str::<Hex>("-3").is_err());
    }
}
