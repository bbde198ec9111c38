//! An SMTP server (RFC 5321) that accepts mail the way a relay would and
//! records it: EHLO/HELO, AUTH PLAIN when credentials are configured,
//! MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT. Recipients at
//! `invalid.test` are refused with 550 (permanent); faults answer at MAIL
//! the way mail providers fail ([`fault_reply`]: an outage is `421` and
//! the connection closes, throttling and server errors are `451`, only a
//! client error or an SMTP 5xx code asked for is permanent), or hang.
//! Herald's notification id is read from the `X-Herald-Notification-Id`
//! header.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use herald_telemetry::shutdown::Shutdown;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::faults::Outcome;
use crate::Sandbox;

/// Largest message accepted, bytes.
pub const MAX_SIZE: usize = 10 * 1024 * 1024;
const IDLE: Duration = Duration::from_secs(60);

/// Accepts connections until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    sandbox: Arc<Sandbox>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let sandbox = sandbox.clone();
        tokio::spawn(async move {
            if let Err(e) = session(stream, sandbox).await {
                tracing::debug!(error = %e, "SMTP session ended.");
            }
        });
    }
}

#[derive(Default)]
struct Envelope {
    from: Option<String>,
    to: Vec<String>,
}

async fn session(stream: TcpStream, sandbox: Arc<Sandbox>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let auth_required = sandbox.settings().smtp.username.is_some();
    let mut authed = !auth_required;
    let mut envelope = Envelope::default();
    write.write_all(b"220 herald-sandbox ESMTP\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(IDLE, lines.read_line(&mut line))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"))??;
        if n == 0 {
            return Ok(());
        }
        let cmd = line.trim_end();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let auth = if auth_required {
                "250-AUTH PLAIN\r\n"
            } else {
                ""
            };
            format!("250-herald-sandbox\r\n250-8BITMIME\r\n{auth}250 SIZE {MAX_SIZE}\r\n")
        } else if upper.starts_with("HELO") {
            "250 herald-sandbox\r\n".into()
        } else if upper.starts_with("AUTH PLAIN") {
            let mut encoded = cmd.get(10..).unwrap_or("").trim().to_string();
            if encoded.is_empty() {
                write.write_all(b"334 \r\n").await?;
                let mut next = String::new();
                lines.read_line(&mut next).await?;
                encoded = next.trim().to_string();
            }
            if check_plain(&sandbox, &encoded) {
                authed = true;
                "235 2.7.0 Authentication successful\r\n".into()
            } else {
                sandbox.count("smtp", "535 auth");
                "535 5.7.8 Authentication credentials invalid\r\n".into()
            }
        } else if upper.starts_with("MAIL FROM:") {
            if !authed {
                sandbox.count("smtp", "530 auth required");
                "530 5.7.0 Authentication required\r\n".into()
            } else if sandbox.drops_connection("smtp") {
                return Ok(());
            } else {
                match sandbox.fault("smtp").await.outcome {
                    Outcome::Pass => {
                        envelope = Envelope {
                            from: Some(address(&cmd[10..])),
                            to: Vec::new(),
                        };
                        "250 2.1.0 Ok\r\n".into()
                    }
                    Outcome::Hang => {
                        sandbox.count("smtp", "hang");
                        std::future::pending::<()>().await;
                        String::new()
                    }
                    Outcome::Error { status, .. } => {
                        let (reply, closes) = fault_reply(status);
                        sandbox.count("smtp", &format!("{} injected", &reply[..3]));
                        if closes {
                            write.write_all(reply.as_bytes()).await?;
                            return Ok(());
                        }
                        reply.into()
                    }
                }
            }
        } else if upper.starts_with("RCPT TO:") {
            let to = address(&cmd[8..]);
            if envelope.from.is_none() {
                "503 5.5.1 MAIL first\r\n".into()
            } else if to.ends_with("@invalid.test") || !to.contains('@') {
                sandbox.count("smtp", "550 no such user");
                "550 5.1.1 No such user here\r\n".into()
            } else {
                envelope.to.push(to);
                "250 2.1.5 Ok\r\n".into()
            }
        } else if upper == "DATA" {
            if envelope.to.is_empty() {
                "503 5.5.1 RCPT first\r\n".into()
            } else {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                match read_data(&mut lines).await? {
                    Some(data) => {
                        let id = record(&sandbox, &envelope, &data);
                        envelope = Envelope::default();
                        format!("250 2.0.0 Ok: queued as {id}\r\n")
                    }
                    None => {
                        sandbox.count("smtp", "552 too large");
                        envelope = Envelope::default();
                        "552 5.3.4 Message too big\r\n".into()
                    }
                }
            }
        } else if upper == "RSET" {
            envelope = Envelope::default();
            "250 2.0.0 Ok\r\n".into()
        } else if upper == "NOOP" {
            "250 2.0.0 Ok\r\n".into()
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else if upper.starts_with("STARTTLS") {
            "454 4.7.0 TLS not available\r\n".into()
        } else {
            "502 5.5.2 Command not recognized\r\n".into()
        };
        write.write_all(reply.as_bytes()).await?;
    }
}

