//! The shutdown supervisor: named tasks, one cancellation signal, a drain
//! deadline.
//!
//! A task that fails cancels the rest. SIGTERM or Ctrl-C cancels every task
//! and waits for them to drain (finish in-flight work, commit, leave the
//! group) within the deadline; a second signal stops waiting at once.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::events::{Drained, Emit};

/// A cloneable shutdown signal handed to every task.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// A fresh, untriggered signal.
    pub fn new() -> Self {
        Self(CancellationToken::new())
    }

    /// Triggers shutdown.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// Whether shutdown was triggered.
    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once shutdown is triggered.
    pub async fn cancelled(&self) {
        self.0.cancelled().await;
    }
}

/// Why the supervisor stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every task finished after a shutdown request (or on its own).
    Clean,
    /// The drain deadline passed, or a second signal arrived, with tasks still running.
    Abandoned {
        /// Tasks still running.
        running: usize,
    },
}

/// Spawns named tasks and stops them together.
pub struct Supervisor {
    stage: &'static str,
    shutdown: Shutdown,
    tasks: JoinSet<(String, anyhow::Result<()>)>,
    drain: Duration,
}

impl Supervisor {
    /// A supervisor for `stage` that gives tasks `drain` to finish once
    /// shutdown starts (keep it below the pod's termination grace period).
    pub fn new(stage: &'static str, drain: Duration) -> Self {
        Self {
            stage,
            shutdown: Shutdown::new(),
            tasks: JoinSet::new(),
            drain,
        }
    }

    /// The signal every task should watch.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Spawns a named task.
    pub fn spawn<F>(&mut self, name: impl Into<String>, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name = name.into();
        self.tasks.spawn(async move { (name, task.await) });
    }

