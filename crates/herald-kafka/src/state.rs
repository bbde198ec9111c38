//! Reading a state partition (compacted topic) to its end: the restore step
//! of every stateful stage.
//!
//! "At the end" means the consumer's position is at or past the high
//! watermark read at the start: the last record of a transactional topic may
//! be a commit marker, which is never delivered as a message, so waiting for
//! a message at `high - 1` could wait forever.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::consumer::{Consumer, DefaultConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::settings::{KafkaSettings, SettingsError};

/// What a restore read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreStats {
    /// Records read.
    pub records: u64,
    /// The end offset reached (the next offset to read for live updates).
    pub end_offset: i64,
    /// Time taken.
    pub elapsed: Duration,
}

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The client could not be built.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A Kafka call failed.
    #[error("restoring {topic}/{partition}: {source}")]
    Kafka {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Client error.
        source: rdkafka::error::KafkaError,
    },
    /// The blocking set-up task failed (panicked or was cancelled).
    #[error("restore set-up task failed: {0}")]
    Blocking(String),
    /// No progress for the stall timeout.
    #[error(
        "restoring {topic}/{partition}: no progress for {timeout:?} at offset {position} of {end}"
    )]
    Stalled {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Timeout.
        timeout: Duration,
        /// Position reached.
        position: i64,
        /// Target end offset.
        end: i64,
    },
}

/// Reads `topic`/`partition` from the beginning to the end offset found at
/// the start, handing each record's key and value (None: tombstone) to `f`.
pub async fn read_to_end(
    settings: &KafkaSettings,
    role: &str,
    topic: &str,
    partition: i32,
    stall_timeout: Duration,
    mut f: impl FnMut(Option<&[u8]>, Option<&[u8]>),
) -> Result<RestoreStats, RestoreError> {
    let started = Instant::now();
    let kafka = |source| RestoreError::Kafka {
        topic: topic.to_string(),
        partition,
        source,
    };
    // A group id is required by the client; `assign` never joins the group
    // and no offset is ever stored or committed for it.
    // Building the client and asking for watermarks block: off the runtime.
    let (consumer, low, high) = {
        let (settings, role, topic) = (settings.clone(), role.to_string(), topic.to_string());
        tokio::task::spawn_blocking(move || -> Result<_, RestoreError> {
            let consumer: StreamConsumer<DefaultConsumerContext> =
                settings.consumer(&role, &format!("{role}-restore"), DefaultConsumerContext)?;
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, settings.request_timeout)
                .map_err(|source| RestoreError::Kafka {
                    topic: topic.clone(),
                    partition,
                    source,
                })?;
            Ok((consumer, low, high))
        })
        .await
        .map_err(|e| RestoreError::Blocking(e.to_string()))??
    };
    let mut records = 0;
    if high > low {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(kafka)?;
        consumer.assign(&tpl).map_err(kafka)?;
        let mut stream = consumer.stream();
        let mut position = low;
        let mut progress = Instant::now();
        // Short waits: when only transaction markers remain, no message
        // comes and the client's position tells that the end is reached.
        let wait = stall_timeout.min(Duration::from_millis(200));
        while position < high {
            match tokio::time::timeout(wait, stream.next()).await {
                Ok(Some(Ok(msg))) => {
                    f(msg.key(), msg.payload());
                    records += 1;
                    position = msg.offset() + 1;
                    progress = Instant::now();
                }
                Ok(Some(Err(e))) => return Err(kafka(e)),
                Ok(None) => break,
                Err(_) => {
                    let pos = consumer
                        .position()
                        .ok()
                        .and_then(|tpl| {
                            tpl.find_partition(topic, partition)
                                .and_then(|e| e.offset().to_raw())
                        })
                        .unwrap_or(position);
                    if pos >= high {
                        break;
                    }
                    if progress.elapsed() >= stall_timeout {
                        return Err(RestoreError::Stalled {
                            topic: topic.to_string(),
                            partition,
                            timeout: stall_timeout,
                            position: pos,
                            end: high,
                        });
                    }
                }
            }
        }
    }
    Ok(RestoreStats {
        records,
        end_offset: high,
        elapsed: started.elapsed(),
    })
}
