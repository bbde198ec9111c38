//! `deploy/`: the alert rules pass `promtool test rules`, the Helm chart
//! passes lint and its render tests (Helm's own engine through
//! helm-python-sdk), and the config files the chart renders are accepted by
//! the binaries' own config types.

use std::path::{Path, PathBuf};
use std::process::Command;

use herald_deliver::DeliverConfig;
use herald_router::RouterConfig;
use herald_sandbox::SandboxConfig;
use herald_scaler::ScalerConfig;
use herald_telemetry::{load_config, ConfigSource};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn python() -> String {
    std::env::var("HERALD_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs `cmd`, failing the test with its output unless it succeeds.
fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot start {:?} ({e}); .ci/run installs it",
            cmd.get_program()
        )
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_and_tests_the_alert_rules() {
    let dir = deploy().join("prometheus");
    let mut check = Command::new("promtool");
    check
        .current_dir(&dir)
        .args(["check", "rules", "herald-rules.yml"]);
    let out = run(check, "promtool check rules");
    assert!(out.contains("SUCCESS"), "{out}");
    let mut test = Command::new("promtool");
    test.current_dir(&dir)
        .args(["test", "rules", "herald-rules.test.yml"]);
    let out = run(test, "promtool test rules");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_chart_lints_and_renders() {
    let mut cmd = Command::new(python());
    cmd.arg(deploy().join("tests/test_chart.py"));
    let out = run(cmd, "chart tests");
    assert!(out.contains("\nOK"), "{out}");
}

#[test]
fn the_binaries_accept_the_config_the_chart_renders() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(deploy().join("tests/test_chart.py"))
        .arg("dump-configs")
        .arg(dir.path())
        .arg("sandbox");
    run(cmd, "rendering the chart's config files");
    let source = |name: &str| ConfigSource {
        file: Some(dir.path().join(name)),
        ..ConfigSource::default()
    };

    let router: RouterConfig = load_config(&source("router.toml")).unwrap();
    router.router.validate().unwrap();
    assert_eq!(router.router.group, "herald-router");
    assert_eq!(router.topics.partitions, 12);
    assert_eq!(
        router.admin.listen_for("router").port(),
        9600,
        "the chart sets it"
    );

    let scaler: ScalerConfig = load_config(&source("scaler.toml")).unwrap();
    scaler.scaler.validate().unwrap();
    let groups: Vec<_> = scaler
        .scaler
        .groups
        .iter()
        .map(|g| g.group.as_str())
        .collect();
    assert_eq!(
        groups,
        [
            "herald-router",
            "herald-deliver-push",
            "herald-deliver-sms",
            "herald-deliver-email",
            "herald-deliver-webhook"
        ]
    );
    assert_eq!(scaler.scaler.groups[0].initial_service_rate, Some(2000.0));
    assert_eq!(
        scaler
            .scaler
            .signal(&scaler.scaler.groups[3])
            .latency_objective_s,
        120.0
    );

    // Provider credentials come from the operator's values; the rest of
    // each worker's file is what the binary reads.
    for channel in ["push", "sms", "email", "webhook"] {
        let file = format!("deliver-{channel}.toml");
        let deliver: DeliverConfig = load_config(&source(&file)).unwrap();
        assert_eq!(deliver.deliver.group(), format!("herald-deliver-{channel}"));
        assert_eq!(deliver.topics.prefix, "herald");
    }
    let sandbox: SandboxConfig = load_config(&source("sandbox.toml")).unwrap();
    assert_eq!(sandbox.sandbox.http_listen.port(), 9600);
}
