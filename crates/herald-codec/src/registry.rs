//! The Confluent-compatible schema registry, through `schema_registry_converter`
//! (which caches every schema it fetched or registered).

use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use herald_model::Secret;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::avro_common::AvroSchema;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::Deserialize;

use crate::error::{DecodeError, EncodeError};

/// How to reach the registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// Base URL, for example `http://registry:8081`.
    pub url: String,
    /// Basic-auth user name, if the registry needs one.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Timeout of one registry call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl RegistrySettings {
    /// Settings for a registry at `url` with no authentication.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            username: None,
            password: None,
            timeout: default_timeout(),
        }
    }
}

pub(crate) struct Registry {
    decoder: AvroDecoder,
    encoder: AvroEncoder,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    pub(crate) fn new(settings: &RegistrySettings) -> Result<Self, String> {
        let mut builder = SrSettings::new_builder(settings.url.clone());
        builder.no_proxy().set_timeout(settings.timeout);
        if let Some(user) = &settings.username {
            builder.set_basic_authorization(user, settings.password.as_ref().map(Secret::expose));
        }
        let sr = builder.build().map_err(|e| e.error)?;
        Ok(Self {
            decoder: AvroDecoder::new(sr.clone()),
            encoder: AvroEncoder::new(sr),
        })
    }

    /// The writer schema registered under `id` (cached after the first call).
    pub(crate) async fn writer_schema(&self, id: u32) -> Result<Arc<AvroSchema>, DecodeError> {
        self.decoder.get_schema(id).await.map_err(|e| {
            if e.retriable {
                DecodeError::RegistryUnavailable {
                    id,
                    message: e.error,
                }
            } else {
                DecodeError::UnknownSchemaId {
                    id,
                    message: e.error,
                }
            }
        })
    }

    /// Registers `schema` under the topic's value subject (`<topic>-value`),
    /// or finds it already registered, and returns its id (cached).
    pub(crate) async fn schema_id(
        &self,
        topic: &str,
        record: &'static str,
        source: &str,
    ) -> Result<u32, EncodeError> {
        let supplied = SuppliedSchema::new(
            Some(record.to_string()),
            SchemaType::Avro,
            source.to_string(),
        );
        let strategy =
            SubjectNameStrategy::TopicNameStrategyWithSchema(topic.to_string(), false, supplied);
        let subject = format!("{topic}-value");
        // The cache key names the record too: one subject, one record type.
        let cache_key = format!("{subject}#{record}");
        self.encoder
            .get_schema_and_id(&cache_key, strategy)
            .await
            .map(|s| s.id)
            .map_err(|e| EncodeError::Registry {
                subject,
                message: e.error,
                retryable: e.retriable,
            })
    }
}

/// The record name of a writer schema, for error messages.
pub(crate) fn record_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => r.name.fullname(None),
        _ => "a non-record schema".to_string(),
    }
}
