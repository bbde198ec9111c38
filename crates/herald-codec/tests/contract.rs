//! The wire contract: every record round-trips in both framings, versions
//! resolve across the evolution rules, and malformed input is a typed error.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use herald_codec::contract::fingerprint;
use herald_codec::{
    encode_single_object, Codec, DecodeError, Framing, Record, RegistrySettings, SchemaSet,
};
use herald_model::sample;
use herald_model::wire::{ChannelMessage, NotificationRequested};
use herald_testkit::TestRegistry;
use proptest::prelude::*;

const NOW: i64 = 1_790_000_000_000;
const V2: &str = include_str!("fixtures/NotificationRequested.v2.avsc");

fn confluent_codec(registry: &TestRegistry) -> Codec {
    Codec::new(
        Framing::Confluent,
        Some(&RegistrySettings::new(registry.url())),
        SchemaSet::current(),
    )
    .expect("codec")
}

async fn round_trip<T: Record + PartialEq + std::fmt::Debug>(value: T, confluent: &Codec) {
    let topic = format!("herald.test.{}", T::NAME);
    let local = Codec::single_object();
    let bytes = local
        .encode(&topic, &value)
        .await
        .expect("encode single-object");
    assert_eq!(
        &bytes[..2],
        &[0xC3, 0x01],
        "{}: single-object magic",
        T::NAME
    );
    assert_eq!(
        local
            .decode::<T>(&bytes)
            .await
            .expect("decode single-object"),
        value
    );

    let bytes = confluent
        .encode(&topic, &value)
        .await
        .expect("encode confluent");
    assert_eq!(bytes[0], 0x00, "{}: confluent magic", T::NAME);
    assert_eq!(
        confluent
            .decode::<T>(&bytes)
            .await
            .expect("decode confluent"),
        value
    );
    // A reader with no registry configured says so instead of guessing.
    assert!(matches!(
        local.decode::<T>(&bytes).await,
        Err(DecodeError::NoRegistry { .. })
    ));
}

#[tokio::test]
async fn every_schema_round_trips_in_both_framings() {
    let server = TestRegistry::start().await.expect("registry");
    let registry_codec = confluent_codec(&server);
    let registry = &registry_codec;
    for n in [0, 1, 7, 123_456] {
        round_trip(sample::notification(n, NOW), registry).await;
        round_trip(sample::channel_message(n, NOW), registry).await;
        round_trip(sample::delivery_status(n, NOW), registry).await;
        round_trip(sample::dedup_entry(n, NOW), registry).await;
        round_trip(sample::preferences(n, NOW), registry).await;
    }
    // Minimal variants: every optional left empty.
    let mut bare = sample::notification(9, NOW);
    bare.content = None;
    bare.template = Some(herald_model::wire::TemplateRef {
        template_id: "receipt".into(),
        locale: None,
        variables: Default::default(),
    });
    bare.recipients = Default::default();
    bare.expires_at = None;
    bare.trace = None;
    round_trip(bare, registry).await;
    drop(registry_codec);
    let registry = server;
    // Schemas are registered once per subject and fetched once per id (cached).
    assert_eq!(registry.registrations(), 5);
    assert!(
        registry.fetches() <= 5,
        "fetched {} times",
        registry.fetches()
    );
}

fn v2_schema() -> Schema {
    Schema::parse_str(V2).expect("v2 parses")
}

#[tokio::test]
async fn v1_written_records_decode_with_a_v2_reader() {
    let event = sample::notification(5, NOW);
    let bytes = encode_single_object(&event).expect("encode");
    let v1 = NotificationRequested::schema();
    let v2 = v2_schema();
    let reader = GenericDatumReader::builder(v1)
        .reader_schema(&v2)
        .build()
        .expect("reader");
    let value = reader
        .read_value(&mut &bytes[10..])
        .expect("v1 resolves against v2");
    let Value::Record(fields) = value else {
        panic!("not a record")
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        field("campaign"),
        Some(Value::Union(0, Box::new(Value::Null))),
        "default filled"
    );
    assert_eq!(field("tags"), Some(Value::Array(vec![])));
    assert_eq!(
        field("idempotency_key"),
        Some(Value::String("order-5".into()))
    );
}

/// Writes `event` as a v2 producer would, with the v2 fields set.
fn v2_bytes(event: &NotificationRequested) -> Vec<u8> {
    let v1 = NotificationRequested::schema();
    let v2 = v2_schema();
    let bytes = encode_single_object(event).expect("encode");
    let reader = GenericDatumReader::builder(v1)
        .reader_schema(&v2)
        .build()
        .expect("reader");
    let Value::Record(mut fields) = reader.read_value(&mut &bytes[10..]).expect("resolve") else {
        panic!("not a record")
    };
    for (name, value) in fields.iter_mut() {
        match name.as_str() {
            "campaign" => *value = Value::Union(1, Box::new(Value::String("spring".into()))),
            "tags" => *value = Value::Array(vec![Value::String("promo".into())]),
            _ => {}
        }
    }
    let writer = GenericDatumWriter::builder(&v2).build().expect("writer");
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(&fingerprint(&v2).to_le_bytes());
    writer
        .write_value(&mut out, Value::Record(fields))
        .expect("write v2");
    out
}

