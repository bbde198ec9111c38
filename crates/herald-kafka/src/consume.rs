//! What a consuming stage does with an error its consumer yields.
//!
//! One rule for every stage: librdkafka reconnects, rejoins the group and
//! fetches again by itself after a broker restart, a lost connection or a
//! coordinator move, so such an error is reported (a warning and
//! `herald_consumer_errors_total{stage,code}`) and the stage goes on. Only
//! an error librdkafka itself calls fatal (the client cannot go on) stops
//! the stage. A stage that stops making progress for another reason is the
//! liveness check's business, not this one's.

use std::future::Future;
use std::time::{Duration, Instant};

use herald_telemetry::events::Emit;
use herald_telemetry::Shutdown;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// How long a partition's restore is retried before the stage gives up: a
/// broker failover (a dead leader noticed, a new one elected) takes tens of
/// seconds, during which reading a state partition times out.
pub const RESTORE_PATIENCE: Duration = Duration::from_secs(120);

/// Runs `restore` (reading a partition's state to its end) until it
/// succeeds, retrying with backoff for up to [`RESTORE_PATIENCE`] while the
/// broker fails over; a stop ends the wait with the last error. Before,
/// one metadata timeout during a leader election made the router exit.
pub async fn restore_patiently<T, F, Fut>(
    what: &str,
    stop: &Shutdown,
    mut restore: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    let mut backoff = Duration::from_millis(250);
    loop {
        match restore().await {
            Ok(t) => return Ok(t),
            Err(e) if started.elapsed() < RESTORE_PATIENCE && !stop.is_triggered() => {
                tracing::warn!(
                    what,
                    error = %format!("{e:#}"),
                    "Restoring failed; retrying (the broker may be failing over)."
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return Err(e),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The verdict on one consumer error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerVerdict {
    /// Report it and go on; the code names it for the metric label.
    RideOut(String),
    /// The client cannot go on: stop the stage.
    Stop,
}

/// Classifies an error from a consumer's stream (see the module doc).
pub fn on_consumer_error(e: &KafkaError) -> ConsumerVerdict {
    match e {
        KafkaError::MessageConsumptionFatal(_) => ConsumerVerdict::Stop,
        _ => match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fatal) => ConsumerVerdict::Stop,
            Some(code) => ConsumerVerdict::RideOut(format!("{code:?}")),
            None => ConsumerVerdict::RideOut("Other".into()),
        },
    }
}

/// Applies the rule to one error of `stage`'s consumer: what is ridden out
/// is reported and `Ok` says go on; `Err` gives back a fatal error.
pub fn ride_out(stage: &'static str, e: KafkaError) -> Result<(), KafkaError> {
    match on_consumer_error(&e) {
        ConsumerVerdict::RideOut(code) => {
            herald_telemetry::events::ConsumerErrored {
                stage,
                code: &code,
                error: &e.to_string(),
            }
            .emit();
            Ok(())
        }
        ConsumerVerdict::Stop => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_restart_is_ridden_out_and_a_fatal_error_stops() {
        // What a router saw when its broker restarted.
        let restart = KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure);
        assert_eq!(
            on_consumer_error(&restart),
            ConsumerVerdict::RideOut("BrokerTransportFailure".into())
        );
        let down = KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown);
        assert_eq!(
            on_consumer_error(&down),
            ConsumerVerdict::RideOut("AllBrokersDown".into())
        );
        let fatal = KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::InvalidProducerEpoch);
        assert_eq!(on_consumer_error(&fatal), ConsumerVerdict::Stop);
        let fatal = KafkaError::MessageConsumption(RDKafkaErrorCode::Fatal);
        assert_eq!(on_consumer_error(&fatal), ConsumerVerdict::Stop);
    }
}
