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

/// Deserializes a value: bincode's default layout (fixed-width integers, trailing bytes
/// allowed, as `bincode::serialize` writes), with an explicit limit of the input's own size,
/// so a length field from the wire can never make the decoder reserve or read past the
/// bytes that actually arrived (those are bounded by the services' message limits).
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    use bincode::Options as _;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(bytes.len() as u64)
        .deserialize(bytes)
        .map_err(|e| Error::Serialization {
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

    #[test]
    fn a_length_field_past_the_input_is_an_error_not_an_allocation() {
        // A vector header claiming 2^60 elements, followed by 3 bytes.
        let mut bytes = (1u64 << 60).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        let error = decode::<Vec<u64>>(&bytes, "a claimed vector").expect_err("refused");
        assert!(error.to_string().contains("a claimed vector"), "{error}");
        let error = decode::<String>(&bytes, "a claimed string").expect_err("refused");
        assert!(error.to_string().contains("a claimed string"), "{error}");
    }

    proptest::proptest! {
        /// Bytes from the wire decode as task arguments or fail with an error, whatever they
        /// are; a value that encodes decodes back to itself.
        #[test]
        fn arbitrary_bytes_decode_or_fail_cleanly(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            value in proptest::prelude::any::<(u64, String, Vec<i32>, Option<Vec<String>>)>(),
        ) {
            let _ = decode::<(u64, String, Vec<i32>, Option<Vec<String>>)>(&bytes, "arguments");
            let _ = decode::<Vec<Vec<u8>>>(&bytes, "arguments");
            let _ = decode::<std::collections::HashMap<String, f64>>(&bytes, "arguments");
            let encoded = encode(&value, "arguments").expect("encodes");
            let back: (u64, String, Vec<i32>, Option<Vec<String>>) =
                decode(&encoded, "arguments").expect("decodes");
            proptest::prop_assert_eq!(back, value);
        }
    }
}
