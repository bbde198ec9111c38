//! Every provider adapter against the sandbox, which checks each request
//! the way the provider documents (auth, headers, JWT claims, body): what
//! the sandbox records is what the provider would have accepted. Keys and
//! secrets are generated here, per run.

// Tests fail loudly on unexpected errors: that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use herald_deliver::providers::apns::{Apns, ApnsSettings};
use herald_deliver::providers::email::{Email, EmailSettings, Tls, TrackingSettings};
use herald_deliver::providers::fcm::{Fcm, FcmSettings};
use herald_deliver::providers::twilio::{Twilio, TwilioSettings};
use herald_deliver::providers::webhook::{Webhook, WebhookSettings};
use herald_deliver::{Failure, Provider};
use herald_model::secret::Secret;
use herald_model::wire::ChannelMessage;
use herald_model::{sample, Channel, DevicePlatform, Priority};
use herald_sandbox::{Bound, Fault, Record, Sandbox, SandboxSettings};
use herald_telemetry::shutdown::Shutdown;

use herald_sandbox::credentials::{
    Credentials as Keys, APNS_KEY_ID as KEY_ID, APNS_TEAM as TEAM, FCM_CLIENT as CLIENT,
    FCM_PROJECT as PROJECT, TWILIO_SID as SID,
};

const TRACKING_KEY: &str = "tracking-key-for-this-test";

struct Env {
    keys: Keys,
    sandbox: Arc<Sandbox>,
    bound: Bound,
    _shutdown: Shutdown,
}

async fn env() -> Env {
    let keys = Keys::generate().unwrap();
    let settings = keys.sandbox(SandboxSettings {
        http_listen: "127.0.0.1:0".parse().unwrap(),
        smtp_listen: "127.0.0.1:0".parse().unwrap(),
        ..SandboxSettings::default()
    });
    let sandbox = Sandbox::new(settings);
    let shutdown = Shutdown::new();
    let (bound, _tasks) = herald_sandbox::start(sandbox.clone(), shutdown.clone())
        .await
        .unwrap();
    Env {
        keys,
        sandbox,
        bound,
        _shutdown: shutdown,
    }
}

impl Env {
    fn http(&self) -> String {
        format!("http://{}", self.bound.http)
    }

