//! The schemas compiled in from `schemas/` and the [`Record`] trait that ties
//! each to its Rust mirror in `herald_model::wire`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use apache_avro::Schema;
use herald_model::wire::{
    ChannelMessage, DedupEntry, DeliveryStatus, LedgerEntry, NotificationRequested, Preferences,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The `.avsc` sources, by record name, exactly as in `schemas/`.
pub const SOURCES: &[(&str, &str)] = &[
    (
        "herald.NotificationRequested",
        include_str!("../../../schemas/NotificationRequested.avsc"),
    ),
    (
        "herald.ChannelMessage",
        include_str!("../../../schemas/ChannelMessage.avsc"),
    ),
    (
        "herald.DeliveryStatus",
        include_str!("../../../schemas/DeliveryStatus.avsc"),
    ),
    (
        "herald.DedupEntry",
        include_str!("../../../schemas/DedupEntry.avsc"),
    ),
    (
        "herald.Preferences",
        include_str!("../../../schemas/Preferences.avsc"),
    ),
    (
        "herald.LedgerEntry",
        include_str!("../../../schemas/LedgerEntry.avsc"),
    ),
];

/// A record of the wire contract.
pub trait Record: Serialize + DeserializeOwned {
    /// Full Avro name (`herald.NotificationRequested`).
    const NAME: &'static str;

    /// The current (reader) schema compiled in from `schemas/`.
    fn schema() -> &'static Schema {
        CURRENT
            .get(Self::NAME)
            .map(|s| &s.schema)
            .unwrap_or(&FALLBACK)
    }
}

macro_rules! record {
    ($($ty:ty => $name:literal),+ $(,)?) => {
        $(impl Record for $ty {
            const NAME: &'static str = $name;
        })+
    };
}

record! {
    NotificationRequested => "herald.NotificationRequested",
    ChannelMessage => "herald.ChannelMessage",
    DeliveryStatus => "herald.DeliveryStatus",
    DedupEntry => "herald.DedupEntry",
    Preferences => "herald.Preferences",
    LedgerEntry => "herald.LedgerEntry",
}

/// One parsed schema and its identity.
#[derive(Debug)]
pub struct KnownSchema {
    /// Full record name.
    pub name: String,
    /// The parsed schema.
    pub schema: Schema,
    /// CRC-64-AVRO fingerprint of the parsing canonical form.
    pub fingerprint: u64,
}

impl KnownSchema {
    /// Parses an `.avsc` document.
    pub fn parse(source: &str) -> Result<Self, apache_avro::Error> {
        let schema = Schema::parse_str(source)?;
        let name = match &schema {
            Schema::Record(r) => r.name.fullname(None),
            other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)),
        };
        let fingerprint = fingerprint(&schema);
        Ok(Self {
            name,
            schema,
            fingerprint,
        })
    }
}

/// CRC-64-AVRO (Rabin) fingerprint of a schema's Parsing Canonical Form,
/// as the Avro specification defines it (and Java, Python and fastavro
/// compute it).
pub fn fingerprint(schema: &Schema) -> u64 {
    rabin(&canonical_form(schema))
}

/// apache-avro's own fingerprint, which differs from the specification for
/// schemas with logical types (see [`canonical_form`]). Also accepted on
/// read, so records from Rust producers that use apache-avro's
/// single-object writer decode too.
pub fn apache_avro_fingerprint(schema: &Schema) -> u64 {
    rabin(&schema.canonical_form())
}

/// The Parsing Canonical Form. apache-avro 0.22 strips `logicalType` but
/// leaves the primitive in object form (`{"type":"long"}`), where the
/// specification's PRIMITIVES rule asks for `"long"`. In canonical form an
/// object whose only member is `"type"` with a primitive name can only be
/// such a primitive, so it is rewritten to the bare name.
pub fn canonical_form(schema: &Schema) -> String {
    let mut form = schema.canonical_form();
    for primitive in [
        "null", "boolean", "int", "long", "float", "double", "bytes", "string",
    ] {
        form = form.replace(
            &format!("{{\"type\":\"{primitive}\"}}"),
            &format!("\"{primitive}\""),
        );
    }
    form
}

fn rabin(canonical: &str) -> u64 {
    use apache_avro::rabin::Rabin;
    use digest::Digest;
    let bytes = Rabin::digest(canonical.as_bytes());
    let mut arr = [0u8; 8];
    for (dst, src) in arr.iter_mut().zip(bytes.iter()) {
        *dst = *src;
    }
    u64::from_le_bytes(arr)
}

