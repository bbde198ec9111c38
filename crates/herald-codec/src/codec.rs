//! The codec: framing dispatch, schema resolution, encoding.

use std::sync::Once;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use serde::Deserialize;

use crate::contract::{self, Record, SchemaSet};
use crate::error::{DecodeError, EncodeError};
use crate::framing::{self, Header};
use crate::registry::{record_name, Registry, RegistrySettings};

/// Largest single allocation a decoded length prefix may ask for. Random bytes
/// often claim gigabyte strings; the decoder refuses them instead of trying.
const MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// Most items an array or map of a record may claim. Items can be
/// zero-sized on the wire, so the byte length alone does not bound them.
const MAX_SEQUENCE_ITEMS: usize = 100_000;

/// The framing Herald writes. Both framings are always readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// Avro single-object encoding: no registry needed.
    #[default]
    SingleObject,
    /// Confluent wire format: schema registered in the registry.
    Confluent,
}

/// Encodes and decodes the records of the wire contract.
#[derive(Debug)]
pub struct Codec {
    framing: Framing,
    schemas: SchemaSet,
    registry: Option<Registry>,
}

impl Codec {
    /// Single-object framing, the compiled-in schemas, no registry.
    pub fn single_object() -> Self {
        limit_allocations();
        Self {
            framing: Framing::SingleObject,
            schemas: SchemaSet::current(),
            registry: None,
        }
    }

    /// A codec writing `framing`, reading both framings. Confluent framing
    /// needs `registry`; without one, Confluent records fail with
    /// [`DecodeError::NoRegistry`].
    pub fn new(
        framing: Framing,
        registry: Option<&RegistrySettings>,
        schemas: SchemaSet,
    ) -> Result<Self, String> {
        limit_allocations();
        let registry = registry.map(Registry::new).transpose()?;
        if framing == Framing::Confluent && registry.is_none() {
            return Err("codec.framing = \"confluent\" needs codec.registry.url".to_string());
        }
        Ok(Self {
            framing,
            schemas,
            registry,
        })
    }

    /// The framing this codec writes.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Decodes a record in either framing, resolving the writer schema
    /// against `T`'s current schema.
    pub async fn decode<T: Record>(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        match framing::parse(bytes)? {
            Header::SingleObject { fingerprint, body } => {
                self.decode_single_object_body(fingerprint, body)
            }
            Header::Confluent { id, body } => {
                let registry = self
                    .registry
                    .as_ref()
                    .ok_or(DecodeError::NoRegistry { id })?;
                let writer = registry.writer_schema(id).await?;
                decode_body::<T>(&writer.parsed, None, body)
            }
        }
    }

    /// Decodes a single-object record without touching the network; a
    /// Confluent record gives [`DecodeError::NoRegistry`].
    pub fn decode_local<T: Record>(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        match framing::parse(bytes)? {
            Header::SingleObject { fingerprint, body } => {
                self.decode_single_object_body(fingerprint, body)
            }
            Header::Confluent { id, .. } => Err(DecodeError::NoRegistry { id }),
        }
    }

    fn decode_single_object_body<T: Record>(
        &self,
        fingerprint: u64,
        body: &[u8],
    ) -> Result<T, DecodeError> {
        let writer = self
            .schemas
            .get(fingerprint)
            .ok_or(DecodeError::UnknownFingerprint { fingerprint })?;
        decode_body::<T>(&writer.schema, Some(writer.fingerprint), body)
    }

    /// Encodes `value` for `topic` in the configured framing (registering the
    /// schema under `<topic>-value` on first use with Confluent framing).
    pub async fn encode<T: Record>(&self, topic: &str, value: &T) -> Result<Vec<u8>, EncodeError> {
        match (self.framing, &self.registry) {
            (Framing::Confluent, Some(registry)) => {
                let id = registry.schema_id(topic, T::NAME, source_of::<T>()).await?;
                let mut out = framing::confluent(id, BODY_CAPACITY);
                write_body(&mut out, contract::prepared(T::NAME), value)?;
                Ok(out)
            }
            _ => encode_single_object(value),
        }
    }
}

/// Encodes `value` in single-object framing (no registry, no I/O).
pub fn encode_single_object<T: Record>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let prepared = contract::prepared(T::NAME);
    let fingerprint = prepared
        .map(|p| p.fingerprint)
        .unwrap_or_else(|| contract::fingerprint(T::schema()));
    let mut out = framing::single_object(fingerprint, BODY_CAPACITY);
    write_body(&mut out, prepared, value)?;
    Ok(out)
}

