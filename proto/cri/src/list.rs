//! `ListContainersResponse`, written by hand rather than generated: on the wire it is the
//! generated message (`repeated Container containers = 1`), but a server may also hand
//! it containers it encoded earlier, which go out as they are. A protobuf embedded
//! message is a length-delimited field, so an encoded `Container` is sent exactly as
//! the typed one would be; the receiving side decodes both into `containers`.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};

/// The answer of `ListContainers`.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct ListContainersResponse {
    /// The containers (all of them, once decoded).
    pub containers: Vec<crate::v1::Container>,
    /// Containers already encoded as `runtime.v1.Container` messages, sent after
    /// `containers`. Empty once decoded.
    pub encoded: Vec<Bytes>,
}

/// The field both kinds of container go in.
const CONTAINERS: u32 = 1;

impl prost::Message for ListContainersResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encoding::message::encode_repeated(CONTAINERS, &self.containers, buf);
        for container in &self.encoded {
            encoding::encode_key(CONTAINERS, WireType::LengthDelimited, buf);
            encoding::encode_varint(container.len() as u64, buf);
            buf.put_slice(container);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag == CONTAINERS {
            encoding::message::merge_repeated(wire_type, &mut self.containers, buf, ctx)
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        encoding::message::encoded_len_repeated(CONTAINERS, &self.containers)
            + self
                .encoded
                .iter()
                .map(|c| {
                    encoding::key_len(CONTAINERS)
                        + encoding::encoded_len_varint(c.len() as u64)
                        + c.len()
                })
                .sum::<usize>()
    }

    fn clear(&mut self) {
        self.containers.clear();
        self.encoded.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn container(id: &str) -> crate::v1::Container {
        crate::v1::Container {
            id: id.into(),
            labels: [("k".to_owned(), "v".to_owned())].into(),
            state: 1,
            ..Default::default()
        }
    }

    #[test]
    fn encoded_containers_go_out_as_typed_ones_would() {
        let typed = ListContainersResponse {
            containers: vec![container("a"), container("b")],
            encoded: Vec::new(),
        };
        let mixed = ListContainersResponse {
            containers: vec![container("a")],
            encoded: vec![Bytes::from(container("b").encode_to_vec())],
        };
        assert_eq!(mixed.encode_to_vec(), typed.encode_to_vec());
        assert_eq!(mixed.encoded_len(), typed.encoded_len());
        let back =
            ListContainersResponse::decode(mixed.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(back, typed);
    }
}
