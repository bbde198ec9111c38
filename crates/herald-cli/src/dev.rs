//! `herald dev`: the whole local stack in one process.
//!
//! Kafka: the configured cluster, or an embedded one (librdkafka's mock
//! cluster on loopback) when `kafka.bootstrap` is empty. Then the topics, the
//! admin server, and every Herald stage that exists. Ctrl-C drains and exits.

use std::process::ExitCode;

use anyhow::Context;
use herald_kafka::{topology, EmbeddedCluster, Topology};
use herald_telemetry::{serve_admin, AdminState, Outcome, Supervisor};

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
        println!("kafka      {} (embedded librdkafka mock cluster, {brokers} broker(s), {n} topics; volatile)", config.kafka.bootstrap);
        embedded = Some(cluster);
    } else {
        topology = Topology::new(config.topics.clone());
        let admin = config.kafka.admin().context("kafka settings")?;
        let report = topology::apply(&admin, &topology, config.kafka.request_timeout).await?;
        println!(
            "kafka      {} ({} topics created, {} unchanged, {} drifted)",
            config.kafka.bootstrap,
            report.created.len(),
            report.unchanged.len(),
            report.drift.len()
        );
        for drift in &report.drift {
            println!("drift      {drift}");
        }
    }
    println!(
        "topics     {}.* (input: {})",
        topology.settings().prefix,
        topology.notifications()
    );

    let mut supervisor = Supervisor::new("dev", config.dev.drain);
    let admin_state = AdminState::new("dev");
    let (admin_addr, admin_task) = serve_admin(
        config.admin.listen,
        admin_state.clone(),
        supervisor.shutdown(),
    )
    .await
    .with_context(|| format!("binding the admin server to {}", config.admin.listen))?;
    supervisor.spawn("admin", async move { Ok(admin_task.await??) });
    println!("admin      http://{admin_addr}/metrics  /healthz  /readyz");
    let router_admin = AdminState::new("router");
    supervisor.spawn(
        "router",
        herald_router::run(config.router_config(), supervisor.shutdown(), router_admin),
    );
    println!(
        "stages     router (group {}); delivery workers, tracker and scaler join as they land",
        config.router.group
    );
    println!(
        "try        herald send --count 10   (then read {}.<channel>.<lane>)",
        topology.settings().prefix
    );
    admin_state.set_ready(true);
    println!("ready      Ctrl-C to stop");

    let outcome = supervisor.run(true).await?;
    admin_state.set_ready(false);
    drop(embedded);
    match outcome {
        Outcome::Clean => {
            println!("stopped    cleanly");
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Abandoned { running } => {
            println!("stopped    {running} task(s) did not drain in time");
            Ok(ExitCode::FAILURE)
        }
    }
}