// A compile-time invariant, checked by tests: every source parses.
static CURRENT: LazyLock<HashMap<&'static str, KnownSchema>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .filter_map(|(name, src)| KnownSchema::parse(src).ok().map(|k| (*name, k)))
        .collect()
});

/// A current schema made ready for use: resolving a schema tree costs far
/// more than reading or writing one record, so it is done once per process.
pub(crate) struct Prepared {
    /// Specification fingerprint.
    pub fingerprint: u64,
    /// The same schema compiled for serde_avro_fast, which reads records
    /// written with this very schema and writes new ones.
    pub fast: serde_avro_fast::Schema,
}

static PREPARED: LazyLock<HashMap<&'static str, Prepared>> = LazyLock::new(|| {
    CURRENT
        .iter()
        .filter_map(|(name, k)| {
            let source = SOURCES.iter().find(|(n, _)| n == name)?.1;
            let fast = source.parse::<serde_avro_fast::Schema>().ok()?;
            Some((
                *name,
                Prepared {
                    fingerprint: k.fingerprint,
                    fast,
                },
            ))
        })
        .collect()
});

/// The prepared reader and writer of a current record type.
pub(crate) fn prepared(name: &str) -> Option<&'static Prepared> {
    PREPARED.get(name)
}

// Only reachable if a compiled-in schema failed to parse, which the contract
// tests rule out; decoding against it fails with a typed error.
static FALLBACK: LazyLock<Schema> = LazyLock::new(|| Schema::Null);

/// The writer schemas a codec recognises by fingerprint: the current contract
/// plus older (or newer) versions added by the deployment.
#[derive(Debug, Clone)]
pub struct SchemaSet {
    by_fingerprint: HashMap<u64, Arc<KnownSchema>>,
}

impl SchemaSet {
    /// The schemas compiled in from `schemas/`.
    pub fn current() -> Self {
        let mut set = Self {
            by_fingerprint: HashMap::new(),
        };
        for (_, src) in SOURCES {
            if let Ok(k) = KnownSchema::parse(src) {
                set.insert(k);
            }
        }
        set
    }

    /// Adds another writer schema version (an `.avsc` document).
    pub fn with_version(mut self, source: &str) -> Result<Self, apache_avro::Error> {
        self.insert(KnownSchema::parse(source)?);
        Ok(self)
    }

    fn insert(&mut self, k: KnownSchema) {
        let alias = apache_avro_fingerprint(&k.schema);
        let k = Arc::new(k);
        self.by_fingerprint.insert(alias, k.clone());
        self.by_fingerprint.insert(k.fingerprint, k);
    }

    /// Looks a writer schema up by fingerprint.
    pub fn get(&self, fingerprint: u64) -> Option<&Arc<KnownSchema>> {
        self.by_fingerprint.get(&fingerprint)
    }

    /// Number of known schemas.
    pub fn len(&self) -> usize {
        let mut names: Vec<u64> = self
            .by_fingerprint
            .values()
            .map(|k| k.fingerprint)
            .collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.by_fingerprint.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_in_schemas_dir_parses_and_is_compiled_in() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".avsc"))
            .collect();
        on_disk.sort();
        assert_eq!(
            on_disk.len(),
            SOURCES.len(),
            "schemas/ and SOURCES disagree: {on_disk:?}"
        );
        for (name, src) in SOURCES {
            let k = KnownSchema::parse(src).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&k.name, name);
            assert!(CURRENT.contains_key(name));
        }
        assert_eq!(SchemaSet::current().len(), SOURCES.len());
    }

    #[test]
    fn fingerprints_follow_the_specification() {
        // Reference values computed from the specification's canonical form
        // by an independent implementation (fastavro's to_parsing_canonical_form
        // and the CRC-64-AVRO of the spec, tests/python/produce_notification.py).
        let dedup = KnownSchema::parse(SOURCES[3].1).expect("parse");
        assert_eq!(
            canonical_form(&dedup.schema),
            r#"{"name":"herald.DedupEntry","type":"record","fields":[{"name":"expires_at","type":"long"},{"name":"source_partition","type":"int"},{"name":"source_offset","type":"long"}]}"#
        );
        assert_eq!(dedup.fingerprint, 0xd8a9_bd95_8c19_85bc);
        // The specification's own example: the fingerprint of "int".
        let int = Schema::parse_str(r#""int""#).expect("int");
        assert_eq!(fingerprint(&int), 0x7275_d51a_3f39_5c8f);
    }
}
