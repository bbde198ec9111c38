//! Email over SMTP with lettre's connection, on connections of Herald's
//! own pool ([`super::smtp_pool`]), each send within `timeout` whatever
//! the conversation does: STARTTLS, implicit TLS, or plain (local only); multipart text and HTML; `Message-ID` and
//! `X-Herald-Notification-Id` from the notification id; `List-Unsubscribe`
//! (with RFC 8058 one-click for https) when configured.
//!
//! Replies: 550/551/553 (no such mailbox) mean the address is invalid,
//! other 5xx are permanent, 4xx and connection failures are retryable.

use std::time::Duration;

use herald_model::secret::Secret;
use herald_model::tracking;
use herald_model::wire::ChannelMessage;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::TlsParameters;
use lettre::transport::smtp::{SMTP_PORT, SUBMISSIONS_PORT, SUBMISSION_PORT};
use lettre::Message;
use serde::Deserialize;

use super::smtp_pool::{Failed, Pool, Security, Target};
use super::{Accepted, Failure, SendError};

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
    /// Deadline of one send, Herald's own: waiting for a connection,
    /// connecting, and the whole SMTP conversation (also the connect
    /// timeout).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// SMTP connections open and in use at once; sends beyond wait for one
    /// (within their deadline).
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Open and click tracking through the tracker, when set.
    #[serde(default)]
    pub tracking: Option<TrackingSettings>,
}

/// `[deliver.email.tracking]`: signed URLs served by the tracker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingSettings {
    /// The tracker's public base URL.
    pub base_url: String,
    /// Signing key, shared with the tracker.
    pub key: Secret,
    /// Add an open pixel to HTML bodies.
    #[serde(default = "yes")]
    pub opens: bool,
    /// Rewrite http(s) links of HTML bodies through the tracker.
    #[serde(default = "yes")]
    pub clicks: bool,
}

fn yes() -> bool {
    true
}

/// The HTML with its http(s) `href="..."` links rewritten by `rewrite` (the
/// original URL given unescaped; the result escaped for the attribute).
pub fn rewrite_links(html: &str, rewrite: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(html.len() + 64);
    let mut rest = html;
    loop {
        let Some(at) = rest.to_ascii_lowercase().find("href=\"") else {
            out.push_str(rest);
            return out;
        };
        let start = at + 6;
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('"') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let url = rest[start..start + len].replace("&amp;", "&");
        if url.starts_with("http://") || url.starts_with("https://") {
            out.push_str(&rewrite(&url).replace('&', "&amp;").replace('"', "%22"));
        } else {
            out.push_str(&rest[start..start + len]);
        }
        rest = &rest[start + len..];
    }
}

/// The HTML with a 1x1 image before `</body>` (or at the end).
pub fn add_pixel(html: &str, url: &str) -> String {
    let img = format!(
        r#"<img src="{}" width="1" height="1" alt="" style="display:none">"#,
        url.replace('&', "&amp;")
    );
    match html.to_ascii_lowercase().rfind("</body>") {
        Some(at) => format!("{}{img}{}", &html[..at], &html[at..]),
        None => format!("{html}{img}"),
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// At 20 ms a message, about 3,200 emails/s (`make bench`).
fn default_connections() -> usize {
    64
}

/// The SMTP adapter.
pub struct Email {
    settings: EmailSettings,
    from: Mailbox,
    pool: Pool,
}

impl Email {
    /// Parses the sender and builds the pooled transport.
    pub fn new(settings: EmailSettings) -> Result<Self, String> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| format!("deliver.email.from: {e}"))?;
        let tls =
            || TlsParameters::new(settings.host.clone()).map_err(|e| format!("deliver.email: {e}"));
        let (security, port) = match settings.tls {
            Tls::Starttls => (Security::Starttls(tls()?), SUBMISSION_PORT),
            Tls::Implicit => (Security::Implicit(settings.host.clone()), SUBMISSIONS_PORT),
            Tls::None => (Security::None, SMTP_PORT),
        };
        let credentials = match (&settings.username, &settings.password) {
            (Some(user), Some(pass)) => {
                Some(Credentials::new(user.clone(), pass.expose().to_string()))
            }
            _ => None,
        };
        let pool = Pool::new(
            Target {
                host: settings.host.clone(),
                port: settings.port.unwrap_or(port),
                security,
                credentials,
                connect_timeout: settings.timeout,
            },
            settings.connections,
        );
        Ok(Self {
            settings,
            from,
            pool,
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
        let html = c.html.as_deref().filter(|h| !h.is_empty()).map(|h| {
            let Some(t) = &self.settings.tracking else {
                return h.to_string();
            };
            let key = t.key.expose().as_bytes();
            let id = &m.notification_id;
            let mut html = h.to_string();
            if t.clicks {
                html = rewrite_links(&html, |url| tracking::click_url(&t.base_url, key, id, url));
            }
            if t.opens {
                html = add_pixel(&html, &tracking::open_url(&t.base_url, key, id));
            }
            html
        });
        let built = match html {
            Some(html) => {
                builder.multipart(MultiPart::alternative_plain_html(c.body.clone(), html))
            }
            None => builder.singlepart(SinglePart::plain(c.body.clone())),
        };
        built.map_err(|_| SendError::permanent(NAME, "message_build"))
    }

    async fn send_one(&self, m: &ChannelMessage) -> Result<Accepted, SendError> {
        let message = self.message(m)?;
        match self
            .pool
            .send(message.envelope(), &message.formatted())
            .await
        {
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
            Err(Failed::Smtp(e)) => Err(classify(&e)),
            Err(Failed::Connect(e)) => {
                let reason = if e.kind() == std::io::ErrorKind::TimedOut {
                    "timeout"
                } else {
                    "connection"
                };
                Err(SendError::transport(NAME, reason))
            }
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

provider!(Email, NAME, settings.timeout);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_rewritten_and_a_pixel_added() {
        let html = r#"<p><a href="https://shop.example/a?b=1&amp;c=2">Order</a> <a HREF="mailto:x@y">mail</a></p></body>"#;
        let out = rewrite_links(html, |u| format!("https://t.example/c?u={u}"));
        assert!(
            out.contains(r#"href="https://t.example/c?u=https://shop.example/a?b=1&amp;c=2""#),
            "{out}"
        );
        assert!(out.contains(r#"HREF="mailto:x@y""#), "{out}");
        let with = add_pixel(&out, "https://t.example/o/n?s=x");
        assert!(with.ends_with(r#"style="display:none"></body>"#), "{with}");
        assert_eq!(rewrite_links("no links", |u| u.into()), "no links");
        assert_eq!(
            rewrite_links(r#"<a href="unterminated"#, |u| u.into()),
            r#"<a href="unterminated"#
        );
    }
}
