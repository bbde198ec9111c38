//! Typed client settings, house defaults, auth, and guarded overrides.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_model::Secret;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::producer::FutureProducer;
use serde::Deserialize;

/// The `[kafka]` section of every binary's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list. Empty means "no cluster configured":
    /// `herald dev` then hosts an embedded one.
    pub bootstrap: String,
    /// `client.id` prefix; the stage name is appended.
    pub client_id: String,
    /// Authentication and transport security.
    pub security: Security,
    /// How long admin and metadata calls may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Producer batching delay (`linger.ms`).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Raw librdkafka properties for everything the typed settings do not
    /// cover (for example `compression.type`, `fetch.max.bytes`). A key that
    /// a typed setting owns is rejected at start-up. Numbers and booleans
    /// are accepted as such (`HERALD__KAFKA__OVERRIDES__fetch.max.bytes=1048576`).
    #[serde(deserialize_with = "scalar_map")]
    pub overrides: BTreeMap<String, String>,
    /// Like `overrides`, for consumers only (`session.timeout.ms`,
    /// `max.poll.interval.ms`...): librdkafka warns when a producer gets one.
    #[serde(deserialize_with = "scalar_map")]
    pub consumer_overrides: BTreeMap<String, String>,
    /// Like `overrides`, for producers only (`batch.size`, `compression.type`...).
    #[serde(deserialize_with = "scalar_map")]
    pub producer_overrides: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap: String::new(),
            client_id: "herald".into(),
            security: Security::default(),
            request_timeout: Duration::from_secs(10),
            linger: Duration::from_millis(5),
            overrides: BTreeMap::new(),
            consumer_overrides: BTreeMap::new(),
            producer_overrides: BTreeMap::new(),
        }
    }
}

/// A map whose values may be strings, numbers or booleans, kept as strings
/// (librdkafka properties are strings).
fn scalar_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    let raw = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::S(s) => s,
                Scalar::I(i) => i.to_string(),
                Scalar::F(f) => f.to_string(),
                Scalar::B(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no SASL (local development only).
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// Authentication and transport security.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Security {
    /// Transport: `plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`.
    pub protocol: SecurityProtocol,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    pub username: Option<String>,
    /// SASL password (masked in logs).
    pub password: Option<Secret>,
    /// CA bundle for verifying the brokers (PEM file path).
    pub ca_location: Option<String>,
}

/// Why settings could not be turned into a client.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// An override names a key a typed setting owns.
    #[error("kafka.overrides.\"{key}\" contradicts the typed setting {owner}; set that instead")]
    OverrideConflict {
        /// librdkafka key.
        key: String,
        /// The typed setting that owns it.
        owner: &'static str,
    },
    /// SASL is selected but incomplete.
    #[error("kafka.security.protocol = {protocol} needs kafka.security.{missing}")]
    IncompleteSasl {
        /// Protocol.
        protocol: &'static str,
        /// Missing field.
        missing: &'static str,
    },
    /// No bootstrap address.
    #[error("kafka.bootstrap is empty: set it (or HERALD__KAFKA__BOOTSTRAP) to host:port")]
    NoBootstrap,
    /// librdkafka refused the configuration.
    #[error("librdkafka rejected the client configuration: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
}

/// The partitioner every Herald producer uses and the producer contract
/// names: librdkafka's name for the Java client's default for keyed records.
pub const PARTITIONER: &str = "murmur2_random";

/// librdkafka keys owned by typed settings or by Herald's processing
/// guarantees, and who owns them.
const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.bootstrap"),
    ("client.id", "kafka.client_id"),
    ("security.protocol", "kafka.security.protocol"),
    ("sasl.mechanism", "kafka.security.sasl_mechanism"),
    ("sasl.mechanisms", "kafka.security.sasl_mechanism"),
    ("sasl.username", "kafka.security.username"),
    ("sasl.password", "kafka.security.password"),
    ("ssl.ca.location", "kafka.security.ca_location"),
    ("linger.ms", "kafka.linger"),
    ("queue.buffering.max.ms", "kafka.linger"),
    ("group.id", "the stage's consumer group"),
    ("transactional.id", "the stage's processing guarantee"),
    (
        "enable.idempotence",
        "Herald's delivery guarantee (always on)",
    ),
    ("acks", "Herald's delivery guarantee (always all)"),
    (
        "partitioner",
        "the producer contract (murmur2 of the key, as the Java client: topics are co-partitioned by user id across languages)",
    ),
    (
        "request.required.acks",
        "Herald's delivery guarantee (always all)",
    ),
    (
        "enable.auto.offset.store",
        "Herald's offset handling (stored after effects are durable)",
    ),
    ("isolation.level", "Herald's read_committed consumers"),
];