    fn apns(&self) -> Apns {
        Apns::new(ApnsSettings {
            base_url: self.http(),
            team_id: TEAM.into(),
            key_id: KEY_ID.into(),
            key_path: None,
            key_pem: Some(Secret::new(self.keys.apns_private_pem.clone())),
            topic: "com.example.app".into(),
            token_refresh: Duration::from_secs(3000),
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    fn fcm(&self) -> Fcm {
        Fcm::new(FcmSettings {
            base_url: self.http(),
            service_account_file: None,
            project_id: Some(PROJECT.into()),
            client_email: Some(CLIENT.into()),
            private_key: Some(Secret::new(self.keys.fcm_private_pem.clone())),
            token_uri: Some(format!("{}/token", self.http())),
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    fn twilio(&self) -> Twilio {
        Twilio::new(TwilioSettings {
            base_url: self.http(),
            account_sid: SID.into(),
            auth_token: Secret::new(self.keys.twilio_token.clone()),
            from: Some("+15005550006".into()),
            messaging_service_sid: None,
            status_callback: Some("http://127.0.0.1:9/twilio/status".into()),
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    fn webhook(&self, secret: &str) -> Webhook {
        Webhook::new(WebhookSettings {
            secret: Secret::new(secret.to_string()),
            allowed_hosts: vec!["127.0.0.1".into()],
            allow_private_networks: true,
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    fn email(&self) -> Email {
        self.email_with(Duration::from_secs(5), 16)
    }

    fn email_with(&self, timeout: Duration, connections: usize) -> Email {
        Email::new(EmailSettings {
            host: "127.0.0.1".into(),
            port: Some(self.bound.smtp.port()),
            tls: Tls::None,
            username: None,
            password: None,
            from: "Herald <noreply@herald.test>".into(),
            list_unsubscribe: Some("https://herald.test/u/{notification_id}".into()),
            timeout,
            connections,
            tracking: Some(TrackingSettings {
                base_url: "https://track.herald.test".into(),
                key: Secret::new(TRACKING_KEY),
                opens: true,
                clicks: true,
            }),
        })
        .unwrap()
    }

    fn only(&self, provider: &str, notification_id: &str) -> Record {
        let found = self.sandbox.records(Some(provider), Some(notification_id));
        assert_eq!(
            found.len(),
            1,
            "{provider} records for {notification_id}: {found:#?}"
        );
        found.into_iter().next().unwrap()
    }
}

fn message(n: u64, channel: Channel, address: &str) -> ChannelMessage {
    let mut m = sample::channel_message(n, 1_700_000_000_000);
    m.channel = channel;
    m.recipient.address = address.into();
    m
}

const DEVICE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

#[tokio::test]
async fn apns_sends_over_http2_with_a_provider_token() {
    let env = env().await;
    let apns = env.apns();
    let mut m = message(1, Channel::Push, DEVICE);
    m.recipient.platform = Some(DevicePlatform::Apns);
    m.expires_at = Some(1_900_000_000_000);
    m.content
        .data
        .insert("collapse_id".into(), "order-1".into());
    let accepted = apns.send(&m).await.unwrap();
    let r = env.only("apns", &m.notification_id);
    // The apns-id is the notification id, so Apple's records join ours.
    assert_eq!(
        accepted.provider_message_id,
        "00000000-0000-0000-0000-000000000001"
    );
    assert_eq!(r.provider_message_id, accepted.provider_message_id);
    let h = &r.request["headers"];
    assert_eq!(h["apns-topic"], "com.example.app");
    assert_eq!(h["apns-push-type"], "alert");
    assert_eq!(h["apns-priority"], "10");
    assert_eq!(h["apns-expiration"], "1900000000");
    assert_eq!(h["apns-collapse-id"], "order-1");
    let p = &r.request["payload"];
    assert_eq!(p["aps"]["alert"]["title"], "Your receipt");
    assert_eq!(p["aps"]["alert"]["body"], "Order 1 is confirmed");
    assert_eq!(p["order"], "1");
    assert!(p.get("collapse_id").is_none());

    // Bulk goes at power-considerate priority; the token is reused.
    let mut bulk = message(2, Channel::Push, DEVICE);
    bulk.priority = Priority::Bulk;
    let token = apns.provider_token().unwrap();
    apns.send(&bulk).await.unwrap();
    assert_eq!(
        env.only("apns", &bulk.notification_id).request["headers"]["apns-priority"],
        "5"
    );
    assert_eq!(apns.provider_token().unwrap(), token);
    // The token carries what Apple checks.
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some(KEY_ID));
}

#[tokio::test]
async fn apns_failures_are_classified() {
    let env = env().await;
    let apns = env.apns();
    // Unregistered (410) and a malformed token: the token is invalid.
    let gone = apns
        .send(&message(3, Channel::Push, &format!("dead{}", &DEVICE[4..])))
        .await
        .unwrap_err();
    assert_eq!(
        (gone.failure, gone.reason.as_str(), gone.status),
        (Failure::TokenInvalid, "Unregistered", Some(410))
    );
    let bad = apns
        .send(&message(4, Channel::Push, "not-hex/../x"))
        .await
        .unwrap_err();
    assert_eq!((bad.failure, bad.status), (Failure::TokenInvalid, None));
    let short = apns
        .send(&message(5, Channel::Push, "abcd"))
        .await
        .unwrap_err();
    assert_eq!(
        (short.failure, short.reason.as_str()),
        (Failure::TokenInvalid, "BadDeviceToken")
    );
    // A key Apple does not know: refused, retryable (our configuration).
    let mut wrong = ApnsSettings {
        base_url: env.http(),
        team_id: TEAM.into(),
        key_id: "OTHERKEY00".into(),
        key_path: None,
        key_pem: Some(Secret::new(env.keys.apns_private_pem.clone())),
        topic: "com.example.app".into(),
        token_refresh: Duration::from_secs(3000),
        timeout: Duration::from_secs(5),
    };
    let e = Apns::new(wrong.clone())
        .unwrap()
        .send(&message(6, Channel::Push, DEVICE))
        .await
        .unwrap_err();
    assert_eq!(
        (e.reason.as_str(), e.status),
        ("InvalidProviderToken", Some(403))
    );
    wrong.key_id = KEY_ID.into();
    wrong.key_pem = Some(Secret::new(Keys::generate().unwrap().apns_private_pem));
    let e = Apns::new(wrong)
        .unwrap()
        .send(&message(6, Channel::Push, DEVICE))
        .await
        .unwrap_err();
    assert_eq!(e.reason, "InvalidProviderToken", "signed with another key");
    // Control characters in a field that becomes a header: a permanent
    // failure of that message, not a transport error that is retried and
    // opens the breaker for every push.
    for bad in ["a\r\nx-injected: 1", "nul\0", "line\n"] {
        let mut m = message(60, Channel::Push, DEVICE);
        m.content.data.insert("collapse_id".into(), bad.into());
        let e = apns.send(&m).await.unwrap_err();
        assert_eq!(
            (e.failure, e.reason.as_str()),
            (Failure::Permanent, "invalid_collapse_id"),
            "{bad:?}"
        );
    }
    assert!(env
        .sandbox
        .records(
            None,
            Some(&message(60, Channel::Push, DEVICE).notification_id)
        )
        .is_empty());
    // 429 with Retry-After, then 503.
    env.sandbox.set_fault(
        "apns",
        Fault {
            error_rate: 1.0,
            error_status: Some(429),
            retry_after_s: Some(7),
            ..Fault::default()
        },
    );
    let e = apns
        .send(&message(7, Channel::Push, DEVICE))
        .await
        .unwrap_err();
    assert_eq!(
        (e.failure, e.reason.as_str(), e.retry_after),
        (
            Failure::RateLimited,
            "TooManyRequests",
            Some(Duration::from_secs(7))
        )
    );
    env.sandbox.set_fault(
        "apns",
        Fault {
            error_rate: 1.0,
            ..Fault::default()
        },
    );
    let e = apns
        .send(&message(8, Channel::Push, DEVICE))
        .await
        .unwrap_err();
    assert_eq!((e.failure, e.status), (Failure::Retryable, Some(503)));
    // A hang is a timeout, retryable.
    env.sandbox.set_fault(
        "apns",
        Fault {
            timeout_rate: 1.0,
            ..Fault::default()
        },
    );
    let quick = Apns::new(ApnsSettings {
        base_url: env.http(),
        team_id: TEAM.into(),
        key_id: KEY_ID.into(),
        key_path: None,
        key_pem: Some(Secret::new(env.keys.apns_private_pem.clone())),
        topic: "com.example.app".into(),
        token_refresh: Duration::from_secs(3000),
        timeout: Duration::from_millis(300),
    })
    .unwrap();
    let e = quick
        .send(&message(9, Channel::Push, DEVICE))
        .await
        .unwrap_err();
    assert_eq!(
        (e.failure, e.reason.as_str()),
        (Failure::Retryable, "timeout")
    );
    assert_eq!(env.sandbox.records(Some("apns"), None).len(), 0);
}

#[tokio::test]
async fn fcm_exchanges_a_service_account_jwt_and_sends() {
    let env = env().await;
    let fcm = env.fcm();
    let m = message(10, Channel::Push, "fcm-token-10");
    let accepted = fcm.send(&m).await.unwrap();
    let r = env.only("fcm", &m.notification_id);
    assert!(accepted
        .provider_message_id
        .starts_with(&format!("projects/{PROJECT}/messages/")));
    let msg = &r.request["message"];
    assert_eq!(msg["token"], "fcm-token-10");
    assert_eq!(msg["notification"]["title"], "Your receipt");
    assert_eq!(msg["data"]["order"], "10");
    assert_eq!(msg["android"]["priority"], "high");
    // The access token is cached: a second send needs no new one.
    fcm.send(&message(11, Channel::Push, "fcm-token-11"))
        .await
        .unwrap();
    assert_eq!(env.sandbox.counts()["fcm"]["token issued"], 1);
    // The assertion carries what Google checks.
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(fcm.assertion().unwrap().split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["iss"], CLIENT);
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/firebase.messaging"
    );
    assert_eq!(claims["aud"], format!("{}/token", env.http()));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );

    let gone = fcm
        .send(&message(12, Channel::Push, "dead-token"))
        .await
        .unwrap_err();
    assert_eq!(
        (gone.failure, gone.reason.as_str()),
        (Failure::TokenInvalid, "UNREGISTERED")
    );
    env.sandbox.set_fault(
        "fcm",
        Fault {
            error_rate: 1.0,
            error_status: Some(503),
            retry_after_s: Some(30),
            ..Fault::default()
        },
    );
    let e = fcm
        .send(&message(13, Channel::Push, "fcm-token-13"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.failure, e.retry_after),
        (Failure::Retryable, Some(Duration::from_secs(30)))
    );
}

#[tokio::test]
async fn fcm_refuses_an_assertion_signed_with_another_key() {
    let env = env().await;
    let other = Fcm::new(FcmSettings {
        base_url: env.http(),
        service_account_file: None,
        project_id: Some(PROJECT.into()),
        client_email: Some(CLIENT.into()),
        private_key: Some(Secret::new(Keys::generate().unwrap().fcm_private_pem)),
        token_uri: Some(format!("{}/token", env.http())),
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let e = other
        .send(&message(14, Channel::Push, "fcm-token"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.failure, e.reason.as_str(), e.status),
        (Failure::Retryable, "token_invalid_grant", Some(400))
    );
    assert!(env.sandbox.records(Some("fcm"), None).is_empty());
}

#[tokio::test]
async fn twilio_posts_the_form_with_basic_auth_and_a_status_callback() {
    let env = env().await;
    let twilio = env.twilio();
    let m = message(20, Channel::Sms, "+14155550100");
    let accepted = twilio.send(&m).await.unwrap();
    assert!(accepted.provider_message_id.starts_with("SM"));
    let r = env.only("twilio", &m.notification_id);
    assert_eq!(r.request["form"]["To"], "+14155550100");
    assert_eq!(r.request["form"]["From"], "+15005550006");
    assert_eq!(r.request["form"]["Body"], "Order 20 is confirmed");
    assert_eq!(
        r.request["form"]["StatusCallback"],
        format!(
            "http://127.0.0.1:9/twilio/status?notification_id={}",
            m.notification_id
        )
    );
    for (n, to, code) in [
        (21, "+15005550001", "21211"),
        (22, "0155", "21211"),
        (23, "+15005550009", "21614"),
    ] {
        let e = twilio
            .send(&message(n, Channel::Sms, to))
            .await
            .unwrap_err();
        assert_eq!(
            (e.failure, e.reason.as_str()),
            (Failure::TokenInvalid, code),
            "{to}"
        );
    }
    let mut empty = message(24, Channel::Sms, "+14155550100");
    empty.content.body.clear();
    let e = twilio.send(&empty).await.unwrap_err();
    assert_eq!(
        (e.failure, e.reason.as_str()),
        (Failure::Permanent, "21602")
    );
    let wrong = Twilio::new(TwilioSettings {
        base_url: env.http(),
        account_sid: SID.into(),
        auth_token: Secret::new("not-the-token"),
        from: Some("+15005550006".into()),
        messaging_service_sid: None,
        status_callback: None,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let e = wrong.send(&m).await.unwrap_err();
    assert_eq!(
        (e.failure, e.reason.as_str()),
        (Failure::Retryable, "20003")
    );
    assert_eq!(env.sandbox.records(Some("twilio"), None).len(), 1);
}

#[tokio::test]
async fn webhooks_are_signed_per_standard_webhooks() {
    let env = env().await;
    let hook = env.webhook(&env.keys.webhook_secret);
    let mut m = message(
        30,
        Channel::Webhook,
        &format!("{}/hooks/orders", env.http()),
    );
    m.content.body = r#"{"order":30,"status":"confirmed"}"#.into();
    let accepted = hook.send(&m).await.unwrap();
    assert_eq!(accepted.provider_message_id, m.notification_id);
    let r = env.only("webhook", &m.notification_id);
    assert_eq!(r.request["endpoint"], "orders");
    assert_eq!(r.request["body"]["order"], 30);
    // The receiver's own check, on a known vector.
    let sig = hook.sign("msg_1", 1_700_000_000, b"{}");
    herald_sandbox::webhook::verify(
        &env.keys.webhook_secret,
        "msg_1",
        "1700000000",
        b"{}",
        &sig,
        1_700_000_000,
    )
    .unwrap();

    // Another secret: the receiver refuses (401), a permanent failure.
    let other = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    );
    let e = env
        .webhook(&other)
        .send(&message(
            31,
            Channel::Webhook,
            &format!("{}/hooks/orders", env.http()),
        ))
        .await
        .unwrap_err();
    assert_eq!((e.failure, e.status), (Failure::Permanent, Some(401)));
    // A deleted endpoint: invalid address.
    let e = hook
        .send(&message(
            32,
            Channel::Webhook,
            &format!("{}/hooks/gone", env.http()),
        ))
        .await
        .unwrap_err();
    assert_eq!((e.failure, e.status), (Failure::TokenInvalid, Some(410)));
    // Hosts off the allow-list and other schemes are never contacted.
    for url in [
        "http://10.0.0.1/hook",
        "file:///etc/passwd",
        "http://user@127.0.0.1/x",
        "http://:pw@127.0.0.1/x",
    ] {
        let e = hook
            .send(&message(33, Channel::Webhook, url))
            .await
            .unwrap_err();
        assert_eq!(
            (e.failure, e.status),
            (Failure::TokenInvalid, None),
            "{url}"
        );
    }
    // By default an endpoint inside the network (by address or by name) is
    // refused before any request.
    let guarded = Webhook::new(WebhookSettings {
        secret: Secret::new(env.keys.webhook_secret.clone()),
        allowed_hosts: Vec::new(),
        allow_private_networks: false,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    for url in [
        format!("{}/hooks/orders", env.http()),
        format!("http://localhost:{}/hooks/orders", env.bound.http.port()),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://[::1]/x".to_string(),
        // Loopback and the metadata address inside NAT64, 6to4 and the
        // IPv4-compatible form; documentation and benchmarking ranges.
        format!("http://[64:ff9b::7f00:1]:{}/x", env.bound.http.port()),
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data".to_string(),
        "http://[2002:7f00:1::]/x".to_string(),
        format!("http://[::127.0.0.1]:{}/x", env.bound.http.port()),
        "http://192.0.2.1/x".to_string(),
        "http://198.18.0.1/x".to_string(),
        "http://240.0.0.1/x".to_string(),
    ] {
        let e = guarded
            .send(&message(36, Channel::Webhook, &url))
            .await
            .unwrap_err();
        assert_eq!(
            (e.failure, e.reason.as_str()),
            (Failure::TokenInvalid, "private_address"),
            "{url}"
        );
    }

    // A connection dropped mid-request is retryable; then it works again.
    env.sandbox.set_fault(
        "webhook",
        Fault {
            reset_rate: 1.0,
            ..Fault::default()
        },
    );
    let url = format!("{}/hooks/orders", env.http());
    let e = hook
        .send(&message(34, Channel::Webhook, &url))
        .await
        .unwrap_err();
    assert_eq!((e.failure, e.status), (Failure::Retryable, None), "{e}");
    assert_eq!(env.sandbox.counts()["webhook"]["reset"], 1);
    env.sandbox.clear_fault("webhook");
    hook.send(&message(35, Channel::Webhook, &url))
        .await
        .unwrap();
    assert_eq!(env.sandbox.records(Some("webhook"), None).len(), 2);
}

#[tokio::test]
async fn email_goes_over_smtp_as_multipart_with_list_unsubscribe() {
    let env = env().await;
    let email = env.email();
    let mut m = message(40, Channel::Email, "ana@example.test");
    m.content.subject = Some("Your receipt".into());
    m.content.html = Some(
        r#"<html><body><p>Order 40 is <a href="https://shop.example/orders/40">confirmed</a></p></body></html>"#.into(),
    );
    let accepted = email.send(&m).await.unwrap();
    let r = env.only("smtp", &m.notification_id);
    assert_eq!(accepted.provider_message_id, r.provider_message_id);
    assert_eq!(r.request["rcpt_to"][0], "ana@example.test");
    assert_eq!(r.request["mail_from"], "noreply@herald.test");
    assert_eq!(r.request["subject"], "Your receipt");
    assert_eq!(r.request["multipart_alternative"], true);
    assert_eq!(
        r.request["message_id"],
        format!("<{}@herald>", m.notification_id)
    );
    assert_eq!(
        r.request["list_unsubscribe"],
        format!("<https://herald.test/u/{}>", m.notification_id)
    );
    assert_eq!(
        r.request["list_unsubscribe_post"],
        "List-Unsubscribe=One-Click"
    );
    let data = r.request["data"].as_str().unwrap();
    assert!(
        data.contains("Order 40 is confirmed") && data.contains("text/html"),
        "{data}"
    );
    // The HTML part carries a signed open pixel and a signed tracked link
    // (quoted-printable soft line breaks undone first).
    let html = data.replace("=\r\n", "").replace("=3D", "=");
    let key = TRACKING_KEY.as_bytes();
    let id = &m.notification_id;
    let open = herald_model::tracking::open_url("https://track.herald.test", key, id);
    assert!(html.contains(&open), "{html}");
    let click = herald_model::tracking::click_url(
        "https://track.herald.test",
        key,
        id,
        "https://shop.example/orders/40",
    );
    assert!(html.contains(&click.replace('&', "&amp;")), "{html}");
    assert!(!html.contains(r#"href="https://shop.example"#), "{html}");

    let e = email
        .send(&message(41, Channel::Email, "nobody@invalid.test"))
        .await
        .unwrap_err();
    assert_eq!((e.failure, e.status), (Failure::TokenInvalid, Some(550)));
    let e = email
        .send(&message(42, Channel::Email, "not an address"))
        .await
        .unwrap_err();
    assert_eq!(e.failure, Failure::TokenInvalid);
    env.sandbox.set_fault(
        "smtp",
        Fault {
            error_rate: 1.0,
            error_status: Some(451),
            ..Fault::default()
        },
    );
    let e = email
        .send(&message(43, Channel::Email, "ana@example.test"))
        .await
        .unwrap_err();
    assert_eq!((e.failure, e.status), (Failure::Retryable, Some(451)));
    // A provider outage is transient (421, the server closes the
    // connection), as is throttling; the mail is retried, not failed.
    env.sandbox.set_fault(
        "smtp",
        Fault {
            outage_s: Some(60),
            ..Fault::default()
        },
    );
    let e = email
        .send(&message(45, Channel::Email, "ana@example.test"))
        .await
        .unwrap_err();
    assert_eq!((e.failure, e.status), (Failure::Retryable, Some(421)));
    env.sandbox.set_fault(
        "smtp",
        Fault {
            error_rate: 1.0,
            error_status: Some(429),
            ..Fault::default()
        },
    );
    let e = email
        .send(&message(46, Channel::Email, "ana@example.test"))
        .await
        .unwrap_err();
    assert_eq!((e.failure, e.status), (Failure::Retryable, Some(451)));
    // Only a refusal asked for is permanent.
    env.sandbox.set_fault(
        "smtp",
        Fault {
            error_rate: 1.0,
            error_status: Some(422),
            ..Fault::default()
        },
    );
    let e = email
        .send(&message(47, Channel::Email, "ana@example.test"))
        .await
        .unwrap_err();
    assert_eq!((e.failure, e.status), (Failure::Permanent, Some(554)));
    // Once the outage is over, mail goes out again on the same transport.
    env.sandbox.clear_fault("smtp");
    email
        .send(&message(48, Channel::Email, "ana@example.test"))
        .await
        .unwrap();
    env.sandbox.set_fault(
        "smtp",
        Fault {
            reset_rate: 1.0,
            ..Fault::default()
        },
    );
    let e = email
        .send(&message(44, Channel::Email, "ana@example.test"))
        .await
        .unwrap_err();
    assert_eq!(e.failure, Failure::Retryable, "{e}");
    assert_eq!(env.sandbox.records(Some("smtp"), None).len(), 2);
}

/// A relay that stops answering mid-conversation (lettre bounds only the
/// connect): the send ends at Herald's deadline as retryable, and the
/// connection it held is not reused, so the next send goes through.
#[tokio::test]
async fn a_relay_that_stops_answering_fails_the_send_at_the_deadline() {
    let env = env().await;
    let email = env.email_with(Duration::from_millis(500), 2);
    email
        .send(&message(50, Channel::Email, "ana@example.test"))
        .await
        .unwrap();
    env.sandbox.set_fault(
        "smtp",
        Fault {
            timeout_rate: 1.0,
            ..Fault::default()
        },
    );
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        email.send(&message(51, Channel::Email, "ana@example.test")),
    )
    .await
    .expect("the send hung past its deadline")
    .unwrap_err();
    assert_eq!(
        (e.failure, e.reason.as_str()),
        (Failure::Retryable, "timeout")
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    env.sandbox.clear_fault("smtp");
    email
        .send(&message(52, Channel::Email, "ana@example.test"))
        .await
        .unwrap();
    assert_eq!(env.sandbox.records(Some("smtp"), None).len(), 2);
}

/// Many more sends at once than connections: they take turns on the
/// pool's connections and all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_emails_share_a_few_connections() {
    let env = env().await;
    let email = env.email_with(Duration::from_secs(10), 4);
    let sends = (0..300).map(|n| {
        let email = &email;
        async move {
            email
                .send(&message(1_000 + n, Channel::Email, "ana@example.test"))
                .await
        }
    });
    let results = futures::future::join_all(sends).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(env.sandbox.records(Some("smtp"), None).len(), 300);
}

/// One email after another on a warm connection: each costs the relay's
/// round trips, not the 40 ms of a delayed ACK that Nagle's algorithm
/// waits for between a message and its terminating dot (44 ms an email
/// before the pool set TCP_NODELAY, 0.4 ms after, on loopback).
#[tokio::test]
async fn sequential_emails_do_not_wait_for_delayed_acks() {
    let env = env().await;
    let email = env.email_with(Duration::from_secs(10), 1);
    email
        .send(&message(90, Channel::Email, "ana@example.test"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    for n in 0..20 {
        email
            .send(&message(100 + n, Channel::Email, "ana@example.test"))
            .await
            .unwrap();
    }
    let each = started.elapsed() / 20;
    assert!(each < Duration::from_millis(20), "{each:?} an email");
}