#[tokio::test]
async fn v2_written_records_decode_with_the_current_reader_once_v2_is_known() {
    let event = sample::notification(6, NOW);
    let bytes = v2_bytes(&event);

    // Not known yet: a typed error naming the fingerprint, not a guess.
    let err = Codec::single_object()
        .decode::<NotificationRequested>(&bytes)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DecodeError::UnknownFingerprint { fingerprint } if fingerprint == fingerprint_of_v2())
    );

    // Known: the new fields are skipped and the rest reads as written.
    let schemas = SchemaSet::current().with_version(V2).expect("v2");
    let codec = Codec::new(Framing::SingleObject, None, schemas).expect("codec");
    assert_eq!(
        codec
            .decode::<NotificationRequested>(&bytes)
            .await
            .expect("decode"),
        event
    );
}

fn fingerprint_of_v2() -> u64 {
    fingerprint(&v2_schema())
}

#[tokio::test]
async fn v2_records_from_the_registry_decode_with_the_current_reader() {
    let registry = TestRegistry::start().await.expect("registry");
    let id = registry.register("herald.notifications-value", V2);
    let event = sample::notification(8, NOW);
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(&v2_bytes(&event)[10..]);
    let codec = confluent_codec(&registry);
    assert_eq!(
        codec
            .decode::<NotificationRequested>(&bytes)
            .await
            .expect("decode"),
        event
    );
    assert_eq!(
        codec
            .decode::<NotificationRequested>(&bytes)
            .await
            .expect("again"),
        event
    );
    assert_eq!(registry.fetches(), 1, "the writer schema is cached");
}

#[tokio::test]
async fn registry_failures_are_typed_and_classified() {
    let registry = TestRegistry::start().await.expect("registry");
    let codec = confluent_codec(&registry);
    let unknown = [0u8, 0, 0, 0, 42, 2, 0];
    let err = codec
        .decode::<NotificationRequested>(&unknown)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DecodeError::UnknownSchemaId { id: 42, .. }),
        "{err}"
    );
    assert_eq!(err.class(), herald_model::ErrorClass::Poison);

    let id = registry.register(
        "x-value",
        include_str!("../../../schemas/NotificationRequested.avsc"),
    );
    registry.set_unavailable(true);
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend_from_slice(
        &encode_single_object(&sample::notification(1, NOW)).expect("enc")[10..],
    );
    let err = codec
        .decode::<NotificationRequested>(&bytes)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DecodeError::RegistryUnavailable { .. }),
        "{err}"
    );
    assert_eq!(err.class(), herald_model::ErrorClass::Retryable);
    // The outage is not cached: once the registry is back, the record decodes.
    registry.set_unavailable(false);
    assert!(codec.decode::<NotificationRequested>(&bytes).await.is_ok());
}

#[tokio::test]
async fn a_record_of_another_type_is_a_wrong_record_error() {
    let status = encode_single_object(&sample::delivery_status(1, NOW)).expect("encode");
    let err = Codec::single_object()
        .decode::<NotificationRequested>(&status)
        .await
        .unwrap_err();
    assert!(matches!(err, DecodeError::WrongRecord { .. }), "{err}");
}

/// Herald writes and reads its current schemas with serde_avro_fast and
/// resolves other versions with apache-avro: both must agree on the bytes.
fn agrees_with_apache_avro<T: Record + PartialEq + std::fmt::Debug>(value: T) {
    let ours = encode_single_object(&value).expect("encode");
    let mut theirs = Vec::new();
    GenericDatumWriter::builder(T::schema())
        .build()
        .expect("writer")
        .write_ser(&mut theirs, &value)
        .expect("apache-avro encode");
    assert_eq!(&ours[10..], &theirs[..], "{}: body bytes", T::NAME);
    let read_back: T = apache_avro::from_value(
        &GenericDatumReader::builder(T::schema())
            .build()
            .expect("reader")
            .read_value(&mut &ours[10..])
            .expect("apache-avro decode"),
    )
    .expect("from value");
    assert_eq!(read_back, value, "{}: apache-avro reads ours", T::NAME);
    let mut framed = ours[..10].to_vec();
    framed.extend_from_slice(&theirs);
    assert_eq!(
        Codec::single_object()
            .decode_local::<T>(&framed)
            .expect("decode"),
        value,
        "{}: we read apache-avro's",
        T::NAME
    );
}

