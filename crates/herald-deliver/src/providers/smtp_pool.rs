//! SMTP connections the email adapter owns: at most `size` open and in use
//! at once, reused while they are sound.
//!
//! lettre's own pool opens a connection for every concurrent send (its
//! `max_size` only caps the idle ones), so a worker with hundreds of sends
//! in flight opens and tears down hundreds of connections per burst, and
//! a send cancelled by Herald's deadline hands its half-spoken connection
//! back for reuse. Here a send waits for one of `size` slots, takes an idle
//! connection (checked with `NOOP` when it sat idle a while) or opens one,
//! and puts it back only after a complete exchange: a connection whose send
//! was cancelled is dropped with its future, closing the socket.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use lettre::transport::smtp::Error;
use tokio::sync::Semaphore;

/// A connection idle longer than this is checked with `NOOP` before reuse
/// (relays close idle connections after a while; RFC 5321 allows 5 min).
const CHECK_AFTER: Duration = Duration::from_secs(5);
/// Idle connections older than this are closed instead of reused.
const IDLE_MAX: Duration = Duration::from_secs(60);

/// How connections are secured.
#[derive(Clone)]
pub enum Security {
    /// STARTTLS after the greeting, required.
    Starttls(TlsParameters),
    /// TLS from the first byte.
    Implicit(TlsParameters),
    /// Plain text (local relays only).
    None,
}

/// Where and how to connect.
pub struct Target {
    /// Relay host.
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// Connection security.
    pub security: Security,
    /// AUTH credentials.
    pub credentials: Option<Credentials>,
    /// Connect timeout (the whole send is bounded by the caller).
    pub connect_timeout: Duration,
}

/// The pool.
pub struct Pool {
    target: Target,
    hello: ClientId,
    slots: Semaphore,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

impl Pool {
    /// A pool of at most `size` connections (at least one).
    pub fn new(target: Target, size: usize) -> Self {
        Self {
            target,
            hello: ClientId::default(),
            slots: Semaphore::new(size.max(1)),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `email` on a connection of the pool. The connection goes
    /// back only when the exchange ended with the connection sound; when
    /// the caller's future is dropped mid-way it closes with it.
    pub async fn send(&self, envelope: &Envelope, email: &[u8]) -> Result<Response, Error> {
        let _slot = self
            .slots
            .acquire()
            .await
            .unwrap_or_else(|_| unreachable!("the semaphore is never closed"));
        let mut conn = self.take().await?;
        let result = conn.send(envelope, email).await;
        if !conn.has_broken() {
            self.lock().push((conn, Instant::now()));
        }
        result
    }

    /// Idle connections now (tests and metrics).
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(AsyncSmtpConnection, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn take(&self) -> Result<AsyncSmtpConnection, Error> {
        loop {
            let parked = self.lock().pop();
            let Some((mut conn, since)) = parked else {
                return self.open().await;
            };
            let idle = since.elapsed();
            if idle > IDLE_MAX {
                // Dropping it closes the socket; a polite QUIT could hang.
                continue;
            }
            if idle <= CHECK_AFTER || conn.test_connected().await {
                return Ok(conn);
            }
        }
    }

    async fn open(&self) -> Result<AsyncSmtpConnection, Error> {
        let t = &self.target;
        let implicit = match &t.security {
            Security::Implicit(p) => Some(p.clone()),
            _ => None,
        };
        let mut conn = AsyncSmtpConnection::connect_tokio1(
            (t.host.as_str(), t.port),
            Some(t.connect_timeout),
            &self.hello,
            implicit,
            None,
        )
        .await?;
        if let Security::Starttls(p) = &t.security {
            // Fails when the relay does not offer STARTTLS: never plain text.
            conn.starttls(p.clone(), &self.hello).await?;
        }
        if let Some(credentials) = &t.credentials {
            conn.auth(DEFAULT_MECHANISMS, credentials).await?;
        }
        Ok(conn)
    }
}
