//! Every Herald topic, declared once, and its reconciliation with a cluster.
//!
//! `apply` creates what is missing and reports drift on what exists; it never
//! deletes, never shrinks and never alters a live topic (changing partition
//! counts re-partitions keyed data, which an operator must decide).

use std::collections::BTreeMap;
use std::time::Duration;

use herald_model::{Channel, Priority};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use serde::Deserialize;

/// Delivery retry tiers: topic suffix and delay.
pub const RETRY_TIERS: &[(&str, Duration)] = &[
    ("10s", Duration::from_secs(10)),
    ("1m", Duration::from_secs(60)),
    ("10m", Duration::from_secs(600)),
    ("1h", Duration::from_secs(3600)),
];

const DAY_MS: i64 = 86_400_000;

/// The `[topics]` section: sizes and the name prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopologySettings {
    /// Prefix of every topic name (`<prefix>.notifications`).
    pub prefix: String,
    /// Partitions of the notifications topic and everything co-partitioned
    /// with it (dedup state, preferences, deferred).
    pub partitions: i32,
    /// Partitions of each channel lane topic, retry tier and ledger.
    pub channel_partitions: i32,
    /// Replication factor of every topic.
    pub replication_factor: i32,
    /// `min.insync.replicas`; omitted when the replication factor is 1.
    pub min_insync_replicas: i32,
}

impl Default for TopologySettings {
    fn default() -> Self {
        Self {
            prefix: "herald".into(),
            partitions: 12,
            channel_partitions: 12,
            replication_factor: 3,
            min_insync_replicas: 2,
        }
    }
}

/// One topic's declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Full topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// Topic configs (`cleanup.policy`, `max.message.bytes`, `retention.ms`,
    /// `min.insync.replicas`).
    pub configs: BTreeMap<&'static str, String>,
}

impl TopicSpec {
    fn new(
        name: String,
        partitions: i32,
        s: &TopologySettings,
        policy: &str,
        retention_ms: Option<i64>,
    ) -> Self {
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy", policy.to_string());
        configs.insert(
            "max.message.bytes",
            crate::produce::TOPIC_MAX_MESSAGE_BYTES.to_string(),
        );
        if let Some(ms) = retention_ms {
            configs.insert("retention.ms", ms.to_string());
        }
        if s.replication_factor > 1 {
            configs.insert(
                "min.insync.replicas",
                s.min_insync_replicas.min(s.replication_factor).to_string(),
            );
        }
        Self {
            name,
            partitions,
            replication_factor: s.replication_factor,
            configs,
        }
    }
}

/// Every Herald topic.
#[derive(Debug, Clone)]
pub struct Topology {
    settings: TopologySettings,
    topics: Vec<TopicSpec>,
}

impl Topology {
    /// Builds the topology from settings.
    pub fn new(settings: TopologySettings) -> Self {
        let s = &settings;
        let p = &s.prefix;
        let mut topics = vec![
            TopicSpec::new(
                format!("{p}.notifications"),
                s.partitions,
                s,
                "delete",
                Some(7 * DAY_MS),
            ),
            TopicSpec::new(format!("{p}.dedup-state"), s.partitions, s, "compact", None),
            TopicSpec::new(format!("{p}.preferences"), s.partitions, s, "compact", None),
            TopicSpec::new(
                format!("{p}.deferred"),
                s.partitions,
                s,
                "delete",
                Some(7 * DAY_MS),
            ),
            TopicSpec::new(
                format!("{p}.status"),
                s.partitions,
                s,
                "delete",
                Some(7 * DAY_MS),
            ),
            TopicSpec::new(
                format!("{p}.dead-letter"),
                s.partitions,
                s,
                "delete",
                Some(30 * DAY_MS),
            ),
        ];
        for channel in Channel::ALL {
            for lane in Priority::ALL {
                topics.push(TopicSpec::new(
                    format!("{p}.{channel}.{lane}"),
                    s.channel_partitions,
                    s,
                    "delete",
                    Some(3 * DAY_MS),
                ));
            }
            for (tier, _) in RETRY_TIERS {
                topics.push(TopicSpec::new(
                    format!("{p}.{channel}.retry-{tier}"),
                    s.channel_partitions,
                    s,
                    "delete",
                    Some(7 * DAY_MS),
                ));
            }
            topics.push(TopicSpec::new(
                format!("{p}.{channel}.dead-letter"),
                s.channel_partitions,
                s,
                "delete",
                Some(30 * DAY_MS),
            ));
            topics.push(TopicSpec::new(
                format!("{p}.{channel}.ledger"),
                s.channel_partitions,
                s,
                "compact",
                None,
            ));
        }
        Self { settings, topics }
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &TopologySettings {
        &self.settings
    }

    /// Every topic.
    pub fn topics(&self) -> &[TopicSpec] {
        &self.topics
    }

    /// The notifications topic (the input).
    pub fn notifications(&self) -> String {
        format!("{}.notifications", self.settings.prefix)
    }

    /// A channel's lane topic.
    pub fn lane(&self, channel: Channel, priority: Priority) -> String {
        format!("{}.{channel}.{priority}", self.settings.prefix)
    }

    /// A named topic (`dedup-state`, `status`, ...) under the prefix.
    pub fn named(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.settings.prefix)
    }
}

