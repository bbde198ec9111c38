//! What a consuming stage does with an error its consumer yields.
//!
//! One rule for every stage: librdkafka reconnects, rejoins the group and
//! fetches again by itself after a broker restart, a lost connection or a
//! coordinator move, so such an error is reported (a warning and
//! `herald_consumer_errors_total{stage,code}`) and the stage goes on. Only
//! an error librdkafka itself calls fatal (the client cannot go on) stops
//! the stage. A stage that stops making progress for another reason is the
//! liveness check's business, not this one's.

use herald_telemetry::events::Emit;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

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