/// Room reserved for a record's body: a channel message with its content
/// is about 400 bytes, and growing the buffer on the way costs copies.
const BODY_CAPACITY: usize = 512;

fn source_of<T: Record>() -> &'static str {
    contract::SOURCES
        .iter()
        .find(|(n, _)| *n == T::NAME)
        .map(|(_, s)| *s)
        .unwrap_or("")
}

fn write_body<T: Record>(
    out: &mut Vec<u8>,
    prepared: Option<&contract::Prepared>,
    value: &T,
) -> Result<(), EncodeError> {
    match prepared {
        Some(p) => {
            let config = &mut serde_avro_fast::ser::SerializerConfig::new(&p.fast);
            serde_avro_fast::to_datum(value, out, config).map_err(|e| EncodeError::Schema {
                record: T::NAME,
                message: e.to_string(),
            })?;
        }
        None => {
            let schema_error = |e: apache_avro::Error| EncodeError::Schema {
                record: T::NAME,
                message: e.to_string(),
            };
            GenericDatumWriter::builder(T::schema())
                .build()
                .map_err(schema_error)?
                .write_ser(out, value)
                .map_err(schema_error)?;
        }
    };
    Ok(())
}

/// Decodes `body` written with `writer` (whose fingerprint is known for
/// single-object records) into `T`, resolving against `T`'s current schema.
fn decode_body<T: Record>(
    writer: &Schema,
    writer_fingerprint: Option<u64>,
    body: &[u8],
) -> Result<T, DecodeError> {
    let found = record_name(writer);
    if found != T::NAME {
        return Err(DecodeError::WrongRecord {
            expected: T::NAME,
            found,
        });
    }
    let malformed = |message: String| DecodeError::Malformed {
        record: T::NAME,
        message,
    };
    let prepared =
        contract::prepared(T::NAME).filter(|p| Some(p.fingerprint) == writer_fingerprint);
    if let Some(p) = prepared {
        // Written with the current schema: straight into the struct, no
        // resolution (the common case, and the fast one).
        return decode_current::<T>(&p.fast, body).map_err(malformed);
    }
    // An older (or newer) writer schema: resolve through a `Value`.
    let mut input = EofGuard {
        rest: body,
        hit_eof: false,
    };
    let decoded: Result<T, String> = GenericDatumReader::builder(writer)
        .reader_schema(T::schema())
        .build()
        .and_then(|reader| reader.read_value(&mut input))
        .map_err(|e| e.to_string())
        .and_then(|value| apache_avro::from_value::<T>(&value).map_err(|e| e.to_string()));
    if input.hit_eof {
        // apache-avro reads a nullable union at end of input as null; a
        // record cut short there must not pass as one with empty fields.
        return Err(malformed("body ends before the record does".to_string()));
    }
    let record = decoded.map_err(malformed)?;
    trailing(input.rest.len()).map_err(malformed)?;
    Ok(record)
}

/// Reads a record written with `T`'s current schema. Every length is
/// checked against what is left of `body`, so a corrupt prefix fails
/// instead of allocating; sequences are capped at [`MAX_SEQUENCE_ITEMS`].
fn decode_current<T: Record>(schema: &serde_avro_fast::Schema, body: &[u8]) -> Result<T, String> {
    use serde_avro_fast::de::{read::SliceRead, DeserializerConfig, DeserializerState};
    use std::io::BufRead;
    let mut config = DeserializerConfig::new(schema);
    config.max_seq_size = MAX_SEQUENCE_ITEMS;
    let mut state = DeserializerState::with_config(SliceRead::new(body), config);
    let record = T::deserialize(state.deserializer()).map_err(|e| e.to_string())?;
    let mut rest = state.into_reader();
    let left = rest.fill_buf().map_or(0, <[u8]>::len);
    trailing(left)?;
    Ok(record)
}

fn trailing(left: usize) -> Result<(), String> {
    if left == 0 {
        Ok(())
    } else {
        Err(format!("{left} trailing bytes after the record"))
    }
}

/// A byte-slice reader that remembers whether anyone tried to read past its
/// end. The Avro decoder reads exactly what the schema needs and no more, so
/// such an attempt means the body is truncated.
struct EofGuard<'a> {
    rest: &'a [u8],
    hit_eof: bool,
}

impl std::io::Read for EofGuard<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.rest.is_empty() && !buf.is_empty() {
            self.hit_eof = true;
        }
        self.rest.read(buf)
    }
}

fn limit_allocations() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
    });
}
