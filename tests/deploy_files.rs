//! The deployment files (Kubernetes, docker-compose, Grafana provisioning,
//! Dockerfile) cannot be run here (no cluster, no Docker engine); these
//! tests keep them parseable and hold them to the fields they need.

use peerpool::config::{Config, PeerAddr};
use peerpool_testkit::prelude::*;
use serde_json::Value;

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

/// The volume of `pod` named `name`.
fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// Where `container` mounts a volume of the pod that holds `path`: the
/// volume's source (its `configMap` or `secret` object).
fn source_of<'a>(pod: &'a Value, container: &Value, path: &std::path::Path) -> &'a Value {
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    let m = mounts
        .iter()
        .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("-")))
        .max_by_key(|m| m["mountPath"].as_str().map_or(0, str::len))
        .unwrap_or_else(|| panic!("nothing mounted at {}", path.display()));
    volume(pod, m["name"].as_str().expect("mount name"))
}

/// One Deployment with a peerpool sidecar: checks what any such pod needs
/// and returns its parsed config.
fn check_sidecar(docs: &[Value], deploy: &Value) -> Config {
    assert_eq!(deploy["apiVersion"], "apps/v1");
    let name = deploy["metadata"]["name"].as_str().expect("name");
    let selector = deploy["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    let template = &deploy["spec"]["template"];
    for (k, v) in selector {
        assert_eq!(
            &template["metadata"]["labels"][k], v,
            "{name}: selector label {k}"
        );
    }
    let pod = &template["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert!(
        containers.len() >= 2,
        "{name}: an app container and peerpool"
    );
    let pp = containers
        .iter()
        .find(|c| c["name"] == "peerpool")
        .expect("a container named peerpool");
    assert!(pp["image"].is_string());

    // The config from its ConfigMap, valid for our schema.
    let config_volume = source_of(pod, pp, std::path::Path::new("/etc/peerpool/peerpool.toml"));
    let cm = named(
        docs,
        "ConfigMap",
        config_volume["configMap"]["name"]
            .as_str()
            .expect("configMap"),
    );
    let text = cm["data"]["peerpool.toml"].as_str().expect("peerpool.toml");
    let config = Config::parse(text).unwrap_or_else(|p| panic!("{name} config: {p:?}"));
    config
        .validate(None)
        .unwrap_or_else(|p| panic!("{name} config: {p:?}"));

    let (admin_port, quic_port) = (config.admin.listen.port(), config.node.listen.port());
    let ports = pp["ports"].as_array().expect("ports");
    assert!(
        ports
            .iter()
            .any(|p| p["containerPort"] == quic_port && p["protocol"] == "UDP"),
        "{name}: the QUIC port {quic_port}/UDP is declared"
    );
    assert!(ports.iter().any(|p| p["containerPort"] == admin_port));

    // Probes reach paths that need no token.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(pp[probe]["httpGet"]["path"], path, "{name}");
        assert!(
            config.admin.public.iter().any(|p| p == path),
            "{name}: {path} is probed without a token, so admin.public must list it"
        );
    }

    // Termination grace covers preStop and the drain.
    let sleep: f64 = pp["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("grace");
    assert!(
        grace >= sleep + config.admin.drain_timeout.as_secs_f64(),
        "{name}: grace {grace}s < preStop {sleep}s + drain_timeout {}s",
        config.admin.drain_timeout.as_secs_f64()
    );

    // Prometheus annotations point at the admin port.
    let ann = &template["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], admin_port.to_string());
    assert_eq!(ann["prometheus.io/path"], "/metrics");

    // The identity and the admin token from Secrets, the CA bundle from a
    // ConfigMap, each mounted where the config reads it.
    let keys = source_of(pod, pp, &config.node.key);
    assert_eq!(
        keys["secret"]["defaultMode"], 0o400,
        "{name}: keys mode 0400"
    );
    let identity = named(
        docs,
        "Secret",
        keys["secret"]["secretName"].as_str().expect("secret"),
    );
    assert_eq!(
        config.node.key.parent(),
        config.node.cert.parent(),
        "{name}: key and certificate come from the same Secret"
    );
    for path in [&config.node.key, &config.node.cert] {
        let f = path
            .file_name()
            .and_then(|f| f.to_str())
            .expect("file name");
        assert!(
            identity["stringData"][f].is_string(),
            "{name}: the identity Secret has {f}"
        );
    }
    assert!(
        config.admin.token.is_empty(),
        "{name}: no token in a ConfigMap"
    );
    let token = source_of(pod, pp, &config.admin.token_file);
    let token_secret = named(
        docs,
        "Secret",
        token["secret"]["secretName"]
            .as_str()
            .expect("token secret"),
    );
    let file = config
        .admin
        .token_file
        .file_name()
        .and_then(|f| f.to_str())
        .expect("token file name");
    assert!(
        token_secret["stringData"][file].is_string(),
        "{name}: the token Secret holds {file}"
    );
    let ca = source_of(pod, pp, &config.trust.ca);
    let ca_map = named(
        docs,
        "ConfigMap",
        ca["configMap"]["name"].as_str().expect("ca configMap"),
    );
    let file = config
        .trust
        .ca
        .file_name()
        .and_then(|f| f.to_str())
        .expect("ca file name");
    assert!(
        ca_map["data"][file].is_string(),
        "{name}: the CA ConfigMap holds {file}"
    );
    config
}

#[test]
fn the_kubernetes_example_deploys_a_replicated_group_reached_by_dns() {
    let path = repo("config/kubernetes/peerpool-sidecar.yaml");
    let docs = yaml_documents(&path);

    // The official schemas, offline.
    let validate = require(
        "kubernetes-validate",
        "pip install kubernetes-validate (.ci/run does)",
    );
    let out = std::process::Command::new(validate)
        .arg("--strict")
        .arg(&path)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        out.status.success(),
        "kubernetes-validate --strict: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let payments = named(&docs, "Deployment", "payments");
    let orders = named(&docs, "Deployment", "orders");
    assert_eq!(payments["spec"]["replicas"], 3);
    let server = check_sidecar(&docs, payments);
    let client = check_sidecar(&docs, orders);

    // The replicas share one CA-issued identity; the client names them by
    // the headless Service's DNS name.
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["spec"]["clusterIP"] == "None")
        .expect("a headless Service");
    let labels = &payments["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(
            &labels[k], v,
            "the headless Service selects the payments pods"
        );
    }
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["protocol"], "UDP");
    assert_eq!(port["port"], server.node.listen.port());
    let group = client
        .peers
        .iter()
        .find(|p| p.addr.is_some())
        .expect("the client has a peer to dial");
    assert!(
        group.id.is_none() && group.ids.is_empty(),
        "found by its CA name, not a pinned id"
    );
    let svc_name = service["metadata"]["name"].as_str().expect("service name");
    match &group.addr {
        Some(PeerAddr::Name { host, port }) => {
            assert!(
                host.starts_with(&format!("{svc_name}.")),
                "{host} is the Service's name"
            );
            assert_eq!(*port, server.node.listen.port());
        }
        other => panic!("the client dials a DNS name, not {other:?}"),
    }
    assert!(server.trust.ca.is_absolute() && client.trust.ca.is_absolute());
    let callers: Vec<&str> = server.peers.iter().map(|p| p.name.as_str()).collect();
    for f in &client.forward {
        assert_eq!(f.peer, group.name);
        let svc = server
            .service
            .iter()
            .find(|s| s.name == f.service)
            .expect("the forward's service exists on the server");
        if let Some(allow) = &svc.allow {
            assert!(allow.iter().all(|a| callers.contains(&a.as_str())));
        }
    }
    // One Secret for all three replicas: a Deployment, not one per pod.
    let keys = volume(&payments["spec"]["template"]["spec"], "keys");
    assert_eq!(keys["secret"]["secretName"], "payments-identity");
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