/// A difference between the declared and the live shape of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// Topic.
    pub topic: String,
    /// `partitions`, `replication_factor` or a config key.
    pub setting: String,
    /// Declared value.
    pub declared: String,
    /// Live value.
    pub live: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} is {} (declared {})",
            self.topic, self.setting, self.live, self.declared
        )
    }
}

/// What `apply` did and found.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    /// Topics created now.
    pub created: Vec<String>,
    /// Topics that existed and match.
    pub unchanged: Vec<String>,
    /// Differences on existing topics (left as they are).
    pub drift: Vec<Drift>,
}

/// A topic as the cluster reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTopic {
    /// Name.
    pub name: String,
    /// Partition count (None: the topic does not exist).
    pub partitions: Option<i32>,
    /// Replicas of partition 0.
    pub replication_factor: Option<i32>,
    /// The configs Herald declares, as the cluster reports them.
    pub configs: BTreeMap<String, String>,
}

/// Why a topology call failed.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A Kafka call failed.
    #[error("kafka {operation} failed: {source}")]
    Kafka {
        /// What was being done.
        operation: &'static str,
        /// The client error.
        source: rdkafka::error::KafkaError,
    },
    /// More replicas declared than the cluster has brokers. Some brokers
    /// (nisshi) accept such a topic silently, leaving it without the
    /// redundancy the setting promises; others refuse it topic by topic.
    #[error(
        "topics.replication_factor is {replication_factor} but the cluster has {brokers} broker(s): \
         set topics.replication_factor (and topics.min_insync_replicas) to at most {brokers}; \
         nothing was created"
    )]
    TooFewBrokers {
        /// Declared replication factor.
        replication_factor: i32,
        /// Brokers in the cluster's metadata.
        brokers: usize,
    },
    /// Creating one topic failed.
    #[error("creating topic {topic} failed: {code}")]
    Create {
        /// Topic.
        topic: String,
        /// Broker error code.
        code: RDKafkaErrorCode,
    },
}

/// Reads the live shape of every declared topic.
pub async fn describe(
    admin: &AdminClient<DefaultClientContext>,
    topology: &Topology,
    timeout: Duration,
) -> Result<Vec<LiveTopic>, TopologyError> {
    let metadata = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|source| TopologyError::Kafka {
            operation: "metadata",
            source,
        })?;
    let mut live: BTreeMap<String, (i32, i32)> = BTreeMap::new();
    for t in metadata.topics() {
        if t.error().is_none() {
            let rf = t
                .partitions()
                .first()
                .map_or(0, |p| p.replicas().len() as i32);
            live.insert(t.name().to_string(), (t.partitions().len() as i32, rf));
        }
    }
    let existing: Vec<&TopicSpec> = topology
        .topics()
        .iter()
        .filter(|t| live.contains_key(&t.name))
        .collect();
    let mut configs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    if !existing.is_empty() {
        let resources: Vec<ResourceSpecifier<'_>> = existing
            .iter()
            .map(|t| ResourceSpecifier::Topic(&t.name))
            .collect();
        let opts = AdminOptions::new().request_timeout(Some(timeout));
        let results = admin
            .describe_configs(&resources, &opts)
            .await
            .map_err(|source| TopologyError::Kafka {
                operation: "describe configs",
                source,
            })?;
        for (spec, result) in existing.iter().zip(results) {
            let Ok(resource) = result else { continue };
            let wanted: BTreeMap<String, String> = spec
                .configs
                .keys()
                .filter_map(|k| {
                    resource
                        .get(k)
                        .and_then(|e| e.value.clone())
                        .map(|v| (k.to_string(), v))
                })
                .collect();
            configs.insert(spec.name.clone(), wanted);
        }
    }
    Ok(topology
        .topics()
        .iter()
        .map(|spec| {
            let shape = live.get(&spec.name);
            LiveTopic {
                name: spec.name.clone(),
                partitions: shape.map(|s| s.0),
                replication_factor: shape.map(|s| s.1),
                configs: configs.remove(&spec.name).unwrap_or_default(),
            }
        })
        .collect())
}

