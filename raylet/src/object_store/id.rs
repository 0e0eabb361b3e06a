//! [`ObjectId`]: the 20-byte name of an immutable object, written as 40 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::Error;

/// How many bytes an [`ObjectId`] has.
pub const OBJECT_ID_LEN: usize = 20;

/// The name of one immutable object in the object store.
///
/// Displayed (and parsed, and used as the object's file name) as 40 lowercase hex digits.
/// Serialized as that hex string for human-readable formats (JSON, TOML) and as the 20 raw
/// bytes for binary ones.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; OBJECT_ID_LEN]);

impl ObjectId {
    /// The id with these bytes.
    pub const fn from_bytes(bytes: [u8; OBJECT_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; OBJECT_ID_LEN] {
        &self.0
    }

    /// A fresh id from the thread-local RNG; 160 random bits make collisions negligible.
    pub fn random() -> Self {
        Self::random_with(&mut rand::thread_rng())
    }

    /// A fresh id drawn from `rng`, so simulations with a seeded RNG replay the same ids.
    pub fn random_with<R: RngCore + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; OBJECT_ID_LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

impl FromStr for ObjectId {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidObjectId {
            // Ids come from users and files: keep an absurdly long one from flooding the message.
            input: input.chars().take(2 * OBJECT_ID_LEN + 8).collect(),
            reason,
        };
        if let Some(bad) = input.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(invalid(format!("{bad:?} is not a hex digit")));
        }
        // All ASCII from here on, so bytes and characters agree.
        if input.len() != 2 * OBJECT_ID_LEN {
            return Err(invalid(format!(
                "it has {} hex digits, not {}",
                input.len(),
                2 * OBJECT_ID_LEN
            )));
        }
        let mut bytes = [0u8; OBJECT_ID_LEN];
        for (byte, pair) in bytes.iter_mut().zip(input.as_bytes().chunks_exact(2)) {
            *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        Ok(Self(bytes))
    }
}

/// The value of one ASCII hex digit (either case); callers have checked that it is one.
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit.wrapping_sub(b'A').wrapping_add(10),
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(ObjectIdVisitor)
        } else {
            deserializer.deserialize_bytes(ObjectIdVisitor)
        }
    }
}

/// Accepts the hex string, the raw bytes, or a sequence of bytes (what some binary formats
/// hand to `deserialize_bytes`).
struct ObjectIdVisitor;

impl<'de> Visitor<'de> for ObjectIdVisitor {
    type Value = ObjectId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "an object id: {} hex digits or {OBJECT_ID_LEN} bytes",
            2 * OBJECT_ID_LEN
        )
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<ObjectId, E> {
        value.parse().map_err(E::custom)
    }

    fn visit_bytes<E: de::Error>(self, value: &[u8]) -> Result<ObjectId, E> {
        let bytes: [u8; OBJECT_ID_LEN] = value
            .try_into()
            .map_err(|_| E::invalid_length(value.len(), &self))?;
        Ok(ObjectId(bytes))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<ObjectId, A::Error> {
        let mut bytes = [0u8; OBJECT_ID_LEN];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(index, &self))?;
        }
        if seq.next_element::<u8>()?.is_some() {
            return Err(de::Error::invalid_length(OBJECT_ID_LEN + 1, &self));
        }
        Ok(ObjectId(bytes))
    }
}