/// How a producer guarantees its writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProducerKind {
    /// Idempotent, acks=all.
    Idempotent,
    /// Transactional with this `transactional.id`.
    Transactional(String),
}

impl KafkaSettings {
    /// Settings pointing at `bootstrap` with every other value defaulted.
    pub fn with_bootstrap(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            ..Self::default()
        }
    }

    /// Checks the settings without building a client.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.bootstrap.trim().is_empty() {
            return Err(SettingsError::NoBootstrap);
        }
        for key in self
            .overrides
            .keys()
            .chain(self.consumer_overrides.keys())
            .chain(self.producer_overrides.keys())
        {
            if let Some((_, owner)) = OWNED.iter().find(|(k, _)| k == key) {
                return Err(SettingsError::OverrideConflict {
                    key: key.clone(),
                    owner,
                });
            }
        }
        let s = &self.security;
        if s.protocol.uses_sasl() {
            let protocol = s.protocol.as_str();
            if s.sasl_mechanism.is_none() {
                return Err(SettingsError::IncompleteSasl {
                    protocol,
                    missing: "sasl_mechanism",
                });
            }
            if s.username.is_none() {
                return Err(SettingsError::IncompleteSasl {
                    protocol,
                    missing: "username",
                });
            }
            if s.password.is_none() {
                return Err(SettingsError::IncompleteSasl {
                    protocol,
                    missing: "password",
                });
            }
        }
        Ok(())
    }

    /// Common settings: bootstrap, client id, auth, overrides.
    fn base(&self, role: &str) -> Result<ClientConfig, SettingsError> {
        self.validate()?;
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("client.id", format!("{}-{role}", self.client_id))
            .set("socket.keepalive.enable", "true");
        self.apply_security(&mut c);
        for (k, v) in &self.overrides {
            c.set(k, v);
        }
        Ok(c)
    }

    /// Applies `security` to a client configuration.
    pub fn apply_security(&self, c: &mut ClientConfig) {
        let s = &self.security;
        c.set("security.protocol", s.protocol.as_str());
        if let Some(m) = &s.sasl_mechanism {
            c.set("sasl.mechanism", m);
        }
        if let Some(u) = &s.username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &s.password {
            c.set("sasl.password", p.expose());
        }
        if let Some(ca) = &s.ca_location {
            c.set("ssl.ca.location", ca);
        }
    }

    /// Consumer configuration for `group`: offsets are stored explicitly
    /// (only after an effect is durable) and committed in the background;
    /// reads are `read_committed`; a new group starts at the earliest offset.
    pub fn consumer_config(&self, role: &str, group: &str) -> Result<ClientConfig, SettingsError> {
        let mut c = self.base(role)?;
        c.set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false");
        reapply_overrides(
            &mut c,
            &self.overrides,
            &[
                "enable.auto.commit",
                "auto.commit.interval.ms",
                "auto.offset.reset",
            ],
        );
        for (k, v) in &self.consumer_overrides {
            c.set(k, v);
        }
        Ok(c)
    }

    /// Producer configuration: idempotent, acks=all, optionally transactional.
    pub fn producer_config(
        &self,
        role: &str,
        kind: &ProducerKind,
    ) -> Result<ClientConfig, SettingsError> {
        let mut c = self.base(role)?;
        // The Java client's partitioner (murmur2 of the key; librdkafka's
        // own default is CRC32): a user's notifications, preferences and
        // channel messages share a partition number whatever the language
        // of the producer, as the producer contract says.
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", PARTITIONER)
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("message.timeout.ms", "300000");
        if let ProducerKind::Transactional(id) = kind {
            // librdkafka requires message.timeout.ms <= transaction.timeout.ms.
            c.set("transactional.id", id)
                .set("transaction.timeout.ms", "60000")
                .set("message.timeout.ms", "60000");
        }
        reapply_overrides(&mut c, &self.overrides, &["message.timeout.ms"]);
        for (k, v) in &self.producer_overrides {
            c.set(k, v);
        }
        Ok(c)
    }

    /// A consumer for `group`.
    pub fn consumer<C: ConsumerContext + 'static>(
        &self,
        role: &str,
        group: &str,
        context: C,
    ) -> Result<StreamConsumer<C>, SettingsError> {
        Ok(self
            .consumer_config(role, group)?
            .create_with_context(context)?)
    }

    /// [`consumer`](Self::consumer) with librdkafka's prefetch bounded to
    /// `kbytes` (`queued.max.messages.kbytes`, 64 MB by default, which any
    /// backlog fills) unless `consumer_overrides` sets it.
    pub fn bounded_consumer<C: ConsumerContext + 'static>(
        &self,
        role: &str,
        group: &str,
        kbytes: u32,
        context: C,
    ) -> Result<StreamConsumer<C>, SettingsError> {
        const PREFETCH: &str = "queued.max.messages.kbytes";
        let mut c = self.consumer_config(role, group)?;
        if c.get(PREFETCH).is_none() {
            c.set(PREFETCH, kbytes.to_string());
        }
        Ok(c.create_with_context(context)?)
    }

    /// A consumer whose offsets are committed only inside its producer's
    /// transactions (`send_offsets_to_transaction`): no background commits.
    pub fn transactional_consumer<C: ConsumerContext + 'static>(
        &self,
        role: &str,
        group: &str,
        context: C,
    ) -> Result<StreamConsumer<C>, SettingsError> {
        let mut c = self.consumer_config(role, group)?;
        c.set("enable.auto.commit", "false");
        Ok(c.create_with_context(context)?)
    }

    /// A producer.
    pub fn producer(
        &self,
        role: &str,
        kind: &ProducerKind,
    ) -> Result<FutureProducer, SettingsError> {
        Ok(self.producer_config(role, kind)?.create()?)
    }

    /// An admin client.
    pub fn admin(&self) -> Result<AdminClient<DefaultClientContext>, SettingsError> {
        Ok(self.base("admin")?.create()?)
    }
}

