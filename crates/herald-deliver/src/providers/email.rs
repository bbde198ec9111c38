//! Email over SMTP with lettre: STARTTLS, implicit TLS, or plain (local
//! only); multipart text and HTML; `Message-ID` and
//! `X-Herald-Notification-Id` from the notification id; `List-Unsubscribe`
//! (with RFC 8058 one-click for https) when configured.
//!
//! Replies: 550/551/553 (no such mailbox) mean the address is invalid,
//! other 5xx are permanent, 4xx and connection failures are retryable.

use std::time::Duration;

use futures::future::BoxFuture;
use herald_model::secret::Secret;
use herald_model::wire::ChannelMessage;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

use super::{Accepted, Failure, Provider, SendError};

const NAME: &str = "smtp";

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tls {
    /// Upgrade with STARTTLS (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS: local relays and the sandbox only.
    None,
}

/// `[deliver.email]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// SMTP relay host.
    pub host: String,
    /// Port (587 for STARTTLS, 465 for implicit TLS, 25 otherwise).
    #[serde(default)]
    pub port: Option<u16>,
    /// Connection security.
    #[serde(default)]
    pub tls: Tls,
    /// AUTH user.
    #[serde(default)]
    pub username: Option<String>,
    /// AUTH password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Sender, `Name <address>`.
    pub from: String,
    /// `List-Unsubscribe` target with `{notification_id}` substituted:
    /// an https URL (one-click) or a mailto.
    #[serde(default)]
    pub list_unsubscribe: Option<String>,
    /// Timeout of each SMTP command.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The SMTP adapter.
pub struct Email {
    settings: EmailSettings,
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl Email {
    /// Parses the sender and builds the pooled transport.
    pub fn new(settings: EmailSettings) -> Result<Self, String> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| format!("deliver.email.from: {e}"))?;
        let mut builder = match settings.tls {
            Tls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.host)
                .map_err(|e| format!("deliver.email: {e}"))?,
            Tls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.host)
                .map_err(|e| format!("deliver.email: {e}"))?,
            Tls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host),
        };
        if let Some(port) = settings.port {
            builder = builder.port(port);
        }
        if let (Some(user), Some(pass)) = (&settings.username, &settings.password) {
            builder =
                builder.credentials(Credentials::new(user.clone(), pass.expose().to_string()));
        }
        let transport = builder.timeout(Some(settings.timeout)).build();
        Ok(Self {
            settings,
            from,
            transport,
        })
    }

    /// The message for `m`; an unusable recipient address is `TokenInvalid`.
    pub fn message(&self, m: &ChannelMessage) -> Result<Message, SendError> {
        let to: Mailbox = m.recipient.address.parse().map_err(|_| SendError {
            failure: Failure::TokenInvalid,
            ..SendError::permanent(NAME, "bad_address")
        })?;
        let c = &m.content;
        let subject = c
            .subject
            .clone()
            .or_else(|| c.title.clone())
            .unwrap_or_default();
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(format!("<{}@herald>", m.notification_id)))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("X-Herald-Notification-Id"),
                m.notification_id.clone(),
            ));
        if let Some(target) = &self.settings.list_unsubscribe {
            let target = target.replace("{notification_id}", &m.notification_id);
            let one_click = target.starts_with("https://");
            builder = builder.raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{target}>"),
            ));
            if one_click {
                builder = builder.raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                    "List-Unsubscribe=One-Click".into(),
                ));
            }
        }
        let built = match c.html.as_deref().filter(|h| !h.is_empty()) {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                c.body.clone(),
                html.to_string(),
            )),
            None => builder.singlepart(SinglePart::plain(c.body.clone())),
        };
        built.map_err(|_| SendError::permanent(NAME, "message_build"))
    }

    async fn send_one(&self, m: &ChannelMessage) -> Result<Accepted, SendError> {
        let message = self.message(m)?;
        match self.transport.send(message).await {
            Ok(resp) => {
                // "250 2.0.0 Ok: queued as ABC": the relay's queue id.
                let queued = resp
                    .message()
                    .last()
                    .and_then(|l| l.rsplit_once("queued as "))
                    .map(|(_, id)| id.trim().to_string());
                Ok(Accepted {
                    provider: NAME,
                    provider_message_id: queued
                        .unwrap_or_else(|| format!("<{}@herald>", m.notification_id)),
                })
            }
            Err(e) => Err(classify(&e)),
        }
    }
}

/// What an SMTP failure means.
pub fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    let code = e.status().map(|c| c.to_string());
    let status = code.as_deref().and_then(|c| c.parse::<u16>().ok());
    let failure = if e.is_permanent() {
        match status {
            Some(550 | 551 | 553) => Failure::TokenInvalid,
            _ => Failure::Permanent,
        }
    } else {
        Failure::Retryable
    };
    let reason = code.unwrap_or_else(|| {
        if e.is_timeout() {
            "timeout".into()
        } else if e.is_tls() {
            "tls".into()
        } else {
            "connection".into()
        }
    });
    SendError {
        provider: NAME,
        failure,
        reason,
        status,
        retry_after: None,
    }
}

impl Provider for Email {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(
        &'a self,
        message: &'a ChannelMessage,
    ) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(self.send_one(message))
    }
}
