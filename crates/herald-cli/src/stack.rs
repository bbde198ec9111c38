//! The provider sandbox and one delivery worker per channel, wired to each
//! other with throwaway credentials, as `herald dev` runs them.

use std::time::Duration;

use anyhow::Context;
use herald_deliver::providers::apns::ApnsSettings;
use herald_deliver::providers::email::{EmailSettings, Tls};
use herald_deliver::providers::fcm::FcmSettings;
use herald_deliver::providers::twilio::TwilioSettings;
use herald_deliver::providers::webhook::WebhookSettings;
use herald_deliver::{DeliverConfig, DeliverSettings};
use herald_model::secret::Secret;
use herald_model::Channel;
use herald_sandbox::credentials::{self as creds, Credentials};
use herald_sandbox::{Bound, Sandbox, SandboxSettings};
use herald_telemetry::shutdown::Shutdown;

use crate::config::CliConfig;

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
    let keys = Credentials::generate()?;
    let settings = keys.sandbox(SandboxSettings {
        http_listen: config.dev.sandbox_http,
        smtp_listen: config.dev.sandbox_smtp,
        ..SandboxSettings::default()
    });
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
                    team_id: creds::APNS_TEAM.into(),
                    key_id: creds::APNS_KEY_ID.into(),
                    key_path: None,
                    key_pem: Some(Secret::new(keys.apns_private_pem.clone())),
                    topic: creds::APNS_TOPIC.into(),
                    token_refresh: Duration::from_secs(50 * 60),
                    timeout: Duration::from_secs(10),
                });
                d.fcm = Some(FcmSettings {
                    base_url: http.clone(),
                    service_account_file: None,
                    project_id: Some(creds::FCM_PROJECT.into()),
                    client_email: Some(creds::FCM_CLIENT.into()),
                    private_key: Some(Secret::new(keys.fcm_private_pem.clone())),
                    token_uri: Some(format!("{http}/token")),
                    timeout: Duration::from_secs(10),
                });
            }
            Channel::Sms => {
                d.twilio = Some(TwilioSettings {
                    base_url: http.clone(),
                    account_sid: creds::TWILIO_SID.into(),
                    auth_token: Secret::new(keys.twilio_token.clone()),
                    from: Some(creds::TWILIO_FROM.into()),
                    messaging_service_sid: None,
                    status_callback: Some(creds::twilio_status_callback(&bound)),
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
                    secret: Secret::new(keys.webhook_secret.clone()),
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
