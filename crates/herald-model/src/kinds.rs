//! Small closed sets: channels, priorities, platforms, stages and statuses.
//!
//! Serialised as the Avro enum symbols of `schemas/` (SCREAMING_SNAKE_CASE);
//! `as_str` gives the lowercase form used in topic names and metric labels.

use serde::{Deserialize, Serialize};

macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Lowercase name used in topic names, metric labels and config.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label),+
                }
            }

            /// Parses the lowercase name (case-insensitive).
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str().eq_ignore_ascii_case(s))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// A delivery channel; each has its own topics and its own worker deployment.
    Channel {
        /// Mobile push through APNs or FCM.
        Push => "push",
        /// SMS through a Twilio-compatible API.
        Sms => "sms",
        /// Email over SMTP.
        Email => "email",
        /// Signed HTTP webhook.
        Webhook => "webhook",
    }
}

label_enum! {
    /// Priority lane. Urgent traffic is never queued behind normal or bulk.
    Priority {
        /// Password resets, security alerts, one-time codes.
        Urgent => "urgent",
        /// Transactional notifications.
        Normal => "normal",
        /// Digests and marketing.
        Bulk => "bulk",
    }
}

label_enum! {
    /// Push platform of a device token.
    DevicePlatform {
        /// Apple Push Notification service.
        Apns => "apns",
        /// Firebase Cloud Messaging.
        Fcm => "fcm",
    }
}

label_enum! {
    /// The Herald stage that emitted a status event.
    Stage {
        /// A reader met a stage name it does not know (a newer writer).
        Unknown => "unknown",
        /// The HTTP ingestion gateway.
        Gateway => "gateway",
        /// The router (dedup, preferences, fan-out).
        Router => "router",
        /// A channel delivery worker.
        Deliver => "deliver",
        /// The tracker (provider callbacks, opens, clicks).
        Tracker => "tracker",
    }
}

label_enum! {
    /// What happened to a notification, or why it was not sent now.
    StatusKind {
        /// A reader met a status it does not know (a newer writer).
        Unknown => "unknown",
        /// Accepted by the router for fan-out.
        Accepted => "accepted",
        /// Undecodable or invalid input.
        Invalid => "invalid",
        /// Same idempotency key inside the dedup window.
        Duplicate => "duplicate",
        /// The user opted out of this channel or category.
        OptedOut => "opted_out",
        /// Held until the user's quiet hours end.
        Deferred => "deferred",
        /// Over the user's frequency cap.
        Capped => "capped",
        /// Past `expires_at`.
        Stale => "stale",
        /// Queued on a channel topic.
        Queued => "queued",
        /// Accepted by the provider.
        Sent => "sent",
        /// A retryable failure; another attempt is scheduled.
        RetryScheduled => "retry_scheduled",
        /// A permanent failure.
        Failed => "failed",
        /// Attempts exhausted or poison: moved to the dead-letter topic.
        DeadLettered => "dead_lettered",
        /// The provider says the device token or address is invalid.
        TokenInvalid => "token_invalid",
        /// The provider reports delivery to the device or mailbox.
        Delivered => "delivered",
        /// Opened (email pixel, push open callback).
        Opened => "opened",
        /// A tracked link was clicked.
        Clicked => "clicked",
        /// The provider reports a bounce.
        Bounced => "bounced",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_are_lowercase() {
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.as_str()), Some(*c));
            assert_eq!(c.as_str(), c.as_str().to_lowercase());
        }
        assert_eq!(Priority::parse("URGENT"), Some(Priority::Urgent));
        assert_eq!(
            StatusKind::parse("retry_scheduled"),
            Some(StatusKind::RetryScheduled)
        );
        assert_eq!(Channel::parse("fax"), None);
    }
}
