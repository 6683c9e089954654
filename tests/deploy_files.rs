//! The deployment files (Kubernetes, docker-compose, Grafana provisioning,
//! Dockerfile) cannot be run here (no cluster, no Docker engine); these
//! tests keep them parseable and hold them to the fields they need.

use peerpool::config::Config;
use peerpool_testkit::prelude::*;
use serde_json::Value;

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} document"))
}

#[test]
fn the_kubernetes_sidecar_example_has_what_a_deployment_needs() {
    let docs = yaml_documents(&repo("config/kubernetes/peerpool-sidecar.yaml"));
    let config_map = kind(&docs, "ConfigMap");
    let secret = kind(&docs, "Secret");
    let deploy = kind(&docs, "Deployment");
    assert_eq!(deploy["apiVersion"], "apps/v1");
    assert!(deploy["metadata"]["name"].is_string());

    // The selector matches the pod template.
    let selector = deploy["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    let template = &deploy["spec"]["template"];
    for (k, v) in selector {
        assert_eq!(&template["metadata"]["labels"][k], v, "selector label {k}");
    }

    // The embedded peerpool config is valid TOML for our schema.
    let toml_text = config_map["data"]["peerpool.toml"].as_str().unwrap();
    let config = Config::parse(toml_text).unwrap_or_else(|p| panic!("ConfigMap config: {p:?}"));
    let admin_port = config.admin.listen.port();
    let quic_port = config.node.listen.port();

    let pod = &template["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert!(containers.len() >= 2, "an app container and peerpool");
    let pp = containers
        .iter()
        .find(|c| c["name"] == "peerpool")
        .expect("a container named peerpool");
    assert!(pp["image"].is_string());
    let ports = pp["ports"].as_array().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p["containerPort"] == quic_port && p["protocol"] == "UDP"),
        "the QUIC port {quic_port}/UDP is declared"
    );
    assert!(ports.iter().any(|p| p["containerPort"] == admin_port));
    assert_eq!(pp["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(pp["readinessProbe"]["httpGet"]["path"], "/readyz");

    // Termination grace covers preStop and the drain.
    let pre_stop = pp["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .unwrap();
    let sleep: f64 = pre_stop
        .last()
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let grace = pod["terminationGracePeriodSeconds"].as_f64().unwrap();
    assert!(
        grace >= sleep + config.admin.drain_timeout.as_secs_f64(),
        "grace {grace}s < preStop {sleep}s + drain_timeout {}s",
        config.admin.drain_timeout.as_secs_f64()
    );

    // Prometheus annotations point at the admin port.
    let ann = &template["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], admin_port.to_string());
    assert_eq!(ann["prometheus.io/path"], "/metrics");

    // Config from the ConfigMap, keys from the Secret, mounted where the
    // config says.
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(volumes
        .iter()
        .any(|v| v["configMap"]["name"] == config_map["metadata"]["name"]));
    assert!(volumes
        .iter()
        .any(|v| v["secret"]["secretName"] == secret["metadata"]["name"]));
    let key_dir = config
        .node
        .key
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mounts = pp["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(|m| m["mountPath"] == key_dir.as_str()),
        "keys at {key_dir}"
    );
    assert!(secret["stringData"]["node.key"].is_string());
    assert!(secret["stringData"]["node.crt"].is_string());
}

#[test]
fn the_compose_file_and_grafana_provisioning_parse() {
    let compose = &yaml_documents(&repo("grafana/docker-compose.yml"))[0];
    let services = compose["services"].as_object().unwrap();
    for s in [
        "prometheus",
        "grafana",
        "node-a",
        "node-b",
        "node-c",
        "init",
    ] {
        assert!(services.contains_key(s), "service {s}");
    }
    let grafana_volumes: Vec<&str> = services["grafana"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(grafana_volumes
        .iter()
        .any(|v| v.starts_with("./provisioning:")));
    assert!(grafana_volumes
        .iter()
        .any(|v| v.starts_with("./dashboards:")));
    for f in [
        "grafana/provisioning/datasources/prometheus.yaml",
        "grafana/provisioning/dashboards/peerpool.yaml",
    ] {
        let doc = &yaml_documents(&repo(f))[0];
        assert_eq!(doc["apiVersion"], 1, "{f}");
    }
    let provider = &yaml_documents(&repo("grafana/provisioning/dashboards/peerpool.yaml"))[0];
    assert_eq!(
        provider["providers"][0]["options"]["path"], "/var/lib/grafana/dashboards",
        "where docker-compose.yml mounts the dashboards"
    );
    let ds = &yaml_documents(&repo("grafana/provisioning/datasources/prometheus.yaml"))[0];
    assert_eq!(ds["datasources"][0]["type"], "prometheus");
}

#[test]
fn the_dockerfile_is_multi_stage_and_runs_as_non_root() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let froms = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(froms >= 2, "multi-stage: {froms} FROM lines");
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "runs as {user}"
    );
    assert!(
        text.contains("--locked"),
        "builds with the committed Cargo.lock"
    );
}
