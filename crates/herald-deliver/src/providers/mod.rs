//! Provider adapters and what a failed send means.

/// Implements [`Provider`] for an adapter whose inherent
/// `async fn send_one(&self, &ChannelMessage)` does the work, bounded by
/// the deadline in the adapter's field `$deadline` (see [`within`]).
macro_rules! provider {
    ($adapter:ty, $name:expr, $($deadline:ident).+) => {
        impl $crate::providers::Provider for $adapter {
            fn name(&self) -> &'static str {
                $name
            }

            fn deadline(&self) -> std::time::Duration {
                self.$($deadline).+
            }

            fn send<'a>(
                &'a self,
                message: &'a herald_model::wire::ChannelMessage,
            ) -> futures::future::BoxFuture<
                'a,
                Result<$crate::providers::Accepted, $crate::providers::SendError>,
            > {
                Box::pin($crate::providers::within(
                    self.$($deadline).+,
                    $name,
                    self.send_one(message),
                ))
            }
        }
    };
}

pub mod apns;
pub mod email;
pub mod fcm;
pub mod smtp_pool;
pub mod twilio;
pub mod webhook;

use std::time::Duration;

use futures::future::BoxFuture;
use herald_model::wire::ChannelMessage;

/// The provider took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Provider name (`apns`, `fcm`, `twilio`, `smtp`, `webhook`).
    pub provider: &'static str,
    /// The provider's id for the message.
    pub provider_message_id: String,
}

/// How a failed send is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// Transient (5xx, timeout, connection): try again later, counts
    /// against the provider's circuit breaker.
    Retryable,
    /// The provider asks us to slow down (429): try again after
    /// `retry_after`.
    RateLimited,
    /// Will never succeed for this message (bad payload, bad request).
    Permanent,
    /// The device token, number, address or endpoint is gone or invalid:
    /// not retried; product teams purge it from the status event.
    TokenInvalid,
}

impl Failure {
    /// Fixed label for metrics and status events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::RateLimited => "rate_limited",
            Self::Permanent => "permanent",
            Self::TokenInvalid => "token_invalid",
        }
    }

    /// Whether another attempt may succeed.
    pub const fn retry(self) -> bool {
        matches!(self, Self::Retryable | Self::RateLimited)
    }
}

/// A failed send, classified. `reason` is the provider's own code
/// (`BadDeviceToken`, `UNREGISTERED`, `21211`, `550`...); `detail` never
/// holds an address or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{provider}: {reason} ({})", failure.as_str())]
pub struct SendError {
    /// Provider.
    pub provider: &'static str,
    /// What to do about it.
    pub failure: Failure,
    /// The provider's reason code.
    pub reason: String,
    /// HTTP status (or SMTP reply code), when there was one.
    pub status: Option<u16>,
    /// When the provider said to come back.
    pub retry_after: Option<Duration>,
}

impl SendError {
    /// A failure without a response (connection, timeout, local error).
    pub fn transport(provider: &'static str, reason: impl Into<String>) -> Self {
        Self {
            provider,
            failure: Failure::Retryable,
            reason: reason.into(),
            status: None,
            retry_after: None,
        }
    }

    /// A failure from our side that no retry fixes (missing content,
    /// unusable configuration for this message).
    pub fn permanent(provider: &'static str, reason: impl Into<String>) -> Self {
        Self {
            provider,
            failure: Failure::Permanent,
            reason: reason.into(),
            status: None,
            retry_after: None,
        }
    }
}

/// Sends one message through one provider.
pub trait Provider: Send + Sync {
    /// Provider name.
    fn name(&self) -> &'static str;

    /// The most one send may take, whatever the client library bounds:
    /// past it the send is abandoned as retryable (`timeout`).
    fn deadline(&self) -> Duration;

    /// Sends `message`, within [`Provider::deadline`]; the provider's id on
    /// success.
    fn send<'a>(
        &'a self,
        message: &'a ChannelMessage,
    ) -> BoxFuture<'a, Result<Accepted, SendError>>;
}

/// Runs one provider call within `deadline`, Herald's own bound on it:
/// a client library may bound only part of a call (lettre's async SMTP
/// transport bounds the connect, not the conversation), and a call that
/// never ends holds its partition forever. Past the deadline the call is
/// dropped and the failure is retryable, reason `timeout` (as when the
/// library's own timeout fires first).
pub async fn within<T>(
    deadline: Duration,
    provider: &'static str,
    call: impl std::future::Future<Output = Result<T, SendError>>,
) -> Result<T, SendError> {
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or_else(|_| Err(SendError::transport(provider, "timeout")))
}

/// The default HTTP classification: 429 rate-limited, 408 and 5xx
/// retryable, other 4xx permanent.
pub fn classify_status(status: u16) -> Failure {
    match status {
        429 => Failure::RateLimited,
        408 | 500..=599 => Failure::Retryable,
        _ => Failure::Permanent,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is treated as absent).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A transport error, without the URL (it may carry a token or address).
pub(crate) fn transport_error(provider: &'static str, e: &reqwest::Error) -> SendError {
    // A request that cannot even be built (a header value with control
    // characters, say) is the message's fault: permanent, not a provider
    // failure that opens its breaker for everyone.
    if e.is_builder() {
        return SendError::permanent(provider, "invalid_request");
    }
    let reason = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "response_body"
    } else {
        "transport"
    };
    SendError::transport(provider, reason)
}

/// The notification id as a UUID (APNs' `apns-id`): the id is 128 bits of
/// hex; anything else gets a fresh UUID.
pub fn uuid_of(notification_id: &str) -> uuid::Uuid {
    u128::from_str_radix(notification_id, 16)
        .map(uuid::Uuid::from_u128)
        .unwrap_or_else(|_| uuid::Uuid::new_v4())
}

/// Seconds since the epoch.
pub(crate) fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify() {
        assert_eq!(classify_status(429), Failure::RateLimited);
        assert_eq!(classify_status(503), Failure::Retryable);
        assert_eq!(classify_status(408), Failure::Retryable);
        assert_eq!(classify_status(400), Failure::Permanent);
        assert!(Failure::RateLimited.retry());
        assert!(!Failure::TokenInvalid.retry());
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            uuid_of(id).hyphenated().to_string(),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
    }
}
