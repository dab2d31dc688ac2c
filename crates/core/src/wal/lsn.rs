//! Log sequence numbers: PostgreSQL's `XLogRecPtr`, a byte position in the WAL stream.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A WAL position (PostgreSQL's `XLogRecPtr`, the SQL type `pg_lsn`).
///
/// Text form `X/Y`: the high and low 32 bits in upper-case hexadecimal without leading zeros,
/// exactly PostgreSQL's `%X/%X` (`LSN_FORMAT_ARGS`). Serialized as that string, because JSON
/// numbers above 2^53 lose precision in many readers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// Why a text is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{input:?} is not a WAL position (LSN): {reason}; write it as PostgreSQL prints it, e.g. 0/16B3748 or 1A/FF000028"
)]
pub struct LsnError {
    /// The rejected text, cut to 40 characters.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Lsn {
    /// `0/0`, PostgreSQL's `InvalidXLogRecPtr`.
    pub const INVALID: Lsn = Lsn(0);

    /// Whether this is `0/0` (never a real record position).
    pub fn is_invalid(self) -> bool {
        self.0 == 0
    }
    /// The high 32 bits (the `X` of `X/Y`).
    pub fn hi(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The low 32 bits (the `Y` of `X/Y`).
    pub fn lo(self) -> u32 {
        self.0 as u32
    }
    /// `self + bytes`, or `None` past the end of the 64-bit WAL space.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }
    /// `self - bytes`, or `None` below `0/0`.
    pub fn checked_sub(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_sub(bytes).map(Lsn)
    }
    /// Bytes from `earlier` to `self` (a lag, a range's size), or `None` when `earlier` is
    /// after `self`.
    pub fn bytes_since(self, earlier: Lsn) -> Option<u64> {
        self.0.checked_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.hi(), self.lo())
    }
}

/// Parses one half: 1 to 8 hexadecimal digits, either case (PostgreSQL's `pg_lsn_in` takes
/// both; we always print upper case).
fn half(s: &str) -> Result<u32, &'static str> {
    if s.is_empty() {
        return Err("a half is empty");
    }
    if s.len() > 8 {
        return Err("a half has more than 8 hexadecimal digits (each half is 32 bits)");
    }
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("only hexadecimal digits may stand on each side of the '/'");
    }
    u32::from_str_radix(s, 16).map_err(|_| "a half is not hexadecimal")
}

impl FromStr for Lsn {
    type Err = LsnError;

    fn from_str(s: &str) -> Result<Lsn, LsnError> {
        let err = |reason| LsnError {
            input: s.chars().take(40).collect(),
            reason,
        };
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| err("no '/' between the halves"))?;
        let hi = half(hi).map_err(err)?;
        let lo = half(lo).map_err(err)?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_postgresql() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x16B_3748).to_string(), "0/16B3748");
        assert_eq!(Lsn(0x1A_FF00_0028).to_string(), "1A/FF000028");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_what_postgresql_prints_and_round_trips() {
        for v in [0, 1, 0x16B_3748, 0x1_0000_0000, 0x1A_FF00_0028, u64::MAX] {
            assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }
        // pg_lsn_in accepts lower case and leading zeros; we print the canonical form.
        assert_eq!("1a/ff000028".parse::<Lsn>().unwrap(), Lsn(0x1A_FF00_0028));
        assert_eq!("00000000/0000000A".parse::<Lsn>().unwrap(), Lsn(10));
    }

    #[test]
    fn refuses_hostile_text() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/0/0",
            "g/0",
            "0/-1",
            "-0/1",
            "+0/1",
            " 0/1",
            "0/1 ",
            "0x1/0",
            "1_0/0",
            "123456789/0",
            "0/123456789",
            "0/ 1",
            "１/0",
        ] {
            let e = bad.parse::<Lsn>().unwrap_err();
            assert!(
                e.to_string().contains("is not a WAL position"),
                "{bad:?}: {e}"
            );
        }
        let e = "0/123456789".parse::<Lsn>().unwrap_err();
        assert!(e.reason.contains("more than 8"), "{e}");
    }

    #[test]
    fn error_input_is_bounded() {
        let long = "A".repeat(10_000);
        let e = long.parse::<Lsn>().unwrap_err();
        assert!(e.to_string().len() < 300);
    }

    #[test]
    fn arithmetic_and_order() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b = a.checked_add(1).unwrap();
        assert_eq!(b.to_string(), "1/0");
        assert!(a < b);
        assert_eq!(b.bytes_since(a), Some(1));
        assert_eq!(a.bytes_since(b), None);
        assert_eq!(b.checked_sub(1), Some(a));
        assert_eq!(Lsn(0).checked_sub(1), None);
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert_eq!((b.hi(), b.lo()), (1, 0));
        assert!(Lsn::INVALID.is_invalid() && !b.is_invalid());
    }

    #[test]
    fn serde_uses_the_text_form() {
        let l = Lsn(0x1A_FF00_0028);
        assert_eq!(serde_json::to_string(&l).unwrap(), "\"1A/FF000028\"");
        assert_eq!(serde_json::from_str::<Lsn>("\"1a/ff000028\"").unwrap(), l);
        assert!(serde_json::from_str::<Lsn>("123").is_err());
        let e = serde_json::from_str::<Lsn>("\"zz\"").unwrap_err();
        assert!(e.to_string().contains("not a WAL position"), "{e}");
    }
}
