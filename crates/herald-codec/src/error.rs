//! Typed codec errors and their handling class.

use herald_model::ErrorClass;

/// Why bytes could not be decoded into a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The payload is empty or null.
    #[error("empty payload")]
    Empty,
    /// The framing header is cut short.
    #[error("payload truncated: header needs {needed} bytes, got {got}")]
    Truncated {
        /// Bytes the header needs.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The first bytes match neither framing.
    #[error("unknown framing: first byte 0x{byte:02x} is neither Confluent (0x00) nor single-object (0xc3 0x01)")]
    UnknownMagic {
        /// The first byte.
        byte: u8,
    },
    /// A single-object record names a fingerprint no known schema has.
    #[error("unknown schema fingerprint 0x{fingerprint:016x}")]
    UnknownFingerprint {
        /// The fingerprint.
        fingerprint: u64,
    },
    /// A Confluent record arrived but no registry is configured.
    #[error("schema id {id} needs a schema registry, and none is configured (codec.registry.url)")]
    NoRegistry {
        /// The schema id.
        id: u32,
    },
    /// The registry does not know the schema id (or it is not Avro).
    #[error("schema id {id} is unknown to the registry: {message}")]
    UnknownSchemaId {
        /// The schema id.
        id: u32,
        /// Registry message.
        message: String,
    },
    /// The registry could not be reached; the record is fine, try again.
    #[error("schema registry unavailable while fetching id {id}: {message}")]
    RegistryUnavailable {
        /// The schema id.
        id: u32,
        /// Transport error.
        message: String,
    },
    /// The writer schema is a different record than the one expected.
    #[error("expected a {expected} record, the writer schema is {found}")]
    WrongRecord {
        /// Reader record name.
        expected: &'static str,
        /// Writer record name.
        found: String,
    },
    /// The body does not decode with the writer schema, or does not resolve
    /// against the reader schema.
    #[error("malformed {record} body: {message}")]
    Malformed {
        /// Reader record name.
        record: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl DecodeError {
    /// Retry versus dead letter.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::RegistryUnavailable { .. } => ErrorClass::Retryable,
            _ => ErrorClass::Poison,
        }
    }

    /// Fixed label for metrics and dead-letter headers.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Truncated { .. } => "truncated",
            Self::UnknownMagic { .. } => "unknown_magic",
            Self::UnknownFingerprint { .. } => "unknown_fingerprint",
            Self::NoRegistry { .. } => "no_registry",
            Self::UnknownSchemaId { .. } => "unknown_schema_id",
            Self::RegistryUnavailable { .. } => "registry_unavailable",
            Self::WrongRecord { .. } => "wrong_record",
            Self::Malformed { .. } => "malformed",
        }
    }
}

/// Why a record could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The value does not fit the schema (a bug in the caller or the contract).
    #[error("cannot encode {record}: {message}")]
    Schema {
        /// Record name.
        record: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Registering or looking up the schema in the registry failed.
    #[error("schema registry rejected or could not take subject {subject}: {message}")]
    Registry {
        /// Subject.
        subject: String,
        /// Registry or transport message.
        message: String,
        /// Whether trying again may help.
        retryable: bool,
    },
}

impl EncodeError {
    /// Retry versus give up.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Registry {
                retryable: true, ..
            } => ErrorClass::Retryable,
            _ => ErrorClass::Permanent,
        }
    }
}
