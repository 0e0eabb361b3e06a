//! How values travel: bincode over the user's serde types.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// Serializes a value.
pub fn encode<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<Vec<u8>> {
    bincode::serialize(value).map_err(|e| Error::Serialization {
        action: "encode",
        what: what.into(),
        reason: e.to_string(),
    })
}

/// Deserializes a value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    bincode::deserialize(bytes).map_err(|e| Error::Serialization {
        action: "decode",
        what: what.into(),
        reason: e.to_string(),
    })
}