#[test]
fn the_fast_codec_writes_and_reads_the_same_bytes_as_apache_avro() {
    for n in [0, 1, 7, 123_456, u64::MAX / 3] {
        agrees_with_apache_avro(sample::notification(n, NOW));
        agrees_with_apache_avro(sample::channel_message(n, NOW));
        agrees_with_apache_avro(sample::delivery_status(n, NOW));
        agrees_with_apache_avro(sample::dedup_entry(n, -NOW));
        agrees_with_apache_avro(sample::preferences(n, NOW));
        agrees_with_apache_avro(sample::ledger_entry(n, NOW));
    }
    let mut bare = sample::notification(9, NOW);
    bare.content = None;
    bare.recipients = Default::default();
    bare.expires_at = None;
    bare.trace = None;
    bare.channels.clear();
    agrees_with_apache_avro(bare);
}

#[test]
fn every_truncation_of_a_valid_record_is_a_typed_error() {
    let codec = Codec::single_object();
    let bytes = encode_single_object(&sample::notification(3, NOW)).expect("encode");
    for len in 0..bytes.len() {
        let err = codec
            .decode_local::<NotificationRequested>(&bytes[..len])
            .unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Empty | DecodeError::Truncated { .. } | DecodeError::Malformed { .. }
            ),
            "len {len}: {err}"
        );
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        codec.decode_local::<NotificationRequested>(&trailing),
        Err(DecodeError::Malformed { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let codec = Codec::single_object();
        let _ = codec.decode_local::<NotificationRequested>(&bytes);
    }

    #[test]
    fn random_bodies_behind_a_valid_header_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let codec = Codec::single_object();
        let mut bytes = vec![0xC3, 0x01];
        bytes.extend_from_slice(&fingerprint(NotificationRequested::schema()).to_le_bytes());
        bytes.extend_from_slice(&body);
        let _ = codec.decode_local::<NotificationRequested>(&bytes);
        let _ = codec.decode_local::<herald_model::wire::Preferences>(&bytes);
    }

    #[test]
    fn mutated_records_never_panic(n in 0u64..1000, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let codec = Codec::single_object();
        let mut bytes = encode_single_object(&sample::notification(n, NOW)).expect("encode");
        for (i, b) in flips {
            let i = 10 + i % (bytes.len() - 10);
            bytes[i] ^= b;
        }
        let _ = codec.decode_local::<NotificationRequested>(&bytes);
    }
}

/// The Confluent framing against a registry of the test's own, shared by
/// the property tests below: the current schema, a v2, another record's
/// schema and a schema that does not parse are registered; one id is not.
struct Registry {
    rt: tokio::runtime::Runtime,
    codec: Codec,
    ids: Vec<u32>,
    _server: TestRegistry,
}

fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let server = rt.block_on(TestRegistry::start()).expect("registry");
        let subject = "herald.notifications-value";
        let ids = vec![
            server.register(
                subject,
                include_str!("../../../schemas/NotificationRequested.avsc"),
            ),
            server.register(subject, V2),
            server.register(
                subject,
                include_str!("../../../schemas/ChannelMessage.avsc"),
            ),
            server.register(
                subject,
                r#"{"type": "record", "name": "Broken", "fields": [{"name": "x"}]}"#,
            ),
            9_999_999,
        ];
        let codec = rt.block_on(async { confluent_codec(&server) });
        Registry {
            rt,
            codec,
            ids,
            _server: server,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any body behind any schema id, known, evolved, of another record,
    /// unparseable or unknown: a value or a typed error, never a panic.
    #[test]
    fn confluent_bodies_never_panic(
        which in 0usize..5,
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let r = registry();
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&r.ids[which].to_be_bytes());
        bytes.extend_from_slice(&body);
        let event = r.rt.block_on(r.codec.decode::<NotificationRequested>(&bytes));
        let message = r.rt.block_on(r.codec.decode::<ChannelMessage>(&bytes));
        if which >= 3 {
            // An unparseable writer schema or an unknown id decodes nothing.
            prop_assert!(event.is_err() && message.is_err());
        }
    }

    /// A valid Confluent-framed record with bytes flipped and cut.
    #[test]
    fn mutated_confluent_records_never_panic(
        n in 0u64..1000,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let r = registry();
        let mut bytes = r
            .rt
            .block_on(r.codec.encode("herald.notifications", &sample::notification(n, NOW)))
            .expect("encode");
        for (i, b) in flips {
            let i = i % bytes.len();
            bytes[i] ^= b;
        }
        bytes.truncate(1 + cut % bytes.len());
        let _ = r.rt.block_on(r.codec.decode::<NotificationRequested>(&bytes));
    }
}
