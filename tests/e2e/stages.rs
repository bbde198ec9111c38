//! Herald's binaries as the end-to-end tests run them: each stage its own
//! process, started and ended by the test (by pid), its stderr kept.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use herald_kafka::Topology;
use herald_testkit::measure::now_ms;
use herald_testkit::TestBroker;

/// A Herald binary Cargo built for the workspace's tests (beside this
/// test's own executable).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is not built: run `make test` (or cargo build --workspace --bins)",
        bin.display()
    );
    bin
}

/// One stage process, started and ended by this test (by pid), its stderr
/// kept in a log file that is printed when the verdict fails.
pub struct Stage {
    pub name: &'static str,
    command: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Stage {
    pub fn new(name: &'static str, dir: &Path, command: Vec<String>) -> Self {
        let mut s = Self {
            name,
            command,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        s.start();
        s
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .env("HERALD__LOG__FILTER", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        self.child = Some(child);
    }

    pub fn kill(&mut self) -> i64 {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        now_ms()
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The sections every stage of a pipeline test shares: the broker (group
/// timeouts short enough for a test that kills members), the topics as
/// `topology` declares them, and an admin port of the system's choosing.
pub fn common_config(broker: &TestBroker, topology: &Topology) -> String {
    let t = topology.settings();
    format!(
        "[kafka]\nbootstrap = \"{}\"\n\
         [kafka.consumer_overrides]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
         [topics]\nprefix = \"{}\"\npartitions = {}\nchannel_partitions = {}\n\
         replication_factor = {}\nmin_insync_replicas = {}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        broker.bootstrap(),
        t.prefix,
        t.partitions,
        t.channel_partitions,
        t.replication_factor,
        t.min_insync_replicas,
    )
}

impl Stage {
    /// Starts Herald binary `bin` with `args`, its log in `dir`.
    pub fn of(name: &'static str, dir: &Path, bin: &str, args: &[&str]) -> Self {
        let mut command = vec![binary(bin).display().to_string()];
        command.extend(args.iter().map(|a| a.to_string()));
        Self::new(name, dir, command)
    }
}

/// Every status and dead letter the stages wrote, read back once the
/// pipeline is quiet.
pub async fn statuses(
    broker: &TestBroker,
    topology: &Topology,
    partitions: i32,
) -> Vec<herald_model::wire::DeliveryStatus> {
    use rdkafka::message::Message;
    let codec = herald_codec::Codec::single_object();
    let mut out = Vec::new();
    for m in broker
        .read_all(
            &topology.named("status"),
            partitions,
            std::time::Duration::from_secs(3),
        )
        .await
    {
        out.push(codec.decode(m.payload().unwrap()).await.unwrap());
    }
    out
}
