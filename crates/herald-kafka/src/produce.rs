//! Producing records whose acknowledgement a stage waits for before it
//! stores the input offset (at-least-once), shared by every stage.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

/// Header naming why a record was dead-lettered (a fixed reason label).
pub const DLQ_REASON: &str = "herald.dlq.reason";
/// Header with the error's text.
pub const DLQ_DETAIL: &str = "herald.dlq.detail";
/// Header with the source `topic/partition/offset`.
pub const DLQ_SOURCE: &str = "herald.dlq.source";
/// Header on a dead letter whose body was cut to [`DLQ_BODY_MAX`]: the
/// original body's length in bytes (the source coordinates find the rest).
pub const DLQ_TRUNCATED: &str = "herald.dlq.truncated";

/// The most one Herald record may carry (key, value and headers). Every
/// Herald producer refuses records above librdkafka's `message.max.bytes`
/// (1,000,000) and brokers refuse them above `max.message.bytes`
/// (1,048,588 by default); this leaves room for the record's framing and
/// for what a delivery worker adds to a retry (its attempt history). A
/// stage checks its outputs against it before producing: an output over
/// it is a per-record outcome (a dead letter), never a failed produce.
pub const MAX_RECORD_BYTES: usize = 900_000;
/// `max.message.bytes` that `herald topics apply` declares on every Herald
/// topic: Apache Kafka's default (1 MiB plus a batch header), pinned so a
/// cluster whose brokers default lower still takes every Herald record,
/// and a topic set lower by hand shows as drift instead of as failed
/// produces. It holds a batch of one record of [`MAX_RECORD_BYTES`] with
/// room to spare; librdkafka's `message.max.bytes` (1,000,000) lies between.
pub const TOPIC_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// librdkafka's default `message.max.bytes`, which Herald's producers keep.
const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;
// The limits nest, checked when compiling: Herald's own bound with room
// for a retry's attempt history, then the producer's, then the topic's
// with a record batch's header.
const _: () = assert!(MAX_RECORD_BYTES + 64 * 1024 < LIBRDKAFKA_MESSAGE_MAX_BYTES);
const _: () = assert!(LIBRDKAFKA_MESSAGE_MAX_BYTES + 61 + 64 < TOPIC_MAX_MESSAGE_BYTES);
/// A dead letter keeps at most this much of the original body.
pub const DLQ_BODY_MAX: usize = 256 * 1024;
/// A dead letter's detail header keeps at most this much of the error.
const DLQ_DETAIL_MAX: usize = 2048;

/// A record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Out {
    /// Destination topic.
    pub topic: String,
    /// Destination partition; `None` lets the partitioner pick by key.
    /// State records name it: they live in the partition of their input.
    pub partition: Option<i32>,
    /// Key (`None` only for keyless records).
    pub key: Option<Vec<u8>>,
    /// Value (`None`: a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

impl Out {
    /// A tombstone for `key` in a compacted state topic's `partition`.
    pub fn tombstone(topic: String, partition: i32, key: Vec<u8>) -> Self {
        Self {
            topic,
            partition: Some(partition),
            key: Some(key),
            payload: None,
            headers: Vec::new(),
        }
    }

    /// The dead letter of a source record: its original key and bytes,
    /// with the reason, the error and where it came from as headers.
    pub fn dead_letter(
        topic: String,
        source: (&str, i32, i64),
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        reason: &str,
        detail: &str,
    ) -> Self {
        let (source_topic, partition, offset) = source;
        let detail = cut(detail, DLQ_DETAIL_MAX);
        let mut headers = vec![
            (DLQ_REASON, reason.as_bytes().to_vec()),
            (DLQ_DETAIL, detail.as_bytes().to_vec()),
            (
                DLQ_SOURCE,
                format!("{source_topic}/{partition}/{offset}").into_bytes(),
            ),
        ];
        let payload = payload.map(|p| {
            if p.len() > DLQ_BODY_MAX {
                headers.push((DLQ_TRUNCATED, p.len().to_string().into_bytes()));
                p[..DLQ_BODY_MAX].to_vec()
            } else {
                p.to_vec()
            }
        });
        // A key is the producer's to choose; one too large is cut as well.
        let key = key.map(|k| k[..k.len().min(DLQ_BODY_MAX / 4)].to_vec());
        Self {
            topic,
            partition: None,
            key,
            payload,
            headers,
        }
    }

    /// What the record carries: key, value and headers, in bytes.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.payload.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// Enqueues one record, with an optional extra header; the future
/// resolves when the broker acknowledges it. A refused enqueue (queue
/// full, unknown topic) is an error, so the input's offset is never stored.
pub fn send(
    producer: &FutureProducer,
    out: Out,
    extra_header: Option<(&str, &[u8])>,
) -> Result<DeliveryFuture, String> {
    let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(&out.topic);
    // Most records have no headers: an empty header list would still be
    // allocated, copied and freed by librdkafka for each of them.
    if !out.headers.is_empty() || extra_header.is_some() {
        let mut headers = OwnedHeaders::new_with_capacity(out.headers.len() + 1);
        for (k, v) in &out.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        if let Some((key, value)) = extra_header {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        record = record.headers(headers);
    }
    if let Some(k) = &out.key {
        record = record.key(k);
    }
    if let Some(p) = out.partition {
        record = record.partition(p);
    }
    if let Some(p) = &out.payload {
        record = record.payload(p);
    }
    producer
        .send_result(record)
        .map_err(|(e, _)| format!("{}: {e}", out.topic))
}

/// Waits up to `timeout` for every record the producer holds to be
/// acknowledged (librdkafka's flush, which blocks: it runs on tokio's
/// blocking pool, not on an async worker).
pub async fn flush(producer: &FutureProducer, timeout: std::time::Duration) {
    let producer = producer.clone();
    let _ = tokio::task::spawn_blocking(move || {
        rdkafka::producer::Producer::flush(&producer, rdkafka::util::Timeout::After(timeout))
    })
    .await;
}

/// Waits for a record's acknowledgement (or reports why it was refused).
pub async fn acked(sent: Result<DeliveryFuture, String>) -> Result<(), String> {
    match sent?.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e.to_string()),
        Err(_) => Err("producer dropped".into()),
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_always_fits_and_says_what_was_cut() {
        let body = vec![7u8; 999_932];
        let detail = "é".repeat(10_000);
        let key = vec![1u8; 900_000];
        let d = Out::dead_letter(
            "dlq".into(),
            ("in", 3, 42),
            Some(&key),
            Some(&body),
            "too_large",
            &detail,
        );
        assert!(d.size() <= MAX_RECORD_BYTES, "{}", d.size());
        assert_eq!(d.payload.as_ref().map(Vec::len), Some(DLQ_BODY_MAX));
        let header = |name| {
            d.headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap_or_default())
        };
        assert_eq!(header(DLQ_TRUNCATED).as_deref(), Some("999932"));
        assert_eq!(header(DLQ_SOURCE).as_deref(), Some("in/3/42"));
        assert!(header(DLQ_DETAIL).is_some_and(|d| d.len() <= 2048 && d.starts_with('é')));

        let small = Out::dead_letter("dlq".into(), ("in", 0, 1), None, Some(b"x"), "r", "d");
        assert_eq!(small.payload.as_deref(), Some(&b"x"[..]));
        assert!(!small.headers.iter().any(|(k, _)| *k == DLQ_TRUNCATED));
    }
}
