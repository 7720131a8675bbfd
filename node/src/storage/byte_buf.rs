//! Serde for byte buffers as one block of bytes.
//!
//! serde encodes a `Vec<u8>` as a sequence, one element at a time: postcard then writes each byte
//! through its serializer and reads each back through a visitor, which cost a noticeable share of
//! a simulator run (segment bytes cross the log, the network and snapshots several times per
//! write). `#[serde(with = "crate::storage::byte_buf")]` encodes the same field with
//! `serialize_bytes` instead. In postcard both are a varint length followed by the raw bytes, so
//! the encoding is unchanged: stores and peers written before read the same.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(ByteBufVisitor)
}

struct ByteBufVisitor;

impl<'de> Visitor<'de> for ByteBufVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte buffer")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    // Self-describing formats (JSON) may hand the bytes over as a sequence of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // Cap the preallocation: the size hint comes from the input.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// The same for a list of (key, bytes) pairs, such as a snapshot's chunks.
pub mod pairs {
    use serde::de::{SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    struct Ref<'a, K>(&'a K, #[serde(with = "super")] &'a Vec<u8>);

    #[derive(Deserialize)]
    struct Owned<K>(K, #[serde(with = "super")] Vec<u8>);

    pub fn serialize<K: Serialize, S: Serializer>(v: &[(K, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for (k, b) in v {
            seq.serialize_element(&Ref(k, b))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, K: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Vec<(K, Vec<u8>)>, D::Error> {
        struct V<K>(std::marker::PhantomData<K>);
        impl<'de, K: Deserialize<'de>> Visitor<'de> for V<K> {
            type Value = Vec<(K, Vec<u8>)>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of (key, bytes) pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(Owned(k, b)) = seq.next_element::<Owned<K>>()? {
                    out.push((k, b));
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsSeq {
        a: u32,
        data: Vec<u8>,
        pairs: Vec<([u8; 4], Vec<u8>)>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsBytes {
        a: u32,
        #[serde(with = "super")]
        data: Vec<u8>,
        #[serde(with = "super::pairs")]
        pairs: Vec<([u8; 4], Vec<u8>)>,
    }

    #[test]
    fn postcard_encoding_is_unchanged_and_round_trips() {
        let data: Vec<u8> = (0..=255u8).chain(0..40).collect();
        let pairs = vec![([1, 2, 3, 4], vec![9u8; 300]), ([5, 6, 7, 8], vec![])];
        let old = postcard::to_stdvec(&AsSeq { a: 7, data: data.clone(), pairs: pairs.clone() }).unwrap();
        let new_value = AsBytes { a: 7, data, pairs };
        let new = postcard::to_stdvec(&new_value).unwrap();
        assert_eq!(old, new, "same bytes on disk and on the wire as before");
        assert_eq!(postcard::from_bytes::<AsBytes>(&old).unwrap(), new_value);
    }

    #[test]
    fn a_truncated_buffer_is_an_error_not_a_panic() {
        let v = AsBytes { a: 1, data: vec![1; 100], pairs: vec![] };
        let bytes = postcard::to_stdvec(&v).unwrap();
        assert!(postcard::from_bytes::<AsBytes>(&bytes[..50]).is_err());
    }
}