/// Compares one declared topic with its live shape.
pub fn drift_of(spec: &TopicSpec, live: &LiveTopic) -> Vec<Drift> {
    let mut out = Vec::new();
    let mut push = |setting: &str, declared: String, live: String| {
        if declared != live {
            out.push(Drift {
                topic: spec.name.clone(),
                setting: setting.to_string(),
                declared,
                live,
            });
        }
    };
    if let Some(p) = live.partitions {
        push("partitions", spec.partitions.to_string(), p.to_string());
    }
    if let Some(rf) = live.replication_factor {
        push(
            "replication_factor",
            spec.replication_factor.to_string(),
            rf.to_string(),
        );
    }
    for (key, declared) in &spec.configs {
        let live_value = live
            .configs
            .get(*key)
            .cloned()
            .unwrap_or_else(|| "(unset)".into());
        push(key, declared.clone(), live_value);
    }
    out
}

/// Creates missing topics and reports drift on existing ones. Idempotent.
pub async fn apply(
    admin: &AdminClient<DefaultClientContext>,
    topology: &Topology,
    timeout: Duration,
) -> Result<ApplyReport, TopologyError> {
    let before = describe(admin, topology, timeout).await?;
    let mut report = ApplyReport::default();
    let missing: Vec<&TopicSpec> = topology
        .topics()
        .iter()
        .zip(&before)
        .filter(|(_, live)| live.partitions.is_none())
        .map(|(spec, _)| spec)
        .collect();
    if !missing.is_empty() {
        let brokers = admin
            .inner()
            .fetch_metadata(None, timeout)
            .map_err(|source| TopologyError::Kafka {
                operation: "metadata",
                source,
            })?
            .brokers()
            .len();
        if let Some(spec) = missing
            .iter()
            .find(|s| usize::try_from(s.replication_factor).unwrap_or(0) > brokers)
        {
            return Err(TopologyError::TooFewBrokers {
                replication_factor: spec.replication_factor,
                brokers,
            });
        }
        let new_topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|spec| {
                let mut t = NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication_factor),
                );
                for (k, v) in &spec.configs {
                    t = t.set(k, v);
                }
                t
            })
            .collect();
        let opts = AdminOptions::new()
            .operation_timeout(Some(timeout))
            .request_timeout(Some(timeout));
        let results = admin
            .create_topics(&new_topics, &opts)
            .await
            .map_err(|source| TopologyError::Kafka {
                operation: "create topics",
                source,
            })?;
        for result in results {
            match result {
                Ok(name) => report.created.push(name),
                // Another instance created it in between: fine, compare below.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(TopologyError::Create { topic, code }),
            }
        }
    }
    for (spec, live) in topology.topics().iter().zip(&before) {
        if live.partitions.is_none() {
            continue;
        }
        let drift = drift_of(spec, live);
        if drift.is_empty() {
            report.unchanged.push(spec.name.clone());
        } else {
            report.drift.extend(drift);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topology_declares_every_stage_topic() {
        let t = Topology::new(TopologySettings {
            prefix: "acme".into(),
            ..TopologySettings::default()
        });
        let names: Vec<&str> = t.topics().iter().map(|s| s.name.as_str()).collect();
        for want in [
            "acme.notifications",
            "acme.dedup-state",
            "acme.push.urgent",
            "acme.email.bulk",
            "acme.sms.retry-10m",
            "acme.webhook.ledger",
        ] {
            assert!(names.contains(&want), "{want} missing");
        }
        assert_eq!(names.len(), 6 + 4 * (3 + 4 + 2));
        let state = &t.topics()[1];
        assert_eq!(
            state.configs.get("cleanup.policy").map(String::as_str),
            Some("compact")
        );
        assert_eq!(
            state.partitions,
            t.topics()[0].partitions,
            "dedup state is co-partitioned with the input"
        );
        assert_eq!(t.lane(Channel::Sms, Priority::Urgent), "acme.sms.urgent");
    }

    #[test]
    fn min_insync_is_left_out_for_single_replica_clusters() {
        let t = Topology::new(TopologySettings {
            replication_factor: 1,
            ..TopologySettings::default()
        });
        assert!(t
            .topics()
            .iter()
            .all(|s| !s.configs.contains_key("min.insync.replicas")));
    }

    #[test]
    fn drift_names_each_differing_setting() {
        let t = Topology::new(TopologySettings::default());
        let spec = &t.topics()[0];
        let live = LiveTopic {
            name: spec.name.clone(),
            partitions: Some(6),
            replication_factor: Some(3),
            configs: [
                ("cleanup.policy".to_string(), "delete".to_string()),
                ("max.message.bytes".to_string(), "500000".to_string()),
                ("retention.ms".to_string(), "1000".to_string()),
            ]
            .into_iter()
            .collect(),
        };
        let d = drift_of(spec, &live);
        let settings: Vec<&str> = d.iter().map(|d| d.setting.as_str()).collect();
        assert_eq!(
            settings,
            vec![
                "partitions",
                "max.message.bytes",
                "min.insync.replicas",
                "retention.ms"
            ]
        );
    }
}
