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

/// For a vector of plain numbers, the exact bytes bincode would produce, as a length header
/// and the vector's own memory: a large numeric payload is stored with one copy instead of
/// being serialized element by element. `None` for other types (and on big-endian machines,
/// where bincode's little-endian layout differs from memory).
pub fn raw_parts<T: 'static>(value: &T) -> Option<([u8; 8], &[u8])> {
    if cfg!(target_endian = "big") {
        return None;
    }
    let any = value as &dyn std::any::Any;
    macro_rules! numeric_vec {
        ($($t:ty),*) => {$(
            if let Some(v) = any.downcast_ref::<Vec<$t>>() {
                return Some(((v.len() as u64).to_le_bytes(), bytemuck::cast_slice::<$t, u8>(v)));
            }
        )*};
    }
    numeric_vec!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_parts_match_bincode_byte_for_byte() {
        let floats: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
        let (header, body) = raw_parts(&floats).expect("a numeric vector");
        let joined: Vec<u8> = header.iter().chain(body).copied().collect();
        assert_eq!(joined, encode(&floats, "floats").expect("encode"));
        let back: Vec<f32> = decode(&joined, "floats").expect("decode");
        assert_eq!(back, floats);
        assert!(raw_parts(&vec!["not numeric".to_string()]).is_none());
    }
}
