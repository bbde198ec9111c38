//! Avro encoding and decoding of Herald's wire contract (`schemas/`).
//!
//! Two framings are read, whichever a record carries:
//! - the Confluent wire format (`0x00` + 4-byte big-endian schema id), whose
//!   writer schemas are fetched from a Confluent-compatible registry through
//!   `schema_registry_converter` and cached;
//! - Avro single-object encoding (`0xC3 0x01` + 8-byte little-endian
//!   CRC-64-AVRO fingerprint), resolved against the schemas compiled in from
//!   `schemas/` (plus any older versions registered), so no registry is needed.
//!
//! Records are written in the framing the deployment is configured for. Every
//! read resolves the writer schema against the reader schema, so old and new
//! producers interoperate under the evolution rules in `schemas/README.md`.
//!
//! Bad bytes produce a typed [`DecodeError`], never a panic. This crate owns
//! no Kafka client.

mod codec;
pub mod contract;
mod error;
mod framing;
mod registry;

pub use codec::{encode_single_object, Codec, Framing};
pub use contract::{Record, SchemaSet};
pub use error::{DecodeError, EncodeError};
pub use framing::{CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC};
pub use registry::RegistrySettings;

/// The `[codec]` section of every binary's config.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodecSettings {
    /// Framing Herald writes: `single_object` (no registry) or `confluent`.
    /// Both are always read.
    pub framing: Framing,
    /// Confluent-compatible schema registry; needed to read or write the
    /// Confluent framing.
    pub registry: Option<RegistrySettings>,
}

impl CodecSettings {
    /// Builds the codec these settings describe.
    pub fn build(&self) -> Result<Codec, String> {
        Codec::new(self.framing, self.registry.as_ref(), SchemaSet::current())
    }
}
