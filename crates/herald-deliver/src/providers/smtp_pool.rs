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

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use lettre::transport::smtp::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
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
    /// TLS from the first byte, verified for this domain.
    Implicit(String),
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
    /// Connect timeout (TCP and TLS; the whole send is bounded by the
    /// caller).
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
    pub async fn send(&self, envelope: &Envelope, email: &[u8]) -> Result<Response, Failed> {
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
        Ok(result?)
    }

    /// Idle connections now (tests and metrics).
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(AsyncSmtpConnection, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn take(&self) -> Result<AsyncSmtpConnection, Failed> {
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

    async fn open(&self) -> Result<AsyncSmtpConnection, Failed> {
        let t = &self.target;
        let tcp = tokio::time::timeout(
            t.connect_timeout,
            TcpStream::connect((t.host.as_str(), t.port)),
        )
        .await
        .map_err(|_| Failed::Connect(io::Error::new(io::ErrorKind::TimedOut, "timed out")))?
        .map_err(Failed::Connect)?;
        // SMTP writes a message and then its terminating dot apart; with
        // Nagle the dot waits for the relay's delayed ACK (40 ms a message).
        tcp.set_nodelay(true).map_err(Failed::Connect)?;
        let stream: Box<dyn AsyncTokioStream> = match &t.security {
            Security::Implicit(domain) => {
                let connector = native_tls::TlsConnector::new().map_err(connect_error)?;
                let tls = tokio_native_tls::TlsConnector::from(connector)
                    .connect(domain, tcp)
                    .await
                    .map_err(connect_error)?;
                Box::new(ImplicitTls(tls))
            }
            _ => Box::new(tcp),
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello).await?;
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

/// Why a send through the pool failed.
#[derive(Debug, thiserror::Error)]
pub enum Failed {
    /// Connecting (TCP or implicit TLS) before SMTP began.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// What lettre reported, from the greeting on.
    #[error(transparent)]
    Smtp(#[from] Error),
}

fn connect_error(e: impl std::fmt::Display) -> Failed {
    Failed::Connect(io::Error::other(e.to_string()))
}

/// A TLS stream from the first byte (port 465), as lettre's transport.
#[derive(Debug)]
struct ImplicitTls(tokio_native_tls::TlsStream<TcpStream>);

impl AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.get_ref().get_ref().get_ref().peer_addr()
    }
}

impl AsyncRead for ImplicitTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ImplicitTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
