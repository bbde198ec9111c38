//! `herald dev`: the whole local stack in one process.
//!
//! Kafka: the configured cluster, or an embedded one (librdkafka's mock
//! cluster on loopback) when `kafka.bootstrap` is empty. Then the topics, the
//! admin server, and every Herald stage that exists. Ctrl-C drains and exits.

use std::process::ExitCode;

use anyhow::Context;
use herald_kafka::{topology, EmbeddedCluster, Topology};
use herald_scaler::{GroupSettings, ScalerConfig, ScalerSettings, Signals};
use herald_telemetry::{serve_routes, AdminState, Outcome, Supervisor};

use crate::config::CliConfig;

/// Runs the local stack until a signal.
pub async fn run(mut config: CliConfig) -> anyhow::Result<ExitCode> {
    // Held for the whole run: dropping it stops the embedded brokers.
    let mut embedded: Option<EmbeddedCluster> = None;
    let topology;
    if config.kafka.bootstrap.trim().is_empty() {
        let brokers = config.dev.embedded_brokers.max(1);
        let cluster =
            EmbeddedCluster::start(brokers).context("starting the embedded Kafka cluster")?;
        config.kafka.bootstrap = cluster.bootstrap();
        let mut topics = config.topics.clone();
        topics.replication_factor = topics.replication_factor.min(brokers);
        topics.min_insync_replicas = topics.min_insync_replicas.min(topics.replication_factor);
        topology = Topology::new(topics);
        let n = cluster
            .create_topology(&topology, brokers)
            .context("creating topics")?;
        say!("kafka      {} (embedded librdkafka mock cluster, {brokers} broker(s), {n} topics; volatile)", config.kafka.bootstrap);
        embedded = Some(cluster);
    } else {
        topology = Topology::new(config.topics.clone());
        let admin = config.kafka.admin().context("kafka settings")?;
        let report = topology::apply(&admin, &topology, config.kafka.request_timeout).await?;
        say!(
            "kafka      {} ({} topics created, {} unchanged, {} drifted)",
            config.kafka.bootstrap,
            report.created.len(),
            report.unchanged.len(),
            report.drift.len()
        );
        for drift in &report.drift {
            say!("drift      {drift}");
        }
    }
    say!(
        "topics     {}.* (input: {})",
        topology.settings().prefix,
        topology.notifications()
    );

    let mut supervisor = Supervisor::new("dev", config.dev.drain);
    let admin_state = AdminState::new("dev");
    // The scaler watches the router's group; its signal is served by the
    // same admin server at /scale/<group>.
    let scaler = ScalerConfig {
        kafka: config.kafka.clone(),
        log: config.log.clone(),
        admin: config.admin.clone(),
        scaler: ScalerSettings {
            poll_interval: config.dev.scaler_poll_interval,
            groups: vec![GroupSettings {
                group: config.router.group.clone(),
                topics: vec![topology.notifications()],
                ..GroupSettings::default()
            }],
            ..ScalerSettings::default()
        },
    };
    let signals = Signals::default();
    let app = admin_state.router().merge(herald_scaler::routes(
        signals.clone(),
        vec![config.router.group.clone()],
    ));
    let (admin_addr, admin_task) =
        serve_routes(config.admin.listen_for("dev"), app, supervisor.shutdown())
            .await
            .with_context(|| {
                format!(
                    "binding the admin server to {}",
                    config.admin.listen_for("dev")
                )
            })?;
    supervisor.spawn("admin", async move { Ok(admin_task.await??) });
    say!("admin      http://{admin_addr}/metrics  /healthz  /readyz");
    let router_admin = AdminState::new("router");
    supervisor.spawn(
        "router",
        herald_router::run(config.router_config(), supervisor.shutdown(), router_admin),
    );
    supervisor.spawn(
        "scaler",
        herald_scaler::run(
            scaler,
            signals,
            supervisor.shutdown(),
            AdminState::new("scaler"),
        ),
    );
    let (stack, sandbox_tasks) = crate::stack::start(&config, supervisor.shutdown()).await?;
    for (i, task) in sandbox_tasks.into_iter().enumerate() {
        supervisor.spawn(format!("sandbox-{i}"), async move { Ok(task.await??) });
    }
    say!(
        "sandbox    http://{}/sandbox/messages  smtp {}  (APNs, FCM, Twilio, webhooks, SMTP)",
        stack.bound.http,
        stack.bound.smtp
    );
    for worker in stack.workers.clone() {
        let channel = worker.deliver.channel.map_or("?", |c| c.as_str());
        supervisor.spawn(
            format!("deliver-{channel}"),
            herald_deliver::run(worker, supervisor.shutdown(), AdminState::new("deliver")),
        );
    }
    say!(
        "stages     router (group {}), deliver (push, sms, email, webhook), scaler (http://{admin_addr}/scale/{}); tracker joins when it lands",
        config.router.group, config.router.group
    );
    say!(
        "try        herald send --count 10   (then read {}.<channel>.<lane>)",
        topology.settings().prefix
    );
    admin_state.set_ready(true);
    say!("ready      Ctrl-C to stop");

    let outcome = supervisor.run(true).await?;
    admin_state.set_ready(false);
    drop(stack);
    drop(embedded);
    match outcome {
        Outcome::Clean => {
            say!("stopped    cleanly");
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Abandoned { running } => {
            say!("stopped    {running} task(s) did not drain in time");
            Ok(ExitCode::FAILURE)
        }
    }
}
