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
        Self {
            topic,
            partition: None,
            key: key.map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec),
            headers: vec![
                (DLQ_REASON, reason.as_bytes().to_vec()),
                (DLQ_DETAIL, detail.as_bytes().to_vec()),
                (
                    DLQ_SOURCE,
                    format!("{source_topic}/{partition}/{offset}").into_bytes(),
                ),
            ],
        }
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