/// The SMTP reply to an injected fault of HTTP-style `status`, and whether
/// the server closes the connection after it. Mail providers fail
/// transiently for outages and throttling (a relay retries 4yz replies)
/// and permanently only for a message they refuse:
///
/// - 503 (what an outage answers) is `421 4.3.2`, and the connection
///   closes, as a server going away does;
/// - 429, 408 and every other 5xx are `451` (throttled, or a server error):
///   transient;
/// - an SMTP code itself passes through: 421, 450, 451, 452 (transient),
///   550 to 554 (permanent);
/// - any other 4xx (400, 403, 410, 422: the provider refuses the message)
///   is `554 5.7.1`: permanent.
pub fn fault_reply(status: u16) -> (&'static str, bool) {
    match status {
        503 | 421 => (
            "421 4.3.2 Service not available, closing transmission channel\r\n",
            true,
        ),
        429 => ("451 4.7.1 Too many messages, slow down\r\n", false),
        450 => ("450 4.2.1 Mailbox busy, try again later\r\n", false),
        452 => ("452 4.3.1 Insufficient system storage\r\n", false),
        408 | 451 | 500..=599 if !(550..=554).contains(&status) => {
            ("451 4.3.0 Temporary failure, try again later\r\n", false)
        }
        550 => ("550 5.1.1 Mailbox unavailable\r\n", false),
        551 => ("551 5.1.6 User not local\r\n", false),
        552 => ("552 5.3.4 Message too big\r\n", false),
        553 => ("553 5.1.3 Mailbox name not allowed\r\n", false),
        _ => ("554 5.7.1 Message rejected\r\n", false),
    }
}

fn check_plain(sandbox: &Sandbox, encoded: &str) -> bool {
    let creds = &sandbox.settings().smtp;
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return false;
    };
    let parts: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    parts.len() == 3
        && creds.username.as_deref().map(str::as_bytes) == Some(parts[1])
        && creds.password.as_deref().map(str::as_bytes) == Some(parts[2])
}

/// `<a@b> SIZE=...` to `a@b`.
fn address(arg: &str) -> String {
    let arg = arg.trim();
    let inner = arg
        .strip_prefix('<')
        .and_then(|a| a.split_once('>'))
        .map_or(arg.split(' ').next().unwrap_or(""), |(a, _)| a);
    inner.to_string()
}

/// Reads DATA up to the lone dot; `None` when it is larger than allowed.
async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut R,
) -> std::io::Result<Option<String>> {
    let mut data = String::new();
    let mut too_big = false;
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed in DATA",
            ));
        }
        let content = line.trim_end_matches(['\r', '\n']);
        if content == "." {
            return Ok((!too_big).then_some(data));
        }
        let unstuffed = content.strip_prefix('.').unwrap_or(content);
        if data.len() + unstuffed.len() > MAX_SIZE {
            too_big = true;
        } else if !too_big {
            data.push_str(unstuffed);
            data.push_str("\r\n");
        }
    }
}

/// Header value (unfolded) of a raw message.
fn header_value(data: &str, name: &str) -> Option<String> {
    let head = data.split("\r\n\r\n").next().unwrap_or("");
    let mut found: Option<String> = None;
    for l in head.split("\r\n") {
        if l.starts_with([' ', '\t']) {
            if let Some(v) = found.as_mut() {
                v.push(' ');
                v.push_str(l.trim());
            }
            continue;
        }
        if found.is_some() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case(name) {
                found = Some(v.trim().to_string());
            }
        }
    }
    found
}

fn record(sandbox: &Sandbox, envelope: &Envelope, data: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_uppercase();
    let content_type = header_value(data, "Content-Type").unwrap_or_default();
    sandbox.accept(
        "smtp",
        header_value(data, "X-Herald-Notification-Id"),
        id.clone(),
        json!({
            "mail_from": envelope.from,
            "rcpt_to": envelope.to,
            "subject": header_value(data, "Subject"),
            "message_id": header_value(data, "Message-ID"),
            "list_unsubscribe": header_value(data, "List-Unsubscribe"),
            "list_unsubscribe_post": header_value(data, "List-Unsubscribe-Post"),
            "content_type": content_type,
            "multipart_alternative": content_type.to_ascii_lowercase().starts_with("multipart/alternative"),
            "data": data,
        }),
    );
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_addresses() {
        let data = "Subject: Hello\r\n =?utf-8?q?world?=\r\nX-Herald-Notification-Id: n-1\r\n\r\nSubject: body\r\n";
        assert_eq!(
            header_value(data, "subject").as_deref(),
            Some("Hello =?utf-8?q?world?=")
        );
        assert_eq!(
            header_value(data, "X-Herald-Notification-Id").as_deref(),
            Some("n-1")
        );
        assert_eq!(header_value(data, "Message-ID"), None);
        assert_eq!(address("<a@b.test> SIZE=100"), "a@b.test");
        assert_eq!(address("a@b.test"), "a@b.test");
    }

    #[test]
    fn outages_and_throttling_are_transient_and_only_refusals_permanent() {
        let transient = |status: u16| fault_reply(status).0.starts_with('4');
        assert_eq!(fault_reply(503), (fault_reply(421).0, true), "outage");
        for status in [408, 429, 500, 502, 504, 599, 421, 450, 451, 452] {
            assert!(transient(status), "{status}: {:?}", fault_reply(status));
        }
        for status in [400, 401, 403, 404, 410, 422, 550, 551, 552, 553, 554] {
            assert!(!transient(status), "{status}: {:?}", fault_reply(status));
        }
        // Each reply is one well-formed line with an enhanced status code.
        for status in 400..=599 {
            let (reply, _) = fault_reply(status);
            let code = &reply[..3];
            assert!(reply.ends_with("\r\n") && reply.matches("\r\n").count() == 1);
            assert_eq!(reply.as_bytes()[4], code.as_bytes()[0], "{reply}");
            assert!(!(550..=554).contains(&status) || code == status.to_string());
        }
    }
}
