//! Webhooks signed per the Standard Webhooks spec: `webhook-id` (the
//! notification id, so a receiver can deduplicate redeliveries),
//! `webhook-timestamp` (seconds) and `webhook-signature` =
//! `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` where the key
//! is the base64 after `whsec_`. The body is the message's rendered body
//! (a JSON document).
//!
//! The recipient address is the endpoint URL: only `http` and `https`, only
//! hosts on `allowed_hosts` when that list is set, and never an address in
//! a loopback, private, link-local or unique-local range unless
//! `allow_private_networks` is set (checked before the request and again
//! by the client's resolver at connect time), so a notification cannot
//! turn Herald into a proxy into the network it runs in.

use std::time::Duration;

use base64::Engine as _;
use herald_model::secret::Secret;
use herald_model::wire::ChannelMessage;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{classify_status, now_s, retry_after, transport_error, Accepted, Failure, SendError};

const NAME: &str = "webhook";

/// `[deliver.webhook]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Signing secret, `whsec_<base64>`.
    pub secret: Secret,
    /// Hosts endpoints may be on (exact names or `*.example.com`); empty
    /// allows any host.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Allow endpoints on loopback, private, link-local and unique-local
    /// addresses (local development and tests).
    #[serde(default)]
    pub allow_private_networks: bool,
    /// Request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The webhook adapter.
pub struct Webhook {
    key: Vec<u8>,
    allowed_hosts: Vec<String>,
    allow_private: bool,
    client: reqwest::Client,
    timeout: Duration,
}

/// Whether an address is inside the network Herald runs in rather than on
/// the internet.
pub fn is_private(ip: std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr};
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                // Shared address space (carrier-grade NAT), 100.64.0.0/10.
                || (o[0] == 100 && (64..128).contains(&o[1]))
                // IETF protocol assignments and TEST-NET-1, 192.0.0.0/24 and 192.0.2.0/24.
                || (o[0] == 192 && o[1] == 0 && (o[2] == 0 || o[2] == 2))
                // Benchmarking, 198.18.0.0/15; TEST-NET-2 and -3.
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0] == 198 && o[1] == 51 && o[2] == 100)
                || (o[0] == 203 && o[1] == 0 && o[2] == 113)
                // Reserved, 240.0.0.0/4.
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // An IPv4 address carried inside an IPv6 one is judged as IPv4.
            let embedded = |hi: u16, lo: u16| {
                is_private(IpAddr::V4(Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                )))
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // Mapped (::ffff:a.b.c.d) and the old compatible (::a.b.c.d) forms.
                || v6.to_ipv4().is_some_and(|v4| is_private(IpAddr::V4(v4)))
                // NAT64, 64:ff9b::/96 (the well-known prefix) and 64:ff9b:1::/48 (local).
                || (s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0, 0, 0, 0] && embedded(s[6], s[7])))
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                // 6to4, 2002::/16: the IPv4 address follows the prefix.
                || (s[0] == 0x2002 && embedded(s[1], s[2]))
                // Teredo (2001::/32) hides its IPv4 address; documentation, 2001:db8::/32;
                // discard-only, 100::/64.
                || (s[0] == 0x2001 && (s[1] == 0 || s[1] == 0xdb8))
                || (s[0] == 0x100 && s[1..4] == [0, 0, 0])
        }
    }
}

/// A resolver that drops private addresses, so a name that changes its
/// answer between the check and the request still cannot reach inside.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let public: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_private(a.ip()))
                .collect();
            if public.is_empty() {
                return Err("the endpoint resolves only to private addresses".into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

impl Webhook {
    /// Decodes the secret and builds the client (redirects are not followed).
    pub fn new(settings: WebhookSettings) -> Result<Self, String> {
        let key = settings
            .secret
            .expose()
            .strip_prefix("whsec_")
            .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
            .filter(|k| !k.is_empty())
            .ok_or("deliver.webhook.secret must be whsec_ followed by base64")?;
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if !settings.allow_private_networks {
            builder = builder.dns_resolver(std::sync::Arc::new(PublicOnly));
        }
        let client = builder
            .build()
            .map_err(|e| format!("deliver.webhook client: {e}"))?;
        Ok(Self {
            key,
            allowed_hosts: settings.allowed_hosts,
            allow_private: settings.allow_private_networks,
            client,
            timeout: settings.timeout,
        })
    }

    /// `v1,<signature>` of a body.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }

    async fn endpoint(&self, address: &str) -> Result<reqwest::Url, SendError> {
        let invalid = |reason: &str| SendError {
            failure: Failure::TokenInvalid,
            ..SendError::permanent(NAME, reason)
        };
        let url = reqwest::Url::parse(address).map_err(|_| invalid("bad_url"))?;
        // No credentials in the URL, not even a password without a user.
        if !["http", "https"].contains(&url.scheme())
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(invalid("bad_url"));
        }
        let host = url.host_str().unwrap_or("");
        let allowed = self.allowed_hosts.is_empty()
            || self
                .allowed_hosts
                .iter()
                .any(|h| match h.strip_prefix("*.") {
                    Some(domain) => host.ends_with(&format!(".{domain}")),
                    None => host == h,
                });
        if !allowed {
            return Err(invalid("host_not_allowed"));
        }
        if !self.allow_private {
            let port = url.port_or_known_default().unwrap_or(443);
            let literal = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>();
            let private = match literal {
                Ok(ip) => is_private(ip),
                Err(_) => {
                    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
                        .await
                        .map_err(|_| SendError::transport(NAME, "dns"))?
                        .collect();
                    addrs.iter().all(|a| is_private(a.ip()))
                }
            };
            if private {
                return Err(invalid("private_address"));
            }
        }
        Ok(url)
    }

    async fn send_one(&self, m: &ChannelMessage) -> Result<Accepted, SendError> {
        let url = self.endpoint(&m.recipient.address).await?;
        let body = m.content.body.clone().into_bytes();
        let ts = now_s();
        let id = &m.notification_id;
        let resp = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", self.sign(id, ts, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(NAME, &e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(Accepted {
                provider: NAME,
                provider_message_id: id.clone(),
            });
        }
        let failure = match status {
            410 => Failure::TokenInvalid,
            // A redirect is not followed: the endpoint must be fixed.
            300..=399 => Failure::Permanent,
            s => classify_status(s),
        };
        Err(SendError {
            provider: NAME,
            failure,
            reason: status.to_string(),
            status: Some(status),
            retry_after: retry_after(resp.headers()),
        })
    }
}

provider!(Webhook, NAME, timeout);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            // Ranges that were missing.
            "192.0.2.10",
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.254",
            "198.51.100.7",
            "203.0.113.9",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "::127.0.0.1",
            "::10.0.0.1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:db8::1",
            "ff02::1",
            "100::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "100.128.0.1",
            "198.20.0.1",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
