//! Throwaway credentials, generated per run, for the sandbox and for the
//! delivery workers that call it: an APNs signing key (P-256), an FCM
//! service account key (RSA 2048), a Twilio auth token and a Standard
//! Webhooks secret. The sandbox gets the public halves; a worker gets the
//! private ones, in-process (`herald dev`, tests) or as the provider
//! sections of its configuration file (benchmarks and tests that run the
//! worker as its own process). Nothing here is ever a production key.

use std::fmt::Write as _;

use anyhow::Context;
use base64::Engine as _;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

use crate::{Bound, SandboxSettings};

/// The APNs team the sandbox accepts.
pub const APNS_TEAM: &str = "HERALDDEV1";
/// The APNs key id the sandbox accepts.
pub const APNS_KEY_ID: &str = "HERALDKEY1";
/// The app's bundle id, sent as `apns-topic`.
pub const APNS_TOPIC: &str = "com.example.herald";
/// The FCM project.
pub const FCM_PROJECT: &str = "herald-dev";
/// The FCM service account.
pub const FCM_CLIENT: &str = "herald-dev@herald-dev.iam.gserviceaccount.com";
/// The Twilio account.
pub const TWILIO_SID: &str = "AC0000000000000000000000000000dev0";
/// The Twilio sender number (Twilio's own magic test number).
pub const TWILIO_FROM: &str = "+15005550006";

/// One run's keys and secrets.
pub struct Credentials {
    /// APNs signing key, PKCS#8 PEM (the worker's).
    pub apns_private_pem: String,
    /// Its public key, PEM (the sandbox's).
    pub apns_public_pem: String,
    /// FCM service account key, PKCS#8 PEM (the worker's).
    pub fcm_private_pem: String,
    /// Its public key, PEM (the sandbox's).
    pub fcm_public_pem: String,
    /// Twilio auth token (both sides).
    pub twilio_token: String,
    /// Standard Webhooks secret, `whsec_…` (both sides).
    pub webhook_secret: String,
}

impl Credentials {
    /// Fresh keys from the system's random source.
    pub fn generate() -> anyhow::Result<Self> {
        let curve = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let ec = PKey::from_ec_key(EcKey::generate(&curve)?)?;
        let rsa = PKey::from_rsa(Rsa::generate(2048)?)?;
        let pem = |b: Vec<u8>| String::from_utf8(b).context("a PEM that is not UTF-8");
        Ok(Self {
            apns_private_pem: pem(ec.private_key_to_pem_pkcs8()?)?,
            apns_public_pem: pem(ec.public_key_to_pem()?)?,
            fcm_private_pem: pem(rsa.private_key_to_pem_pkcs8()?)?,
            fcm_public_pem: pem(rsa.public_key_to_pem()?)?,
            twilio_token: random(16)?.iter().fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            }),
            webhook_secret: format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(random(32)?)
            ),
        })
    }

    /// `settings` with the sandbox's side of these credentials.
    pub fn sandbox(&self, mut settings: SandboxSettings) -> SandboxSettings {
        settings.apns.team_id = APNS_TEAM.into();
        settings.apns.key_id = APNS_KEY_ID.into();
        settings.apns.public_key_pem = self.apns_public_pem.clone();
        settings.fcm.project_id = FCM_PROJECT.into();
        settings.fcm.client_email = FCM_CLIENT.into();
        settings.fcm.public_key_pem = self.fcm_public_pem.clone();
        settings.twilio.account_sid = TWILIO_SID.into();
        settings.twilio.auth_token = self.twilio_token.clone();
        settings.webhook_secret = self.webhook_secret.clone();
        settings
    }

    /// The provider sections (`[deliver.apns]` and `[deliver.fcm]` for
    /// `push`, `[deliver.twilio]` for `sms`, `[deliver.email]`,
    /// `[deliver.webhook]`) of a worker's configuration file that reach the
    /// sandbox at `bound`. Other settings of a section can be given in the
    /// environment (`HERALD__DELIVER__EMAIL__CONNECTIONS=64`).
    pub fn worker_toml(&self, channel: &str, bound: &Bound) -> String {
        let http = format!("http://{}", bound.http);
        let s = |v: &str| toml::Value::String(v.to_owned()).to_string();
        match channel {
            "push" => format!(
                "[deliver.apns]\nbase_url = {}\nteam_id = {}\nkey_id = {}\nkey_pem = {}\ntopic = {}\n\
                 [deliver.fcm]\nbase_url = {}\nproject_id = {}\nclient_email = {}\nprivate_key = {}\ntoken_uri = {}\n",
                s(&http),
                s(APNS_TEAM),
                s(APNS_KEY_ID),
                s(&self.apns_private_pem),
                s(APNS_TOPIC),
                s(&http),
                s(FCM_PROJECT),
                s(FCM_CLIENT),
                s(&self.fcm_private_pem),
                s(&format!("{http}/token")),
            ),
            "sms" => format!(
                "[deliver.twilio]\nbase_url = {}\naccount_sid = {}\nauth_token = {}\nfrom = {}\n\
                 status_callback = {}\n",
                s(&http),
                s(TWILIO_SID),
                s(&self.twilio_token),
                s(TWILIO_FROM),
                s(&twilio_status_callback(bound)),
            ),
            "email" => format!(
                "[deliver.email]\nhost = {}\nport = {}\ntls = \"none\"\nfrom = \"Herald <noreply@example.test>\"\n",
                s(&bound.smtp.ip().to_string()),
                bound.smtp.port(),
            ),
            // The sandbox is on loopback: private networks allowed.
            _ => format!(
                "[deliver.webhook]\nsecret = {}\nallow_private_networks = true\n",
                s(&self.webhook_secret)
            ),
        }
    }
}

/// Where Twilio's status callbacks go: the sandbox itself until Herald has
/// a tracker. The worker adds the notification id to this URL, which is how
/// the sandbox knows which notification an SMS is (Twilio's API has no
/// other field for it).
pub fn twilio_status_callback(bound: &Bound) -> String {
    format!("http://{}/twilio/status", bound.http)
}

fn random(n: usize) -> anyhow::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    openssl::rand::rand_bytes(&mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_section_is_toml_that_carries_the_keys_as_they_are() {
        let c = Credentials::generate().unwrap();
        let bound = Bound {
            http: "127.0.0.1:1".parse().unwrap(),
            smtp: "127.0.0.1:2".parse().unwrap(),
        };
        let push: toml::Table = toml::from_str(&c.worker_toml("push", &bound)).unwrap();
        assert_eq!(
            push["deliver"]["apns"]["key_pem"].as_str(),
            Some(c.apns_private_pem.as_str())
        );
        assert_eq!(
            push["deliver"]["fcm"]["token_uri"].as_str(),
            Some("http://127.0.0.1:1/token")
        );
        let email: toml::Table = toml::from_str(&c.worker_toml("email", &bound)).unwrap();
        assert_eq!(email["deliver"]["email"]["port"].as_integer(), Some(2));
        assert_ne!(
            Credentials::generate().unwrap().webhook_secret,
            c.webhook_secret
        );
    }
}
