//! The provider sandbox and one delivery worker per channel, wired to each
//! other with throwaway credentials, as `herald dev` runs them.

use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use herald_deliver::providers::apns::ApnsSettings;
use herald_deliver::providers::email::{EmailSettings, Tls};
use herald_deliver::providers::fcm::FcmSettings;
use herald_deliver::providers::twilio::TwilioSettings;
use herald_deliver::providers::webhook::WebhookSettings;
use herald_deliver::{DeliverConfig, DeliverSettings};
use herald_model::secret::Secret;
use herald_model::Channel;
use herald_sandbox::{Bound, Sandbox, SandboxSettings};
use herald_telemetry::shutdown::Shutdown;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

use crate::config::CliConfig;

const TEAM: &str = "HERALDDEV1";
const KEY_ID: &str = "HERALDKEY1";
const PROJECT: &str = "herald-dev";
const CLIENT: &str = "herald-dev@herald-dev.iam.gserviceaccount.com";
const SID: &str = "AC0000000000000000000000000000dev0";

fn pem(bytes: Vec<u8>) -> anyhow::Result<String> {
    Ok(String::from_utf8(bytes)?)
}

fn random(n: usize) -> anyhow::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    openssl::rand::rand_bytes(&mut b)?;
    Ok(b)
}

/// The sandbox, started, and the delivery configuration of every channel
/// pointing at it.
pub struct Stack {
    /// Where the sandbox listens.
    pub bound: Bound,
    /// Worker configurations, one per channel.
    pub workers: Vec<DeliverConfig>,
}

/// Generates credentials, starts the sandbox on loopback and returns the
/// workers' configuration.
pub async fn start(
    config: &CliConfig,
    shutdown: Shutdown,
) -> anyhow::Result<(Stack, Vec<tokio::task::JoinHandle<std::io::Result<()>>>)> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let ec = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let rsa = PKey::from_rsa(Rsa::generate(2048)?)?;
    let twilio_token = random(16)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let webhook_secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(random(32)?)
    );
    let mut settings = SandboxSettings {
        http_listen: config.dev.sandbox_http,
        smtp_listen: config.dev.sandbox_smtp,
        webhook_secret: webhook_secret.clone(),
        ..SandboxSettings::default()
    };
    settings.apns.team_id = TEAM.into();
    settings.apns.key_id = KEY_ID.into();
    settings.apns.public_key_pem = pem(ec.public_key_to_pem()?)?;
    settings.fcm.project_id = PROJECT.into();
    settings.fcm.client_email = CLIENT.into();
    settings.fcm.public_key_pem = pem(rsa.public_key_to_pem()?)?;
    settings.twilio.account_sid = SID.into();
    settings.twilio.auth_token = twilio_token.clone();
    let sandbox = Sandbox::new(settings);
    let (bound, tasks) = herald_sandbox::start(sandbox, shutdown)
        .await
        .context("starting the provider sandbox")?;
    let http = format!("http://{}", bound.http);
    let base = DeliverSettings {
        retry: herald_deliver::retry::RetrySettings {
            base_delay: Duration::from_secs(2),
            ..Default::default()
        },
        ..DeliverSettings::default()
    };
    let mut workers = Vec::new();
    for channel in Channel::ALL {
        let mut d = DeliverSettings {
            channel: Some(*channel),
            ..base.clone()
        };
        match channel {
            Channel::Push => {
                d.apns = Some(ApnsSettings {
                    base_url: http.clone(),
                    team_id: TEAM.into(),
                    key_id: KEY_ID.into(),
                    key_path: None,
                    key_pem: Some(Secret::new(pem(ec.private_key_to_pem_pkcs8()?)?)),
                    topic: "com.example.herald".into(),
                    token_refresh: Duration::from_secs(50 * 60),
                    timeout: Duration::from_secs(10),
                });
                d.fcm = Some(FcmSettings {
                    base_url: http.clone(),
                    service_account_file: None,
                    project_id: Some(PROJECT.into()),
                    client_email: Some(CLIENT.into()),
                    private_key: Some(Secret::new(pem(rsa.private_key_to_pem_pkcs8()?)?)),
                    token_uri: Some(format!("{http}/token")),
                    timeout: Duration::from_secs(10),
                });
            }
            Channel::Sms => {
                d.twilio = Some(TwilioSettings {
                    base_url: http.clone(),
                    account_sid: SID.into(),
                    auth_token: Secret::new(twilio_token.clone()),
                    from: Some("+15005550006".into()),
                    messaging_service_sid: None,
                    status_callback: None,
                    timeout: Duration::from_secs(10),
                });
            }
            Channel::Email => {
                d.email = Some(EmailSettings {
                    host: bound.smtp.ip().to_string(),
                    port: Some(bound.smtp.port()),
                    tls: Tls::None,
                    username: None,
                    password: None,
                    from: "Herald <noreply@example.com>".into(),
                    list_unsubscribe: Some(
                        "https://example.com/unsubscribe/{notification_id}".into(),
                    ),
                    timeout: Duration::from_secs(10),
                    connections: 64,
                    tracking: None,
                });
            }
            Channel::Webhook => {
                d.webhook = Some(WebhookSettings {
                    secret: Secret::new(webhook_secret.clone()),
                    allowed_hosts: Vec::new(),
                    // The sandbox is on loopback.
                    allow_private_networks: true,
                    timeout: Duration::from_secs(10),
                });
            }
        }
        workers.push(DeliverConfig {
            kafka: config.kafka.clone(),
            topics: config.topics.clone(),
            codec: config.codec.clone(),
            log: config.log.clone(),
            admin: config.admin.clone(),
            deliver: d,
        });
    }
    Ok((Stack { bound, workers }, tasks))
}