    /// Runs until every task ends, a task fails, or a signal arrives
    /// (`signals`: listen for SIGTERM and Ctrl-C). The first task error is
    /// returned after the others were stopped.
    pub async fn run(self, signals: bool) -> anyhow::Result<Outcome> {
        let signal = || async move {
            if signals {
                wait_for_signal().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        self.run_until(signal(), signal()).await
    }

    /// Like [`Supervisor::run`] with explicit first and second stop signals
    /// (tests use channels; binaries use OS signals).
    pub async fn run_until(
        mut self,
        first: impl Future<Output = ()>,
        second: impl Future<Output = ()>,
    ) -> anyhow::Result<Outcome> {
        let mut first_error: Option<anyhow::Error> = None;
        tokio::pin!(first);
        // Phase 1: running.
        loop {
            tokio::select! {
                _ = &mut first => {
                    tracing::info!(stage = self.stage, "Shutdown requested; draining.");
                    break;
                }
                _ = self.shutdown.cancelled() => break,
                joined = self.tasks.join_next() => match joined {
                    None => return Ok(Outcome::Clean),
                    Some(Ok((name, Ok(())))) => {
                        tracing::info!(stage = self.stage, task = %name, "Task finished.");
                    }
                    Some(Ok((name, Err(e)))) => {
                        tracing::error!(stage = self.stage, task = %name, error = %format!("{e:#}"), "Task failed; stopping the others.");
                        first_error = Some(e.context(format!("task {name} failed")));
                        break;
                    }
                    Some(Err(join)) => {
                        tracing::error!(stage = self.stage, error = %join, "Task panicked; stopping the others.");
                        first_error = Some(anyhow::anyhow!("a task panicked: {join}"));
                        break;
                    }
                },
            }
        }
        // Phase 2: draining.
        self.shutdown.trigger();
        let started = Instant::now();
        let deadline = tokio::time::sleep(self.drain);
        tokio::pin!(deadline, second);
        let outcome = loop {
            tokio::select! {
                _ = &mut deadline => break Outcome::Abandoned { running: self.tasks.len() },
                _ = &mut second => {
                    tracing::warn!(stage = self.stage, "Second signal; exiting without waiting.");
                    break Outcome::Abandoned { running: self.tasks.len() };
                }
                joined = self.tasks.join_next() => match joined {
                    None => break Outcome::Clean,
                    Some(Ok((name, Err(e)))) if first_error.is_none() => {
                        first_error = Some(e.context(format!("task {name} failed while draining")));
                    }
                    _ => {}
                },
            }
        };
        Drained {
            stage: self.stage,
            elapsed: started.elapsed(),
            timed_out: outcome != Outcome::Clean,
        }
        .emit();
        self.tasks.abort_all();
        match first_error {
            Some(e) => Err(e),
            None => Ok(outcome),
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl Supervisor {
    /// Serves `app` (the admin routes, with any of the stage's own) on
    /// `listen` as a supervised task. A port that cannot be bound is said
    /// on stderr and gives the failure exit code.
    pub async fn serve_admin(
        &mut self,
        listen: std::net::SocketAddr,
        app: axum::Router,
    ) -> Result<(), std::process::ExitCode> {
        match crate::admin::serve_routes(listen, app, self.shutdown()).await {
            Ok((addr, task)) => {
                tracing::info!(%addr, "Admin server listening.");
                self.spawn("admin", async move { Ok(task.await??) });
                Ok(())
            }
            Err(e) => {
                eprintln!(
                    "herald-{}: binding the admin server to {listen}: {e}",
                    self.stage
                );
                Err(std::process::ExitCode::FAILURE)
            }
        }
    }

    /// Runs until the end (signals handled) and turns the outcome into the
    /// process's exit code: 0 when everything drained, 1 on a task's error
    /// (said on stderr) or when the drain deadline passed.
    pub async fn exit_code(self) -> std::process::ExitCode {
        let stage = self.stage;
        match self.run(true).await {
            Ok(Outcome::Clean) => std::process::ExitCode::SUCCESS,
            Ok(Outcome::Abandoned { running }) => exit_abandoned(stage, running),
            Err(e) => {
                eprintln!("herald-{stage}: {e:#}");
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// Ends the process at once after a drain deadline passed: returning from
/// `main` would wait for every blocking task, and one stuck in a client
/// call would keep the process alive past the deadline.
pub fn exit_abandoned(stage: &str, running: usize) -> ! {
    eprintln!("herald-{stage}: {running} task(s) did not drain in time; exiting");
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[tokio::test(start_paused = true)]
    async fn a_signal_drains_every_task_within_the_deadline() {
        let mut sup = Supervisor::new("test", Duration::from_secs(5));
        let (tx, rx) = oneshot::channel::<()>();
        for i in 0..3 {
            let sd = sup.shutdown();
            sup.spawn(format!("worker-{i}"), async move {
                sd.cancelled().await;
                tokio::time::sleep(Duration::from_millis(100 * i)).await; // drain work
                Ok(())
            });
        }
        let _ = tx.send(());
        let out = sup
            .run_until(
                async {
                    let _ = rx.await;
                },
                std::future::pending(),
            )
            .await;
        assert_eq!(out.expect("clean"), Outcome::Clean);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_task_stops_the_others_and_is_reported() {
        let mut sup = Supervisor::new("test", Duration::from_secs(5));
        let sd = sup.shutdown();
        let (stopped_tx, stopped_rx) = oneshot::channel();
        sup.spawn("steady", async move {
            sd.cancelled().await;
            let _ = stopped_tx.send(());
            Ok(())
        });
        sup.spawn("broken", async {
            anyhow::bail!("broker refused transactions")
        });
        let err = sup
            .run_until(std::future::pending(), std::future::pending())
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("broker refused transactions"));
        assert!(stopped_rx.await.is_ok(), "the steady task saw the shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_task_is_abandoned_at_the_deadline_or_on_a_second_signal() {
        let mut sup = Supervisor::new("test", Duration::from_secs(2));
        sup.spawn("stuck", std::future::pending());
        let out = sup
            .run_until(async {}, std::future::pending())
            .await
            .expect("no error");
        assert_eq!(out, Outcome::Abandoned { running: 1 });

        let mut sup = Supervisor::new("test", Duration::from_secs(3600));
        sup.spawn("stuck", std::future::pending());
        let started = tokio::time::Instant::now();
        let out = sup
            .run_until(async {}, tokio::time::sleep(Duration::from_secs(1)))
            .await
            .expect("no error");
        assert_eq!(out, Outcome::Abandoned { running: 1 });
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
