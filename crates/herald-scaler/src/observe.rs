//! Reading a consumer group's position from the broker: watermarks,
//! committed offsets, the timestamp of the record at each lagging
//! position, and the group's members. Blocking calls: run them in
//! `spawn_blocking`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use herald_kafka::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::lag::PartitionView;

/// One partition as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionObs {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offsets.
    pub view: PartitionView,
    /// Timestamp (ms) of the first record at or after the group's
    /// position, when there is one.
    pub oldest_unread_ts_ms: Option<i64>,
}

/// A consumer group at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
    /// Every partition of the group's topics.
    pub partitions: Vec<PartitionObs>,
    /// Members of the group (its running replicas); `None` when the broker
    /// cannot describe groups.
    pub members: Option<u32>,
}

/// Reads one group's offsets. Holds two clients: one carrying the group id
/// (it never joins the group or commits; it only asks for the committed
/// offsets and the members), and one that peeks at the record at each
/// lagging position.
pub struct Observer {
    group: String,
    topics: Vec<String>,
    offsets: BaseConsumer,
    peek: BaseConsumer,
    timeout: Duration,
}

impl Observer {
    /// Clients for `group` reading `topics`.
    pub fn new(
        kafka: &KafkaSettings,
        group: &str,
        topics: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut offsets = kafka.consumer_config("scaler", group)?;
        offsets.set("enable.auto.commit", "false");
        let mut peek = kafka.consumer_config("scaler-peek", &format!("{group}.herald-scaler"))?;
        // One small fetch per partition is all a peek needs; reaching the
        // end without a record means only transaction markers remain.
        peek.set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "50")
            .set("max.partition.fetch.bytes", "65536")
            .set("queued.max.messages.kbytes", "1024");
        Ok(Self {
            group: group.to_string(),
            topics: topics.to_vec(),
            offsets: offsets.create().context("creating the offsets client")?,
            peek: peek.create().context("creating the peek client")?,
            timeout,
        })
    }

    /// The group now.
    pub fn observe(&self) -> anyhow::Result<Snapshot> {
        let at_ms = now_ms();
        let mut partitions = Vec::new();
        for topic in &self.topics {
            let metadata = self
                .offsets
                .fetch_metadata(Some(topic), self.timeout)
                .with_context(|| format!("reading the metadata of {topic}"))?;
            let Some(t) = metadata.topics().first() else {
                anyhow::bail!("topic {topic} not in the metadata");
            };
            if let Some(e) = t.error() {
                anyhow::bail!("topic {topic}: {}", RDKafkaErrorCode::from(e));
            }
            let mut tpl = TopicPartitionList::new();
            for p in t.partitions() {
                tpl.add_partition(topic, p.id());
            }
            let committed = self
                .offsets
                .committed_offsets(tpl, self.timeout)
                .with_context(|| format!("reading the committed offsets of {}", self.group))?;
            let mut views = Vec::new();
            for elem in committed.elements() {
                let (low, high) = self
                    .offsets
                    .fetch_watermarks(topic, elem.partition(), self.timeout)
                    .with_context(|| {
                        format!("reading the watermarks of {topic}/{}", elem.partition())
                    })?;
                let committed = match elem.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                views.push((
                    elem.partition(),
                    PartitionView {
                        low,
                        high,
                        committed,
                        last_record: None,
                    },
                ));
            }
            let peeked = self.peek_topic(topic, &views)?;
            for (partition, view) in views {
                let (view, oldest_unread_ts_ms) = apply_peek(view, peeked.get(&partition).copied());
                partitions.push(PartitionObs {
                    topic: topic.clone(),
                    partition,
                    view,
                    oldest_unread_ts_ms,
                });
            }
        }
        // Brokers without DescribeGroups (librdkafka's mock cluster) leave
        // the member count unknown; everything else is still observed.
        let members = match self
            .offsets
            .fetch_group_list(Some(&self.group), self.timeout)
        {
            Ok(list) => Some(
                list.groups()
                    .iter()
                    .find(|g| g.name() == self.group)
                    .map_or(0, |g| g.members().len() as u32),
            ),
            Err(KafkaError::GroupListFetch(RDKafkaErrorCode::UnsupportedFeature)) => None,
            Err(e) => {
                return Err(e).with_context(|| format!("describing the group {}", self.group))
            }
        };
        Ok(Snapshot {
            at_ms,
            partitions,
            members,
        })
    }

    /// For each partition with lag, the first record at or after the
    /// group's position, or the end of the partition.
    fn peek_topic(
        &self,
        topic: &str,
        views: &[(i32, PartitionView)],
    ) -> anyhow::Result<HashMap<i32, Peeked>> {
        let mut tpl = TopicPartitionList::new();
        for (p, v) in views.iter().filter(|(_, v)| v.lag() > 0) {
            tpl.add_partition_offset(topic, *p, Offset::Offset(v.position()))?;
        }
        let mut found = HashMap::new();
        if tpl.count() == 0 {
            return Ok(found);
        }
        self.peek
            .assign(&tpl)
            .context("assigning the peek client")?;
        let deadline = Instant::now() + self.timeout;
        while found.len() < tpl.count() && Instant::now() < deadline {
            match self.peek.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.topic() == topic => {
                    found.entry(m.partition()).or_insert(Peeked::Record {
                        ts_ms: m.timestamp().to_millis(),
                    });
                }
                None | Some(Ok(_)) => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    found.entry(p).or_insert(Peeked::End);
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, topic, "Peek error.");
                }
            }
        }
        self.peek.unassign().context("releasing the peek client")?;
        Ok(found)
    }
}

/// What a peek at a partition's position found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peeked {
    /// A record (its timestamp, ms).
    Record {
        /// Timestamp, when the record has one.
        ts_ms: Option<i64>,
    },
    /// The end of the partition, with no record on the way.
    End,
}

/// Folds a peek into the view: the record's timestamp is the time lag's
/// start; reaching the end without a record means only transaction
/// markers (or aborted data) lie between the position and the high
/// watermark, so nothing is waiting.
pub fn apply_peek(mut view: PartitionView, peeked: Option<Peeked>) -> (PartitionView, Option<i64>) {
    match peeked {
        Some(Peeked::Record { ts_ms }) => (view, ts_ms),
        Some(Peeked::End) => {
            view.last_record = Some(view.position() - 1);
            (view, None)
        }
        None => (view, None),
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peek_that_finds_only_markers_clears_the_lag() {
        // Committed 10, high watermark 11: offset 10 is a commit marker.
        let view = PartitionView {
            low: 0,
            high: 11,
            committed: Some(10),
            last_record: None,
        };
        assert_eq!(view.lag(), 1);
        let (after, ts) = apply_peek(view, Some(Peeked::End));
        assert_eq!((after.lag(), ts), (0, None));
        // A real record there keeps the lag and gives its age.
        let (after, ts) = apply_peek(view, Some(Peeked::Record { ts_ms: Some(5) }));
        assert_eq!((after.lag(), ts), (1, Some(5)));
        // No answer in time: the naive lag stands.
        assert_eq!(apply_peek(view, None).0.lag(), 1);
    }
}
