//! Bytes for property tests of wire decoders.
//!
//! Random bytes rarely get past a protobuf decoder's first tag, so [`protobuf_bytes`] makes
//! bytes shaped like protobuf: fields with numbers 1–20 and every wire type, whose
//! length-delimited payloads are random bytes, text, or (recursively) more fields. Decoding
//! them as a concrete message reaches nested messages, oneofs, maps and repeated fields.
//! [`mutated`] damages valid encodings (flipped bytes, truncation, insertion), the shape of
//! a corrupt frame. [`mutated_config_text`] does the same for TOML configuration files.
//!
//! The case count is proptest's: `PROPTEST_CASES` (default 256) sets it for a longer run.

use proptest::prelude::*;
use prost::bytes::BufMut;
use prost::encoding::{encode_key, encode_varint, WireType};

/// One field: number, and its payload by wire type.
#[derive(Clone, Debug)]
enum Field {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Fixed32(u32, u32),
    Bytes(u32, Vec<u8>),
}

fn field(depth: u32) -> BoxedStrategy<Field> {
    let number = 1u32..=20;
    let leaf = prop_oneof![
        (number.clone(), any::<u64>()).prop_map(|(n, v)| Field::Varint(n, v)),
        (number.clone(), 0u64..4).prop_map(|(n, v)| Field::Varint(n, v)),
        (number.clone(), any::<u64>()).prop_map(|(n, v)| Field::Fixed64(n, v)),
        (number.clone(), any::<u32>()).prop_map(|(n, v)| Field::Fixed32(n, v)),
        (
            number.clone(),
            proptest::collection::vec(any::<u8>(), 0..48)
        )
            .prop_map(|(n, v)| Field::Bytes(n, v)),
        (number.clone(), "[a-z0-9/_.:-]{0,24}")
            .prop_map(|(n, v): (u32, String)| Field::Bytes(n, v.into_bytes())),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        3 => leaf,
        1 => (number, protobuf_fields(depth - 1)).prop_map(|(n, nested)| Field::Bytes(n, nested)),
    ]
    .boxed()
}

fn protobuf_fields(depth: u32) -> BoxedStrategy<Vec<u8>> {
    proptest::collection::vec(field(depth), 0..12)
        .prop_map(|fields| {
            let mut out = Vec::new();
            for field in fields {
                write_field(&mut out, &field);
            }
            out
        })
        .boxed()
}

fn write_field(out: &mut Vec<u8>, field: &Field) {
    match field {
        Field::Varint(n, v) => {
            encode_key(*n, WireType::Varint, out);
            encode_varint(*v, out);
        }
        Field::Fixed64(n, v) => {
            encode_key(*n, WireType::SixtyFourBit, out);
            out.put_u64_le(*v);
        }
        Field::Fixed32(n, v) => {
            encode_key(*n, WireType::ThirtyTwoBit, out);
            out.put_u32_le(*v);
        }
        Field::Bytes(n, v) => {
            encode_key(*n, WireType::LengthDelimited, out);
            encode_varint(v.len() as u64, out);
            out.extend_from_slice(v);
        }
    }
}

/// Protobuf-shaped bytes, nested up to three messages deep.
pub fn protobuf_bytes() -> BoxedStrategy<Vec<u8>> {
    protobuf_fields(3)
}

/// `valid` damaged: some bytes flipped, then maybe cut short or with bytes inserted.
pub fn mutated(valid: Vec<u8>) -> BoxedStrategy<Vec<u8>> {
    let len = valid.len().max(1);
    (
        proptest::collection::vec((0..len, any::<u8>()), 0..6),
        proptest::option::of(0..len),
        proptest::option::of((0..len, proptest::collection::vec(any::<u8>(), 1..8))),
    )
        .prop_map(move |(flips, cut, insert)| {
            let mut bytes = valid.clone();
            for (at, value) in flips {
                if let Some(byte) = bytes.get_mut(at) {
                    *byte ^= value;
                }
            }
            if let Some((at, extra)) = insert {
                let at = at.min(bytes.len());
                bytes.splice(at..at, extra);
            }
            if let Some(cut) = cut {
                bytes.truncate(cut);
            }
            bytes
        })
        .boxed()
}

/// Values of every TOML type and none, including ones out of any field's range.
const ODD_VALUES: &[&str] = &[
    "-1",
    "0",
    "1",
    "65536",
    "99999999999999999999",
    "1e309",
    "-0.5",
    "nan",
    "inf",
    "\"\"",
    "\"x\"",
    "\"../../etc\"",
    "[]",
    "[1, \"a\"]",
    "{}",
    "{ a = 1 }",
    "true",
    "1979-05-27",
    "\"\u{0}\"",
    "",
];

