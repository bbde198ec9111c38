//! The providers of one channel and which serve a message: push by the
//! token's platform (APNs or FCM); SMS and email through the primary and,
//! when configured, a secondary used when the primary fails or its breaker
//! is open; webhooks directly.

use herald_model::wire::ChannelMessage;
use herald_model::{Channel, DevicePlatform};

use crate::config::DeliverSettings;
use crate::providers::apns::Apns;
use crate::providers::email::Email;
use crate::providers::fcm::Fcm;
use crate::providers::twilio::Twilio;
use crate::providers::webhook::Webhook;
use crate::providers::Provider;

/// One configured provider, with the label its breaker, rate limit and
/// metrics use (`twilio`, `twilio-secondary`...).
pub struct Route {
    /// Label.
    pub label: String,
    /// The adapter.
    pub provider: Box<dyn Provider>,
}

/// A channel's routes.
pub struct Routes {
    channel: Channel,
    routes: Vec<Route>,
}

impl Routes {
    /// Builds every adapter the channel's settings name.
    pub fn build(channel: Channel, s: &DeliverSettings) -> Result<Self, String> {
        let mut routes = Vec::new();
        let mut add = |label: &str, provider: Box<dyn Provider>| {
            routes.push(Route {
                label: label.to_string(),
                provider,
            });
        };
        match channel {
            Channel::Push => {
                if let Some(a) = &s.apns {
                    add("apns", Box::new(Apns::new(a.clone())?));
                }
                if let Some(f) = &s.fcm {
                    add("fcm", Box::new(Fcm::new(f.clone())?));
                }
            }
            Channel::Sms => {
                if let Some(t) = &s.twilio {
                    add("twilio", Box::new(Twilio::new(t.clone())?));
                }
                if let Some(t) = &s.twilio_secondary {
                    add("twilio-secondary", Box::new(Twilio::new(t.clone())?));
                }
            }
            Channel::Email => {
                if let Some(e) = &s.email {
                    add("smtp", Box::new(Email::new(e.clone())?));
                }
                if let Some(e) = &s.email_secondary {
                    add("smtp-secondary", Box::new(Email::new(e.clone())?));
                }
            }
            Channel::Webhook => {
                if let Some(w) = &s.webhook {
                    add("webhook", Box::new(Webhook::new(w.clone())?));
                }
            }
        }
        if routes.is_empty() {
            return Err(format!("no provider configured for the {channel} channel"));
        }
        Ok(Self { channel, routes })
    }

    /// From given routes (tests).
    pub fn from_routes(channel: Channel, routes: Vec<Route>) -> Self {
        Self { channel, routes }
    }

    /// Every route.
    pub fn all(&self) -> &[Route] {
        &self.routes
    }

    /// The routes that may serve `m`, in order of preference; empty when
    /// none can (a push token for a platform that is not configured).
    pub fn for_message(&self, m: &ChannelMessage) -> Vec<&Route> {
        match self.channel {
            Channel::Push => {
                let want = match m.recipient.platform {
                    Some(DevicePlatform::Apns) => "apns",
                    Some(DevicePlatform::Fcm) | None => "fcm",
                };
                self.routes.iter().filter(|r| r.label == want).collect()
            }
            _ => self.routes.iter().collect(),
        }
    }
}
