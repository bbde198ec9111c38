//! Framing headers: which schema wrote the body that follows.

use crate::error::DecodeError;

/// First byte of the Confluent wire format.
pub const CONFLUENT_MAGIC: u8 = 0x00;
/// First two bytes of Avro single-object encoding.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

/// The writer identity a header names, and the body after it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Header<'a> {
    /// Confluent: schema id in the registry.
    Confluent { id: u32, body: &'a [u8] },
    /// Single-object: CRC-64-AVRO fingerprint.
    SingleObject { fingerprint: u64, body: &'a [u8] },
}

pub(crate) fn parse(bytes: &[u8]) -> Result<Header<'_>, DecodeError> {
    match bytes {
        [] => Err(DecodeError::Empty),
        [CONFLUENT_MAGIC, rest @ ..] => {
            let (id, body) = rest
                .split_first_chunk::<4>()
                .ok_or(DecodeError::Truncated {
                    needed: 5,
                    got: bytes.len(),
                })?;
            Ok(Header::Confluent {
                id: u32::from_be_bytes(*id),
                body,
            })
        }
        [0xC3, 0x01, rest @ ..] => {
            let (fp, body) = rest
                .split_first_chunk::<8>()
                .ok_or(DecodeError::Truncated {
                    needed: 10,
                    got: bytes.len(),
                })?;
            Ok(Header::SingleObject {
                fingerprint: u64::from_le_bytes(*fp),
                body,
            })
        }
        [0xC3] => Err(DecodeError::Truncated { needed: 10, got: 1 }),
        [byte, ..] => Err(DecodeError::UnknownMagic { byte: *byte }),
    }
}

pub(crate) fn confluent(id: u32, body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body_len);
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out
}

pub(crate) fn single_object(fingerprint: u64, body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + body_len);
    out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_truncation_is_typed() {
        assert!(matches!(parse(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            parse(&[0, 0, 0]),
            Err(DecodeError::Truncated { needed: 5, got: 3 })
        ));
        assert!(matches!(parse(&[0xC3]), Err(DecodeError::Truncated { .. })));
        assert!(matches!(
            parse(&[0xC3, 0x01, 1]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            parse(&[0x7B, 0x22]),
            Err(DecodeError::UnknownMagic { byte: 0x7B })
        ));
        assert!(matches!(
            parse(&[0xC3, 0x02]),
            Err(DecodeError::UnknownMagic { byte: 0xC3 })
        ));
        assert_eq!(
            parse(&[0, 0, 0, 1, 2, 9]).ok(),
            Some(Header::Confluent {
                id: 258,
                body: &[9]
            })
        );
        let mut so = single_object(0x0102_0304_0506_0708, 0);
        so.push(7);
        assert_eq!(
            parse(&so).ok(),
            Some(Header::SingleObject {
                fingerprint: 0x0102_0304_0506_0708,
                body: &[7]
            })
        );
    }
}
