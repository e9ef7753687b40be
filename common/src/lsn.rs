//! Source positions: the one ordering every stage agrees on.
//!
//! An [`Lsn`] is a PostgreSQL WAL location. A [`Position`] is `(commit LSN, ordinal)`: the commit LSN of the source
//! transaction and the change's place inside it. Positions order all changes in source commit order; per-row LSNs
//! reported by wal2json do not (they interleave across concurrent transactions).
//!
//! Positions are the Kafka key of every record. The key codec ([`Position::to_key`]) is fixed-width upper-case hex
//! and zero-padded decimal, so that byte order equals position order and the key reads well in kcat:
//! `00000016/B374D848:00000000000000000042`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A WAL location, printed the way PostgreSQL prints it (`16/B374D848`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    /// Bytes of WAL from `earlier` to `self`; zero when `earlier` is ahead.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid LSN {input:?}: expected two hexadecimal numbers of at most 8 digits separated by '/', like 16/B374D848"
)]
pub struct ParseLsnError {
    pub input: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError { input: s.to_owned() };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u32::from_str_radix(part, 16).map_err(|_| err())
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a change sits in source commit order.
///
/// Ordinals inside a transaction: [`Position::BEGIN`] for the begin record, 1.. for the changes in the order the
/// transaction made them, [`Position::COMMIT`] for the commit record. So inside the txn topic a transaction's records
/// sort begin < changes < commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub commit_lsn: Lsn,
    pub ordinal: u64,
}

/// Length of an encoded key: `XXXXXXXX/XXXXXXXX:` + 20 decimal digits.
pub const KEY_LEN: usize = 8 + 1 + 8 + 1 + 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid position key {input:?}: expected {KEY_LEN} bytes like 00000016/B374D848:00000000000000000042")]
pub struct ParseKeyError {
    pub input: String,
}

impl Position {
    pub const BEGIN: u64 = 0;
    pub const COMMIT: u64 = u64::MAX;

    pub fn new(commit_lsn: Lsn, ordinal: u64) -> Self {
        Position { commit_lsn, ordinal }
    }

    /// The Kafka key: fixed width, so byte order is position order.
    pub fn to_key(&self) -> String {
        String::from_utf8(self.key_bytes().to_vec()).expect("keys are ASCII")
    }

    /// [`Position::to_key`] without an allocation (capture writes one per record).
    pub fn key_bytes(&self) -> [u8; KEY_LEN] {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut key = [0u8; KEY_LEN];
        let (hi, lo) = (self.commit_lsn.0 >> 32, self.commit_lsn.0 & 0xFFFF_FFFF);
        for i in 0..8 {
            key[i] = HEX[((hi >> (28 - 4 * i)) & 0xF) as usize];
            key[9 + i] = HEX[((lo >> (28 - 4 * i)) & 0xF) as usize];
        }
        key[8] = b'/';
        key[17] = b':';
        let mut ordinal = self.ordinal;
        for i in (18..KEY_LEN).rev() {
            key[i] = b'0' + (ordinal % 10) as u8;
            ordinal /= 10;
        }
        key
    }

    /// Parses exactly what [`Position::to_key`] prints, nothing looser: a key that does not round-trip would break
    /// the ordering and deduplication that rely on it.
    pub fn from_key(key: &[u8]) -> Result<Self, ParseKeyError> {
        let err = || ParseKeyError { input: String::from_utf8_lossy(key).into_owned() };
        if key.len() != KEY_LEN || key[8] != b'/' || key[17] != b':' {
            return Err(err());
        }
        let upper_hex = |part: &[u8]| part.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b));
        let (hi, lo, ord) = (&key[0..8], &key[9..17], &key[18..]);
        if !upper_hex(hi) || !upper_hex(lo) || !ord.iter().all(u8::is_ascii_digit) {
            return Err(err());
        }
        // All three parts are ASCII by now.
        let text = |part: &[u8]| std::str::from_utf8(part).map_err(|_| err()).map(str::to_owned);
        let hi = u64::from_str_radix(&text(hi)?, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(&text(lo)?, 16).map_err(|_| err())?;
        let ordinal = text(ord)?.parse::<u64>().map_err(|_| err())?;
        Ok(Position { commit_lsn: Lsn((hi << 32) | lo), ordinal })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.commit_lsn, self.ordinal)
    }
}

impl Serialize for Position {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_key())
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Position::from_key(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lsn_prints_and_parses_like_postgres() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::ZERO);
        assert_eq!("ffffffff/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        for bad in ["", "16", "/1", "1/", "1/2/3", "123456789/0", "g/0", "+1/0", " 1/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn lsn_arithmetic() {
        let a: Lsn = "0/1000".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert_eq!(b.bytes_since(a), 0x1_0000_0000 - 0x1000);
        assert_eq!(a.bytes_since(b), 0);
        assert_eq!(a.checked_add(0x10), Some(Lsn(0x1010)));
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
    }

    #[test]
    fn key_is_readable_and_fixed_width() {
        let pos = Position::new("16/B374D848".parse().unwrap(), 42);
        assert_eq!(pos.to_key(), "00000016/B374D848:00000000000000000042");
        assert_eq!(Position::new(Lsn(0), Position::COMMIT).to_key().len(), KEY_LEN);
        assert_eq!(pos.to_string(), "16/B374D848#42");
    }

    #[test]
    fn key_parser_is_strict() {
        for bad in [
            "",
            "00000016/b374d848:00000000000000000042",
            "00000016/B374D848:0000000000000000042",
            "00000016-B374D848:00000000000000000042",
            "00000016/B374D848:1844674407370955161X",
            "00000016/B374D848:99999999999999999999",
        ] {
            assert!(Position::from_key(bad.as_bytes()).is_err(), "{bad:?} must be rejected");
        }
    }

    fn any_position() -> impl Strategy<Value = Position> {
        (any::<u64>(), any::<u64>()).prop_map(|(lsn, ord)| Position::new(Lsn(lsn), ord))
    }

    proptest! {
        #[test]
        fn key_byte_order_is_position_order(a in any_position(), b in any_position()) {
            prop_assert_eq!(a.cmp(&b), a.to_key().as_bytes().cmp(b.to_key().as_bytes()));
        }

        #[test]
        fn key_is_the_documented_format(a in any_position()) {
            let lsn = a.commit_lsn.0;
            let expected = format!("{:08X}/{:08X}:{:020}", lsn >> 32, lsn & 0xFFFF_FFFF, a.ordinal);
            prop_assert_eq!(a.to_key(), expected);
        }

        #[test]
        fn key_round_trips(a in any_position()) {
            prop_assert_eq!(Position::from_key(a.to_key().as_bytes()).unwrap(), a);
        }

        #[test]
        fn lsn_round_trips(x in any::<u64>()) {
            prop_assert_eq!(Lsn(x).to_string().parse::<Lsn>().unwrap(), Lsn(x));
        }

        #[test]
        fn position_json_round_trips(a in any_position()) {
            let json = serde_json::to_string(&a).unwrap();
            prop_assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), a);
        }
    }
}