/// A configuration text (TOML) damaged the way people and tools damage them: a line deleted
/// or doubled, a value replaced by one of another type or out of range, a character changed.
pub fn mutated_config_text(valid: String) -> BoxedStrategy<String> {
    let lines = valid.lines().count().max(1);
    let edit = prop_oneof![
        (0..lines).prop_map(|line| (line, 0usize, 0u8)),
        (0..lines).prop_map(|line| (line, 1, 0)),
        (0..lines, 0..ODD_VALUES.len()).prop_map(|(line, value)| (line, 2, value as u8)),
        (0..lines, any::<u8>()).prop_map(|(line, byte)| (line, 3, byte)),
    ];
    proptest::collection::vec(edit, 1..4)
        .prop_map(move |edits| {
            let mut lines: Vec<String> = valid.lines().map(str::to_string).collect();
            for (line, kind, arg) in edits {
                if lines.is_empty() {
                    break;
                }
                let line = line % lines.len();
                match kind {
                    0 => {
                        lines.remove(line);
                    }
                    1 => {
                        let copy = lines[line].clone();
                        lines.insert(line, copy);
                    }
                    2 => {
                        let text = &lines[line];
                        if let Some(eq) = text.find('=') {
                            lines[line] = format!("{}= {}", &text[..eq], ODD_VALUES[arg as usize]);
                        }
                    }
                    _ => {
                        let mut bytes = lines[line].clone().into_bytes();
                        if !bytes.is_empty() {
                            let at = arg as usize % bytes.len();
                            let palette = b" =[]{}\",.#0a";
                            bytes[at] = palette[arg as usize % palette.len()];
                        }
                        lines[line] = String::from_utf8_lossy(&bytes).into_owned();
                    }
                }
            }
            lines.join("\n")
        })
        .boxed()
}

/// Protobuf-shaped bytes, or a sample's encoding damaged.
pub fn wire_input(samples: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let damaged = proptest::sample::select(samples).prop_flat_map(mutated);
    prop_oneof![
        2 => protobuf_bytes(),
        1 => proptest::collection::vec(any::<u8>(), 0..256),
        2 => damaged,
    ]
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcs;
    use crate::runtime;
    use prost::Message;

    /// Decodes `bytes` as `M`; a message that decodes must survive a round trip unchanged.
    fn decodes_safely<M: Message + Default + PartialEq + std::fmt::Debug>(
        bytes: &[u8],
    ) -> Result<(), TestCaseError> {
        if let Ok(message) = M::decode(bytes) {
            let again = M::decode(message.encode_to_vec().as_slice());
            prop_assert_eq!(again.as_ref(), Ok(&message));
        }
        Ok(())
    }

    macro_rules! every_type {
        ($bytes:expr; $($t:ty),* $(,)?) => {{
            $( decodes_safely::<$t>($bytes)?; )*
        }};
    }

    fn samples() -> Vec<Vec<u8>> {
        vec![
            gcs::WriteRequest {
                client_id: 41,
                seq: 7,
                ..Default::default()
            }
            .encode_to_vec(),
            gcs::RaftEnvelope {
                from: 1,
                to: 2,
                cluster_name: "fleet".into(),
                messages: vec![vec![8, 3, 16, 1, 24, 2]],
            }
            .encode_to_vec(),
            runtime::TaskSpec {
                task_id: "task-1".into(),
                function: "square".into(),
                actor_id: "actor-1".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            runtime::ObjectChunk {
                total_size: 10,
                offset: 4,
                data: vec![1, 2, 3],
            }
            .encode_to_vec(),
        ]
    }

    proptest! {
        /// Every request and stream message of every service (proto/proto/*.proto) decodes
        /// damaged or made-up bytes without a panic, and what decodes round-trips.
        #[test]
        fn every_request_and_stream_message_decodes_safely(bytes in wire_input(samples())) {
            every_type!(&bytes[..];
                gcs::WriteRequest, gcs::ReadRequest, gcs::WatchRequest, gcs::StatusRequest,
                gcs::ChangeMemberRequest, gcs::RaftEnvelope, gcs::StateSnapshot,
                gcs::WriteResponse, gcs::ReadResponse, gcs::WatchResponse,
                runtime::RegisterWorkerRequest, runtime::LeaseRequest,
                runtime::ReturnLeaseRequest, runtime::NodeInfoRequest,
                runtime::StorePutRequest, runtime::StoreGetRequest,
                runtime::StoreDeleteRequest, runtime::PullObjectRequest,
                runtime::ReadObjectRequest, runtime::ObjectChunk, runtime::HasBinaryRequest,
                runtime::BinaryChunk, runtime::FetchBinaryRequest,
                runtime::AttachDriverRequest, runtime::DriverEvent,
                runtime::PrepareBundlesRequest, runtime::CommitBundlesRequest,
                runtime::CancelBundlesRequest, runtime::TaskSpec, runtime::TaskReply,
                runtime::GetObjectRequest, runtime::PinObjectsRequest,
                runtime::ReleaseBorrowRequest, runtime::ExitRequest,
            );
        }
    }
}
