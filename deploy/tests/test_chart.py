"""Offline tests of the Helm chart with Helm's own engine (helm-python-sdk
binds Helm v4's Go SDK; no helm binary, no cluster), plus checks that the
alert rules and the dashboard only name metrics Herald exports.

    python3 deploy/tests/test_chart.py                   # the tests
    python3 deploy/tests/test_chart.py dump-configs DIR  # each stage's config file

`make test` runs both through tests/e2e/deploy.rs, which also parses the
dumped config files with the binaries' own config types.
"""

import json
import os
import re
import sys
import unittest

import helm_python as helm
import yaml

DEPLOY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(DEPLOY, "helm", "herald")
RULES = os.path.join(DEPLOY, "prometheus", "herald-rules.yml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "herald-dashboard.json")
METRICS_RS = os.path.join(DEPLOY, "..", "crates", "herald-telemetry", "src", "metrics.rs")

STAGES = ["router", "deliver-push", "deliver-sms", "deliver-email", "deliver-webhook", "tracker", "scaler"]
SCALED = ["router", "deliver-push", "deliver-sms", "deliver-email", "deliver-webhook"]


def render(values=None):
    """Every rendered object, as (kind, name) -> manifest."""
    chart = helm.Chart.load(CHART)
    out = chart.render(values or {}, name="herald", namespace="notify")
    objects = {}
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in objects, f"{key} rendered twice"
                objects[key] = doc
    return objects


def of_kind(objects, kind):
    return {name: o for (k, name), o in objects.items() if k == kind}


def container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def stage_configs(values=None):
    """Each stage's config file from the rendered ConfigMap."""
    cm = render(values)[("ConfigMap", "herald-config")]
    return cm["data"]


class Lint(unittest.TestCase):
    def test_lint_is_clean_even_strict(self):
        report = helm.lint(CHART, strict=True)
        self.assertEqual(report["errors"], [])
        self.assertEqual(report["messages"], [])

    def test_lint_with_every_option_turned(self):
        values = {"autoscaling": {"mode": "hpa"}, "sandbox": {"enabled": True},
                  "metrics": {"serviceMonitor": {"enabled": False}}}
        report = helm.lint(CHART, values, strict=True)
        self.assertEqual(report["errors"], [])


class Defaults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.objects = render()

    def test_one_deployment_service_and_pdb_per_stage(self):
        for kind in ["Deployment", "Service", "PodDisruptionBudget"]:
            names = sorted(of_kind(self.objects, kind))
            self.assertEqual(names, sorted(f"herald-{s}" for s in STAGES), kind)
        self.assertNotIn(("Deployment", "herald-sandbox"), self.objects)

    def test_each_stage_runs_its_binary_with_its_config_file(self):
        data = self.objects[("ConfigMap", "herald-config")]["data"]
        for name, d in of_kind(self.objects, "Deployment").items():
            c = container(d)
            stage = name.removeprefix("herald-")
            binary = "herald-deliver" if stage.startswith("deliver-") else f"herald-{stage}"
            self.assertEqual(c["command"], [binary])
            env = {e["name"]: e.get("value") for e in c["env"]}
            self.assertEqual(env["HERALD_CONFIG"], f"/etc/herald/{stage}.toml")
            self.assertIn(f"{stage}.toml", data)
            if stage.startswith("deliver-"):
                self.assertEqual(c["args"], ["--channel", stage.removeprefix("deliver-")])
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            self.assertEqual(mounts["/etc/herald"], "config")
            # A config change rolls the pods.
            self.assertRegex(d["spec"]["template"]["metadata"]["annotations"]["checksum/config"], "^[0-9a-f]{64}$")

    def test_probes_and_metrics_on_the_admin_port(self):
        for name, d in of_kind(self.objects, "Deployment").items():
            c = container(d)
            self.assertEqual(c["ports"], [{"name": "admin", "containerPort": 9600, "protocol": "TCP"}])
            self.assertEqual(c["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "admin"}, name)
            self.assertEqual(c["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "admin"}, name)
            self.assertEqual(c["startupProbe"]["httpGet"]["path"], "/healthz")
            self.assertTrue(c["resources"]["requests"]["cpu"])
            self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
        monitor = of_kind(self.objects, "ServiceMonitor")["herald"]
        self.assertEqual(monitor["spec"]["endpoints"][0]["port"], "admin")
        self.assertEqual(monitor["spec"]["endpoints"][0]["path"], "/metrics")
        for svc in of_kind(self.objects, "Service").values():
            for k, v in monitor["spec"]["selector"]["matchLabels"].items():
                self.assertEqual(svc["metadata"]["labels"][k], v)

    def test_pdbs_select_their_stage(self):
        deployments = of_kind(self.objects, "Deployment")
        for name, pdb in of_kind(self.objects, "PodDisruptionBudget").items():
            self.assertEqual(pdb["spec"]["maxUnavailable"], 1)
            self.assertEqual(pdb["spec"]["selector"]["matchLabels"],
                             deployments[name]["spec"]["selector"]["matchLabels"])

    def test_keda_scales_each_consumer_stage_on_the_scalers_signal(self):
        scaled = of_kind(self.objects, "ScaledObject")
        self.assertEqual(sorted(scaled), sorted(f"herald-{s}" for s in SCALED))
        groups = {"router": "herald-router", **{f"deliver-{c}": f"herald-deliver-{c}" for c in ["push", "sms", "email", "webhook"]}}
        for name, so in scaled.items():
            trigger = so["spec"]["triggers"][0]
            self.assertEqual(trigger["type"], "metrics-api")
            self.assertEqual(trigger["metadata"]["valueLocation"], "desiredReplicas")
            self.assertEqual(trigger["metadata"]["targetValue"], "1")
            group = groups[name.removeprefix("herald-")]
            self.assertEqual(trigger["metadata"]["url"], f"http://herald-scaler.notify.svc:9600/scale/{group}")
            self.assertEqual(so["spec"]["scaleTargetRef"]["name"], name)
            # KEDA owns the replica count: the Deployment does not fight it.
            self.assertNotIn("replicas", self.objects[("Deployment", name)]["spec"])
        self.assertEqual(self.objects[("Deployment", "herald-tracker")]["spec"]["replicas"], 2)
        self.assertEqual(of_kind(self.objects, "HorizontalPodAutoscaler"), {})

    def test_the_scaler_watches_every_scaled_group(self):
        scaler = stage_configs()["scaler.toml"]
        for group in ["herald-router", "herald-deliver-push", "herald-deliver-webhook"]:
            self.assertIn(f'"group" = "{group}"', scaler)
        self.assertIn('"topics" = ["herald.push.urgent", "herald.push.normal", "herald.push.bulk"]', scaler)

    def test_the_prometheus_rule_is_the_promtool_tested_file(self):
        rule = of_kind(self.objects, "PrometheusRule")["herald"]
        with open(RULES) as f:
            self.assertEqual(rule["spec"], yaml.safe_load(f))

    def test_the_dashboard_is_shipped_for_grafanas_sidecar(self):
        cm = self.objects[("ConfigMap", "herald-dashboard")]
        self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
        with open(DASHBOARD) as f:
            self.assertEqual(json.loads(cm["data"]["herald.json"]), json.load(f))


class Options(unittest.TestCase):
    def test_hpa_mode_uses_the_load_ratio_with_a_value_target_of_one(self):
        objects = render({"autoscaling": {"mode": "hpa"}})
        self.assertEqual(of_kind(objects, "ScaledObject"), {})
        hpas = of_kind(objects, "HorizontalPodAutoscaler")
        self.assertEqual(sorted(hpas), sorted(f"herald-{s}" for s in SCALED))
        metric = hpas["herald-router"]["spec"]["metrics"][0]["external"]
        self.assertEqual(metric["metric"]["name"], "herald_scaler_load_ratio")
        self.assertEqual(metric["metric"]["selector"]["matchLabels"], {"group": "herald-router"})
        self.assertEqual(metric["target"], {"type": "Value", "value": "1"})

    def test_without_autoscaling_replicas_are_fixed(self):
        objects = render({"autoscaling": {"mode": "none"}})
        self.assertEqual(of_kind(objects, "ScaledObject"), {})
        self.assertEqual(of_kind(objects, "HorizontalPodAutoscaler"), {})
        self.assertEqual(objects[("Deployment", "herald-router")]["spec"]["replicas"], 2)

    def test_autoscaling_without_the_scaler_is_refused(self):
        with self.assertRaises(helm.HelmError) as e:
            render({"scaler": {"enabled": False}})
        self.assertIn("scaler.enabled", str(e.exception))

    def test_secrets_are_referenced_never_inlined(self):
        objects = render({"kafkaPasswordSecret": {"name": "kafka-credentials", "key": "pw"},
                          "kafka": {"bootstrap": "k:9093", "security": {"protocol": "sasl_ssl"}},
                          "podDefaults": {"env": [{"name": "APNS_KEY", "valueFrom": {"secretKeyRef": {"name": "apns", "key": "p8"}}}]}})
        for name, d in of_kind(objects, "Deployment").items():
            env = {e["name"]: e for e in container(d)["env"]}
            self.assertEqual(env["HERALD__KAFKA__SECURITY__PASSWORD"]["valueFrom"]["secretKeyRef"],
                             {"name": "kafka-credentials", "key": "pw"})
            self.assertIn("APNS_KEY", env)
        self.assertEqual(of_kind(objects, "Secret"), {})
        self.assertIn('protocol" = "sasl_ssl"', objects[("ConfigMap", "herald-config")]["data"]["router.toml"])

    def test_a_stage_can_be_turned_off_and_the_sandbox_on(self):
        objects = render({"deliver": {"channels": {"sms": {"enabled": False}}}, "sandbox": {"enabled": True}})
        deployments = of_kind(objects, "Deployment")
        self.assertNotIn("herald-deliver-sms", deployments)
        self.assertIn("herald-sandbox", deployments)
        self.assertNotIn("herald-deliver-sms", of_kind(objects, "ScaledObject"))
        self.assertNotIn('"herald-deliver-sms"', objects[("ConfigMap", "herald-config")]["data"]["scaler.toml"])

    def test_stage_resources_override_the_defaults(self):
        objects = render({"router": {"resources": {"requests": {"cpu": "2"}, "limits": {"memory": "2Gi"}}}})
        router = container(objects[("Deployment", "herald-router")])
        # Merged key by key over podDefaults.
        self.assertEqual(router["resources"], {"requests": {"cpu": "2", "memory": "256Mi"}, "limits": {"memory": "2Gi"}})
        push = container(objects[("Deployment", "herald-deliver-push")])
        self.assertEqual(push["resources"]["requests"]["cpu"], "250m")

    def test_the_schema_rejects_bad_values_naming_them(self):
        cases = [
            ({"routr": {}}, "routr"),
            ({"autoscaling": {"mode": "vpa"}}, "/autoscaling/mode"),
            ({"router": {"replicas": "two"}}, "/router/replicas"),
            ({"router": {"config": {"guarantee": "maybe"}}}, "/router/config/guarantee"),
            ({"kafka": {"bootstrap": "k:9092", "security": {"password": "hunter2"}}}, "/kafka/security/password"),
            ({"deliver": {"channels": {"fax": {}}}}, "fax"),
        ]
        for values, named in cases:
            with self.subTest(values=values):
                with self.assertRaises(helm.HelmError) as e:
                    render(values)
                self.assertIn(named, str(e.exception))


def exported_metric_names():
    with open(METRICS_RS) as f:
        return set(re.findall(r'"(herald_[a-z0-9_]+)"', f.read()))


def referenced_metrics(text):
    names = set()
    for name in re.findall(r"\b(herald_[a-z0-9_]+)", text):
        for suffix in ("_bucket", "_count", "_sum"):
            if name.endswith(suffix) and not name.endswith("_total"):
                name = name[: -len(suffix)]
                break
        names.add(name)
    return names


class MetricNames(unittest.TestCase):
    def test_rules_name_only_exported_metrics(self):
        with open(RULES) as f:
            missing = referenced_metrics(f.read()) - exported_metric_names()
        self.assertEqual(missing, set())

    def test_every_alert_has_a_promtool_test(self):
        with open(RULES) as f:
            rules = yaml.safe_load(f)
        with open(os.path.join(DEPLOY, "prometheus", "herald-rules.test.yml")) as f:
            tests = yaml.safe_load(f)
        alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
        tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])
                  if t.get("exp_alerts")}
        self.assertEqual(alerts - tested, set(), "alerts without a firing test")

    def test_the_dashboard_names_only_exported_metrics(self):
        with open(DASHBOARD) as f:
            dash = json.load(f)
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        self.assertGreater(len(exprs), 20)
        missing = referenced_metrics("\n".join(exprs)) - exported_metric_names()
        self.assertEqual(missing, set())
        # The recording rule the SLO panel reads exists.
        with open(RULES) as f:
            self.assertIn("record: herald:delivery_slo_errors:ratio_rate1h", f.read())
        titles = " ".join(p["title"] for p in dash["panels"]).lower()
        for topic in ["time lag", "desired vs actual replicas", "throughput", "latency", "breaker", "dead letters"]:
            self.assertIn(topic, titles)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "dump-configs":
        os.makedirs(sys.argv[2], exist_ok=True)
        values = {"sandbox": {"enabled": True}} if "sandbox" in sys.argv[3:] else None
        for name, text in stage_configs(values).items():
            with open(os.path.join(sys.argv[2], name), "w") as f:
                f.write(text)
        sys.exit(0)
    unittest.main(verbosity=2)
