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

/// Partitions with at least this many records are read in ranges, in
/// parallel: a single fetcher is bound by the broker's round trips.
const PARALLEL_MIN: i64 = 100_000;
/// Ranges read at once at most (1M records on 2 cores: 8 ranges 445k to
/// 504k records/s, 12 ranges 546k to 572k, 16 ranges 378k to 430k).
const MAX_RANGES: i64 = 12;

type Restorer = StreamConsumer<DefaultConsumerContext>;

/// Builds a consumer for one restore read (a group id is required by the
/// client; `assign` never joins the group and nothing is ever committed)
/// and, if asked, the partition's watermarks. Both block: off the runtime.
async fn restore_consumer(
    settings: &KafkaSettings,
    role: &str,
    watermarks_of: Option<(&str, i32)>,
) -> Result<(Restorer, (i64, i64)), RestoreError> {
    let (settings, role) = (settings.clone(), role.to_string());
    let of = watermarks_of.map(|(t, p)| (t.to_string(), p));
    tokio::task::spawn_blocking(move || {
        let consumer: Restorer =
            settings.consumer(&role, &format!("{role}-restore"), DefaultConsumerContext)?;
        let marks = match of {
            None => (0, 0),
            Some((topic, partition)) => consumer
                .fetch_watermarks(&topic, partition, settings.request_timeout)
                .map_err(|source| RestoreError::Kafka {
                    topic,
                    partition,
                    source,
                })?,
        };
        Ok((consumer, marks))
    })
    .await
    .map_err(|e| RestoreError::Blocking(e.to_string()))?
}

/// Reads offsets `start..end` of `topic`/`partition` with `consumer`,
/// handing each record to `f`; returns the records read.
async fn read_range(
    consumer: &Restorer,
    topic: &str,
    partition: i32,
    (start, end): (i64, i64),
    stall_timeout: Duration,
    f: &mut impl FnMut(Option<&[u8]>, Option<&[u8]>),
) -> Result<u64, RestoreError> {
    let kafka = |source| RestoreError::Kafka {
        topic: topic.to_string(),
        partition,
        source,
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(kafka)?;
    consumer.assign(&tpl).map_err(kafka)?;
    let mut stream = consumer.stream();
    let mut records = 0;
    let mut position = start;
    let mut progress = Instant::now();
    // Short waits: when only transaction markers remain, no message comes
    // and the client's position tells that the end is reached.
    let wait = stall_timeout.min(Duration::from_millis(200));
    while position < end {
        match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(Ok(msg))) => {
                if msg.offset() >= end {
                    break;
                }
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
                if pos >= end {
                    break;
                }
                if progress.elapsed() >= stall_timeout {
                    return Err(RestoreError::Stalled {
                        topic: topic.to_string(),
                        partition,
                        timeout: stall_timeout,
                        position: pos,
                        end,
                    });
                }
            }
        }
    }
    Ok(records)
}

/// A record's key and value (None: absent, a tombstone).
pub type OwnedRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A record's key and value as owned bytes: the `parse` of
/// [`read_to_end`] for callers that decode in `apply`.
pub fn owned(key: Option<&[u8]>, value: Option<&[u8]>) -> OwnedRecord {
    (key.map(<[u8]>::to_vec), value.map(<[u8]>::to_vec))
}

/// Reads `topic`/`partition` from the beginning to the end offset found at
/// the start: each record's key and value (None: a tombstone) go through
/// `parse`, and what it returns to `apply`, in offset order. Large
/// partitions are fetched as up to twelve offset ranges at once; the later
/// ranges are parsed as they arrive, on any thread, and kept until the
/// earlier ones are applied, so `apply` (the only step that runs in
/// order) should be the cheap part.
pub async fn read_to_end<T, P, A>(
    settings: &KafkaSettings,
    role: &str,
    topic: &str,
    partition: i32,
    stall_timeout: Duration,
    parse: P,
    mut apply: A,
) -> Result<RestoreStats, RestoreError>
where
    T: Send + 'static,
    P: Fn(Option<&[u8]>, Option<&[u8]>) -> T + Clone + Send + Sync + 'static,
    A: FnMut(T),
{
    let started = Instant::now();
    let (consumer, (low, high)) =
        restore_consumer(settings, role, Some((topic, partition))).await?;
    let mut records = 0;
    if high > low {
        let ranges = ((high - low) / (PARALLEL_MIN / 2)).clamp(1, MAX_RANGES);
        let size = (high - low + ranges - 1) / ranges;
        let bounds: Vec<(i64, i64)> = (0..ranges)
            .map(|i| (low + i * size, (low + (i + 1) * size).min(high)))
            .collect();
        // Later ranges are fetched and parsed concurrently...
        let mut later = Vec::new();
        for &range in bounds.iter().skip(1) {
            let (settings, role, topic) = (settings.clone(), role.to_string(), topic.to_string());
            let parse = parse.clone();
            later.push(tokio::spawn(async move {
                let (consumer, _) = restore_consumer(&settings, &role, None).await?;
                let mut kept = Vec::new();
                let mut keep = |k: Option<&[u8]>, v: Option<&[u8]>| kept.push(parse(k, v));
                let n = read_range(
                    &consumer,
                    &topic,
                    partition,
                    range,
                    stall_timeout,
                    &mut keep,
                )
                .await?;
                Ok::<_, RestoreError>((n, kept))
            }));
        }
        // ...while the first is applied as it arrives; then the rest, in order.
        records += read_range(
            &consumer,
            topic,
            partition,
            bounds[0],
            stall_timeout,
            &mut |k, v| apply(parse(k, v)),
        )
        .await?;
        for task in later {
            let (n, kept) = task
                .await
                .map_err(|e| RestoreError::Blocking(e.to_string()))??;
            kept.into_iter().for_each(&mut apply);
            records += n;
        }
    }
    Ok(RestoreStats {
        records,
        end_offset: high,
        elapsed: started.elapsed(),
    })
}