/// House defaults an operator may change: re-applies the override for the
/// listed keys after the defaults were set.
fn reapply_overrides(c: &mut ClientConfig, overrides: &BTreeMap<String, String>, keys: &[&str]) {
    for key in keys {
        if let Some(v) = overrides.get(*key) {
            c.set(*key, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn house_defaults_are_set() {
        let s = KafkaSettings::with_bootstrap("127.0.0.1:9092");
        let c = s
            .consumer_config("router", "herald-router")
            .expect("config");
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("client.id"), Some("herald-router"));
        let p = s
            .producer_config("router", &ProducerKind::Transactional("r-0".into()))
            .expect("config");
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("transactional.id"), Some("r-0"));
    }

    #[test]
    fn overrides_that_contradict_typed_settings_are_rejected() {
        let mut s = KafkaSettings::with_bootstrap("b:9092");
        s.overrides
            .insert("enable.idempotence".into(), "false".into());
        let err = s.validate().unwrap_err().to_string();
        assert!(
            err.contains("enable.idempotence") && err.contains("always on"),
            "{err}"
        );

        let mut s = KafkaSettings::with_bootstrap("b:9092");
        s.overrides.insert("compression.type".into(), "lz4".into());
        s.overrides
            .insert("auto.offset.reset".into(), "latest".into());
        let c = s.consumer_config("x", "g").expect("allowed");
        assert_eq!(c.get("compression.type"), Some("lz4"));
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
    }

    #[test]
    fn role_overrides_reach_only_their_role_and_are_guarded_too() {
        let mut s = KafkaSettings::with_bootstrap("b:9092");
        s.consumer_overrides
            .insert("session.timeout.ms".into(), "6000".into());
        s.producer_overrides
            .insert("batch.size".into(), "65536".into());
        let c = s.consumer_config("x", "g").expect("consumer");
        let p = s
            .producer_config("x", &ProducerKind::Idempotent)
            .expect("producer");
        assert_eq!(c.get("session.timeout.ms"), Some("6000"));
        assert_eq!(p.get("session.timeout.ms"), None);
        assert_eq!(p.get("batch.size"), Some("65536"));
        assert_eq!(c.get("batch.size"), None);
        s.producer_overrides.insert("acks".into(), "1".into());
        assert!(matches!(
            s.validate(),
            Err(SettingsError::OverrideConflict { .. })
        ));
    }

    #[test]
    fn sasl_needs_every_part_and_the_password_is_never_printed() {
        let mut s = KafkaSettings::with_bootstrap("b:9092");
        s.security.protocol = SecurityProtocol::SaslSsl;
        s.security.sasl_mechanism = Some("SCRAM-SHA-512".into());
        s.security.username = Some("herald".into());
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("kafka.security.password"));
        s.security.password = Some(Secret::new("pa55word"));
        let c = s
            .producer_config("p", &ProducerKind::Idempotent)
            .expect("config");
        assert_eq!(c.get("sasl.password"), Some("pa55word"));
        assert!(!format!("{s:?}").contains("pa55word"));
        assert!(matches!(
            KafkaSettings::default().validate(),
            Err(SettingsError::NoBootstrap)
        ));
    }
}
