//! Herald's delivery workers: one binary per channel (`--channel
//! push|sms|email|webhook`), speaking each provider's real protocol.
//!
//! - `providers`: APNs (HTTP/2, ES256 provider tokens), FCM HTTP v1 (OAuth2
//!   service-account tokens), Twilio Messages, SMTP through lettre, and
//!   Standard Webhooks; each classifies its failures (retryable,
//!   rate-limited, permanent, token invalid).
//! - `breaker`: a circuit breaker per provider; `limiter`: a token bucket
//!   per provider; `retry`: backoff with jitter through the retry tiers,
//!   bounded attempts, then the dead-letter topic.

pub mod breaker;
pub mod config;
pub mod ledger;
pub mod limiter;
pub mod providers;
pub mod retry;
pub mod routes;
pub mod worker;

pub use config::{DeliverConfig, DeliverSettings};
pub use providers::{Accepted, Failure, Provider, SendError};
pub use worker::run;
