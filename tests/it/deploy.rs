//! The deployment assets are what they claim to be: Kubernetes manifests
//! that are exactly the Kubernetes API's objects, probes and security
//! settings as agreed, Datadog assets that name only the agreed metrics, and
//! a docker-compose file whose references exist. No stack needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::Value;

/// The metric names with their types, as the Datadog assets use them. The
/// names themselves are defined once, in `capture::metrics` and `apply::metrics`; the
/// test `the_datadog_assets_know_exactly_the_metrics_the_services_export`
/// keeps this list equal to that module's.
const AGREED_METRICS: &[(&str, MetricType)] = &[
    ("syncbridge_capture_events_total", MetricType::Counter),
    (
        "syncbridge_capture_slot_retained_wal_bytes",
        MetricType::Gauge,
    ),
    (
        "syncbridge_capture_confirmed_flush_age_seconds",
        MetricType::Gauge,
    ),
    (
        "syncbridge_capture_polling_watermark_age_seconds",
        MetricType::Gauge,
    ),
    ("syncbridge_capture_errors_total", MetricType::Counter),
    ("syncbridge_capture_slot_lost_total", MetricType::Counter),
    ("syncbridge_apply_end_to_end_lag_seconds", MetricType::Gauge),
    (
        "syncbridge_apply_commit_latency_seconds",
        MetricType::Histogram,
    ),
    ("syncbridge_apply_consumer_lag_messages", MetricType::Gauge),
    ("syncbridge_apply_events_applied_total", MetricType::Counter),
    (
        "syncbridge_apply_events_skipped_older_total",
        MetricType::Counter,
    ),
    (
        "syncbridge_apply_echoes_suppressed_total",
        MetricType::Counter,
    ),
    ("syncbridge_apply_dead_lettered_total", MetricType::Counter),
    ("syncbridge_apply_batch_size", MetricType::Histogram),
    (
        "syncbridge_apply_batch_commit_seconds",
        MetricType::Histogram,
    ),
    ("syncbridge_apply_errors_total", MetricType::Counter),
    ("syncbridge_verify_rows_compared_total", MetricType::Counter),
    ("syncbridge_verify_rows_different", MetricType::Gauge),
    ("syncbridge_verify_last_pass_age_seconds", MetricType::Gauge),
    ("syncbridge_verify_errors_total", MetricType::Counter),
    ("syncbridge_ready", MetricType::Gauge),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

/// The OpenMetrics family name (a counter without `_total`), as the
/// openmetrics check matches it.
fn family(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

/// The agreed metric a Datadog metric name stands for, if any, under the
/// convention of deploy/datadog/README.md: `syncbridge.` + the family name
/// without `syncbridge_`, counters with `.count`, histograms with `.sum`,
/// `.count` or `.bucket`, gauges bare.
fn agreed_metric_of(datadog_name: &str) -> Option<&'static str> {
    let rest = datadog_name.strip_prefix("syncbridge.")?;
    let (base, suffix) = match rest.rsplit_once('.') {
        Some((base, suffix)) => (base, Some(suffix)),
        None => (rest, None),
    };
    AGREED_METRICS.iter().find_map(|(name, kind)| {
        let renamed = family(name).strip_prefix("syncbridge_")?;
        let fits = match (kind, suffix) {
            (MetricType::Gauge, None) => base == renamed,
            (MetricType::Counter, Some("count")) => base == renamed,
            (MetricType::Histogram, Some("count" | "sum" | "bucket")) => base == renamed,
            _ => false,
        };
        fits.then_some(*name)
    })
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every YAML document of the file, as JSON values.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            let value = serde_yaml_ng::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::to_value(value).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|value| !value.is_null())
        .collect()
}

/// Reads `document` as the API type `T` and writes it back: a field the
/// type does not know (a misspelling, a field at the wrong level) is lost on
/// the way, so the round trip must give the document back unchanged.
fn round_trip<T>(path: &Path, document: &Value) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = serde_json::from_value(document.clone()).unwrap_or_else(|e| {
        panic!(
            "{}: not a valid {}: {e}",
            path.display(),
            std::any::type_name::<T>()
        )
    });
    let back = serde_json::to_value(&typed).unwrap();
    if &back != document {
        panic!(
            "{}: fields the Kubernetes API does not have (or wrong types):\n{}",
            path.display(),
            differences(document, &back, "").join("\n")
        );
    }
    typed
}

/// Where two JSON values differ, as `path: original vs read back`.
fn differences(original: &Value, back: &Value, at: &str) -> Vec<String> {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .flat_map(|key| {
                    let here = format!("{at}.{key}");
                    match (a.get(key), b.get(key)) {
                        (Some(x), Some(y)) => differences(x, y, &here),
                        (Some(_), None) => vec![format!("{here}: unknown field")],
                        (None, Some(y)) => vec![format!("{here}: added as {y}")],
                        (None, None) => Vec::new(),
                    }
                })
                .collect()
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .flat_map(|(i, (x, y))| differences(x, y, &format!("{at}[{i}]")))
            .collect(),
        (a, b) if a == b => Vec::new(),
        (a, b) => vec![format!("{at}: {a} read back as {b}")],
    }
}

/// The Kubernetes objects of deploy/kubernetes, typed.
#[derive(Default)]
struct Manifests {
    deployments: Vec<Deployment>,
    config_maps: Vec<ConfigMap>,
    namespaces: Vec<Namespace>,
}

impl Manifests {
    fn load() -> Manifests {
        let dir = repo().join("deploy/kubernetes");
        let kustomization = kustomization();
        let mut manifests = Manifests::default();
        for resource in &kustomization.resources {
            let path = dir.join(resource);
            let documents = yaml_documents(&path);
            assert!(!documents.is_empty(), "{} is empty", path.display());
            for document in &documents {
                match document["kind"].as_str() {
                    Some("Deployment") => manifests.deployments.push(round_trip(&path, document)),
                    Some("ConfigMap") => manifests.config_maps.push(round_trip(&path, document)),
                    Some("Namespace") => manifests.namespaces.push(round_trip(&path, document)),
                    other => panic!("{}: unexpected kind {other:?}", path.display()),
                }
            }
        }
        manifests
    }

    fn config_map(&self, name: &str) -> Option<&ConfigMap> {
        self.config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
    }
}

/// The fields of kustomization.yaml this project uses; anything else is a
/// mistake.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    namespace: String,
    #[serde(default)]
    labels: Vec<serde_json::Value>,
    resources: Vec<String>,
    #[serde(default)]
    images: Vec<KustomizeImage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KustomizeImage {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
}

fn kustomization() -> Kustomization {
    let path = repo().join("deploy/kubernetes/kustomization.yaml");
    serde_yaml_ng::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod spec")
}

fn name_of(deployment: &Deployment) -> &str {
    deployment.metadata.name.as_deref().unwrap_or("?")
}

#[test]
fn every_manifest_is_exactly_a_kubernetes_api_object() {
    let kustomization = kustomization();
    assert_eq!(kustomization.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(kustomization.kind, "Kustomization");
    assert_eq!(kustomization.namespace, "sync-bridge");
    assert!(kustomization.labels.iter().all(|l| l["pairs"].is_object()));
    let dir = repo().join("deploy/kubernetes");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    let listed: BTreeSet<String> = kustomization.resources.iter().cloned().collect();
    assert_eq!(on_disk, listed, "kustomization.yaml lists every manifest");
    for image in &kustomization.images {
        assert!(image.new_name.is_some() || image.new_tag.is_some());
        assert_eq!(image.name, "sync-bridge");
    }

    let manifests = Manifests::load();
    let names: BTreeSet<&str> = manifests.deployments.iter().map(name_of).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "sync-bridge-apply",
            "sync-bridge-capture-legacy",
            "sync-bridge-capture-platform"
        ])
    );
    assert_eq!(manifests.namespaces.len(), 1);
}

#[test]
fn a_misspelt_field_fails_the_round_trip() {
    // The check above must be able to fail: the same Deployment with one
    // field misspelt does not come back unchanged.
    let path = repo().join("deploy/kubernetes/apply.yaml");
    let mut document = yaml_documents(&path).remove(0);
    document["spec"]["template"]["spec"]["containers"][0]["readinessProb"] =
        document["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].clone();
    let outcome = std::panic::catch_unwind(|| round_trip::<Deployment>(&path, &document));
    let message = *outcome
        .expect_err("the misspelt field is detected")
        .downcast::<String>()
        .unwrap();
    assert!(
        message.contains("readinessProb: unknown field"),
        "{message}"
    );
}

fn http_probe(container: &Container, which: &str) -> (String, IntOrString) {
    let probe = match which {
        "readiness" => container.readiness_probe.as_ref(),
        _ => container.liveness_probe.as_ref(),
    }
    .unwrap_or_else(|| panic!("container {} has a {which} probe", container.name));
    let get = probe
        .http_get
        .as_ref()
        .unwrap_or_else(|| panic!("container {}: {which} probe is an HTTP GET", container.name));
    (get.path.clone().unwrap_or_default(), get.port.clone())
}

#[test]
fn probes_point_at_the_agreed_endpoints_and_every_container_runs_as_non_root() {
    let manifests = Manifests::load();
    for deployment in &manifests.deployments {
        let name = name_of(deployment);
        let spec = deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1), "{name}: one writer per source");
        assert_eq!(
            spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
            Some("Recreate"),
            "{name}: the old pod stops before the new one starts"
        );
        let pod = pod_spec(deployment);
        let pod_security = pod.security_context.as_ref();
        assert!(!pod.containers.is_empty());
        for container in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            let c = &container.name;
            assert_eq!(
                http_probe(container, "readiness"),
                ("/readyz".to_owned(), IntOrString::Int(9090)),
                "{name}/{c}"
            );
            assert_eq!(
                http_probe(container, "liveness"),
                ("/healthz".to_owned(), IntOrString::Int(9090)),
                "{name}/{c}"
            );
            assert!(
                container
                    .ports
                    .iter()
                    .flatten()
                    .any(|p| p.container_port == 9090),
                "{name}/{c} declares port 9090"
            );
            let security = container.security_context.as_ref();
            let non_root = security
                .and_then(|s| s.run_as_non_root)
                .or(pod_security.and_then(|s| s.run_as_non_root));
            assert_eq!(non_root, Some(true), "{name}/{c} runs as non-root");
            let user = security
                .and_then(|s| s.run_as_user)
                .or(pod_security.and_then(|s| s.run_as_user));
            assert!(user.is_some_and(|u| u != 0), "{name}/{c}: a non-zero uid");
            assert_eq!(
                security.and_then(|s| s.read_only_root_filesystem),
                Some(true),
                "{name}/{c}: read-only root file system"
            );
            assert_eq!(
                security.and_then(|s| s.allow_privilege_escalation),
                Some(false),
                "{name}/{c}"
            );
            assert!(
                container
                    .resources
                    .as_ref()
                    .is_some_and(|r| r.requests.is_some()
                        && r.limits.as_ref().is_some_and(|l| l.contains_key("memory"))),
                "{name}/{c}: resource requests and a memory limit"
            );
            // No password in the environment: secrets are files.
            for variable in container.env.iter().flatten() {
                assert!(
                    !variable.name.ends_with("PASSWORD") || variable.value_from.is_some(),
                    "{name}/{c}: {} holds a literal password",
                    variable.name
                );
            }
        }
    }
}

#[test]
fn deployments_mount_the_configuration_they_name_and_it_is_accepted_by_the_services() {
    let manifests = Manifests::load();
    let config = manifests
        .config_map("sync-bridge-config")
        .expect("the config ConfigMap");
    let data = config.data.clone().unwrap_or_default();
    for deployment in &manifests.deployments {
        let name = name_of(deployment);
        let pod = pod_spec(deployment);
        let container = &pod.containers[0];
        let args = container.args.clone().unwrap_or_default();
        let service = args[0].as_str();
        let config_path = args
            .iter()
            .position(|a| a == "--config")
            .map(|i| args[i + 1].clone())
            .unwrap_or_else(|| panic!("{name}: --config"));
        // Find the volume mounted where --config points and the key behind it.
        let (mount, volume) = container
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| config_path.starts_with(&format!("{}/", m.mount_path)))
            .find_map(|m| {
                pod.volumes
                    .iter()
                    .flatten()
                    .find(|v| v.name == m.name)
                    .map(|v| (m, v))
            })
            .unwrap_or_else(|| panic!("{name}: nothing mounted at {config_path}"));
        let source = volume.config_map.as_ref().expect("a ConfigMap volume");
        assert_eq!(source.name, "sync-bridge-config");
        let file = &config_path[mount.mount_path.len() + 1..];
        let key = source
            .items
            .iter()
            .flatten()
            .find(|item| item.path == file)
            .map(|item| item.key.clone())
            .unwrap_or_else(|| file.to_owned());
        let toml = data
            .get(&key)
            .unwrap_or_else(|| panic!("{name}: sync-bridge-config has no {key}"));
        match service {
            "capture" => {
                let parsed = capture::Config::from_toml(toml)
                    .unwrap_or_else(|e| panic!("{name}: {key}: {e}"));
                assert_eq!(
                    deployment
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("sync-bridge/source")),
                    Some(&parsed.source.name),
                    "{name} captures the source its label names"
                );
                assert!(parsed.connection().unwrap().tls.mode.requires_tls());
            }
            "apply" => {
                let parsed =
                    apply::Config::from_toml(toml).unwrap_or_else(|e| panic!("{name}: {key}: {e}"));
                let mapping = pod
                    .volumes
                    .iter()
                    .flatten()
                    .find(|v| {
                        v.config_map
                            .as_ref()
                            .is_some_and(|c| c.name == "sync-bridge-mapping")
                    })
                    .expect("the mapping volume");
                let mounted_at = container
                    .volume_mounts
                    .iter()
                    .flatten()
                    .find(|m| m.name == mapping.name)
                    .map(|m| PathBuf::from(&m.mount_path));
                assert_eq!(mounted_at, Some(parsed.apply.mapping_dir.clone()));
            }
            other => panic!("{name}: unexpected service {other}"),
        }
        // Every ConfigMap or Secret a volume needs is either here or one of
        // the documented ones the operator creates.
        for volume in pod.volumes.iter().flatten() {
            if let Some(map) = &volume.config_map {
                assert!(
                    manifests.config_map(&map.name).is_some() || map.name == "sync-bridge-ca",
                    "{name}: ConfigMap {} is neither shipped nor documented",
                    map.name
                );
            }
            if let Some(secret) = &volume.secret {
                let secret_name = secret.secret_name.as_deref().unwrap_or_default();
                assert!(
                    ["sync-bridge-postgres", "sync-bridge-kafka"].contains(&secret_name),
                    "{name}: Secret {secret_name} is not documented"
                );
            }
        }
        // The password files the environment names are mounted.
        for variable in container.env.iter().flatten() {
            if variable.name.ends_with("PASSWORD_FILE") {
                let path = variable.value.clone().unwrap_or_default();
                assert!(
                    container
                        .volume_mounts
                        .iter()
                        .flatten()
                        .any(|m| path.starts_with(&format!("{}/", m.mount_path))),
                    "{name}: {} points at {path}, which nothing mounts",
                    variable.name
                );
            }
        }
    }
}

#[test]
fn the_mapping_config_map_is_the_repository_mapping() {
    let manifests = Manifests::load();
    let mapping = manifests
        .config_map("sync-bridge-mapping")
        .expect("the mapping ConfigMap");
    let data = mapping.data.clone().unwrap_or_default();
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join("schemas/mapping")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.insert(
                path.file_name().unwrap().to_string_lossy().into_owned(),
                read(&path),
            );
        }
    }
    assert!(!files.is_empty());
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        files.keys().collect::<Vec<_>>()
    );
    for (name, text) in &files {
        assert!(
            data[name] == *text,
            "deploy/kubernetes/mapping.yaml: {name} differs from schemas/mapping/{name}: regenerate it"
        );
    }
}

/// Checks one openmetrics autodiscovery configuration (annotation or label).
fn check_openmetrics(what: &str, json: &str) -> usize {
    let checks: Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
    let instances = checks["openmetrics"]["instances"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: openmetrics instances"));
    let mut count = 0;
    for instance in instances {
        assert_eq!(
            instance["openmetrics_endpoint"], "http://%%host%%:9090/metrics",
            "{what}"
        );
        assert_eq!(instance["namespace"], "syncbridge", "{what}");
        for entry in instance["metrics"].as_array().expect("metrics") {
            for (from, to) in entry.as_object().expect("renames") {
                let agreed = AGREED_METRICS
                    .iter()
                    .find(|(name, _)| family(name) == from)
                    .unwrap_or_else(|| panic!("{what}: {from} is not an agreed metric"));
                assert_eq!(
                    Some(to.as_str().unwrap()),
                    family(agreed.0).strip_prefix("syncbridge_"),
                    "{what}: {from} renamed by the convention"
                );
                count += 1;
            }
        }
    }
    count
}

#[test]
fn pods_carry_datadog_openmetrics_annotations_for_the_agreed_metrics() {
    let manifests = Manifests::load();
    for deployment in &manifests.deployments {
        let name = name_of(deployment);
        let annotations = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        for container in &pod_spec(deployment).containers {
            let key = format!("ad.datadoghq.com/{}.checks", container.name);
            let json = annotations
                .get(&key)
                .unwrap_or_else(|| panic!("{name}: annotation {key}"));
            assert!(check_openmetrics(&format!("{name} {key}"), json) >= 5);
        }
    }
}

/// Every `syncbridge.*` metric name in any string of `value`.
fn datadog_metric_names(value: &Value, into: &mut BTreeSet<String>) {
    match value {
        Value::String(text) => {
            let mut rest = text.as_str();
            while let Some(start) = rest.find("syncbridge.") {
                let tail = &rest[start..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                    .unwrap_or(tail.len());
                into.insert(tail[..end].trim_end_matches('.').to_owned());
                rest = &tail[end..];
            }
        }
        Value::Array(items) => items.iter().for_each(|v| datadog_metric_names(v, into)),
        Value::Object(map) => map.values().for_each(|v| datadog_metric_names(v, into)),
        _ => {}
    }
}

#[test]
fn the_datadog_naming_convention_maps_back_to_agreed_names_only() {
    assert_eq!(
        agreed_metric_of("syncbridge.apply_events_applied.count"),
        Some("syncbridge_apply_events_applied_total")
    );
    assert_eq!(
        agreed_metric_of("syncbridge.apply_end_to_end_lag_seconds"),
        Some("syncbridge_apply_end_to_end_lag_seconds")
    );
    assert_eq!(
        agreed_metric_of("syncbridge.apply_batch_size.bucket"),
        Some("syncbridge_apply_batch_size")
    );
    // A counter without .count, a gauge with it, a typo: none is a metric.
    assert_eq!(agreed_metric_of("syncbridge.apply_events_applied"), None);
    assert_eq!(agreed_metric_of("syncbridge.ready.count"), None);
    assert_eq!(agreed_metric_of("syncbridge.apply_lag_seconds"), None);
}

#[test]
fn the_dashboard_and_monitors_reference_only_agreed_metrics() {
    let dir = repo().join("deploy/datadog");
    let dashboard: Value = serde_json::from_str(&read(&dir.join("dashboard.json"))).unwrap();
    let monitors: Value = serde_json::from_str(&read(&dir.join("monitors.json"))).unwrap();

    let mut used = BTreeSet::new();
    datadog_metric_names(&dashboard, &mut used);
    let unknown: Vec<&String> = used
        .iter()
        .filter(|m| agreed_metric_of(m).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "dashboard.json: not agreed: {unknown:?}"
    );
    let shown: BTreeSet<&str> = used.iter().filter_map(|m| agreed_metric_of(m)).collect();
    for needed in [
        "syncbridge_apply_end_to_end_lag_seconds",
        "syncbridge_apply_consumer_lag_messages",
        "syncbridge_capture_slot_retained_wal_bytes",
        "syncbridge_capture_confirmed_flush_age_seconds",
        "syncbridge_capture_events_total",
        "syncbridge_apply_events_applied_total",
        "syncbridge_apply_events_skipped_older_total",
        "syncbridge_apply_echoes_suppressed_total",
        "syncbridge_apply_dead_lettered_total",
        "syncbridge_capture_errors_total",
        "syncbridge_apply_errors_total",
        "syncbridge_apply_batch_size",
        "syncbridge_apply_batch_commit_seconds",
    ] {
        assert!(shown.contains(needed), "the dashboard shows {needed}");
    }
    assert!(!dashboard["widgets"].as_array().unwrap().is_empty());

    let monitors = monitors.as_array().expect("monitors.json is an array");
    let mut watched = BTreeSet::new();
    for monitor in monitors {
        let name = monitor["name"].as_str().expect("a name");
        let query = monitor["query"].as_str().expect("a query");
        assert!(monitor["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(monitor["type"], "query alert", "{name}");
        let mut names = BTreeSet::new();
        datadog_metric_names(&monitor["query"], &mut names);
        assert!(!names.is_empty(), "{name}: names a metric");
        for metric in &names {
            let agreed = agreed_metric_of(metric)
                .unwrap_or_else(|| panic!("{name}: {metric} is not an agreed metric"));
            watched.insert(agreed);
        }
        // The critical threshold is the number the query compares with.
        let (_, bound) = query
            .rsplit_once(['>', '<'])
            .unwrap_or_else(|| panic!("{name}: a comparison"));
        let bound: f64 = bound.trim().parse().unwrap();
        assert_eq!(
            monitor["options"]["thresholds"]["critical"].as_f64(),
            Some(bound),
            "{name}"
        );
    }
    for needed in [
        "syncbridge_apply_commit_latency_seconds",
        "syncbridge_apply_consumer_lag_messages",
        "syncbridge_capture_slot_retained_wal_bytes",
        "syncbridge_apply_dead_lettered_total",
        "syncbridge_capture_slot_lost_total",
        "syncbridge_verify_rows_different",
        "syncbridge_verify_last_pass_age_seconds",
        "syncbridge_ready",
    ] {
        assert!(watched.contains(needed), "a monitor watches {needed}");
    }
}

fn compose() -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&read(&repo().join("docker-compose.yml"))).unwrap()
}

#[test]
fn compose_services_use_official_images_and_files_that_exist() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let official = ["postgres:", "apache/kafka:", "gcr.io/datadoghq/agent:"];
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let image = service["image"].as_str().unwrap_or_default();
        if service.get("build").is_some() {
            assert_eq!(image, "sync-bridge:local", "{name}: the image built here");
        } else {
            assert!(
                official.iter().any(|o| image.starts_with(o)),
                "{name}: {image} is not an official image"
            );
        }
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let volume = volume.as_str().unwrap();
            if let Some(rest) = volume.strip_prefix("./") {
                let source = rest.split(':').next().unwrap();
                assert!(
                    repo().join(source).exists(),
                    "{name}: {source} does not exist in the repository"
                );
            }
        }
        if let Some(build) = service.get("build") {
            assert_eq!(build.as_str(), Some("."));
            assert!(repo().join("Dockerfile").exists());
        }
    }
}

/// The `postgres` image asks for a password over TCP: every database
/// connection of capture and apply gets the password of the database
/// service its URL names.
#[test]
fn compose_gives_every_database_connection_its_servers_password() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let password_of = |host: &str| -> String {
        compose["services"][host]["environment"]["POSTGRES_PASSWORD"]
            .as_str()
            .unwrap_or_else(|| panic!("{host}: POSTGRES_PASSWORD"))
            .to_owned()
    };
    let host_of = |url: &str| -> String {
        url.split_once('@')
            .and_then(|(_, rest)| rest.split_once(':'))
            .map(|(host, _)| host.to_owned())
            .unwrap_or_else(|| panic!("a host in {url}"))
    };
    let mut connections = 0;
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let config = service["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .find(|v| v.starts_with("./deploy/config/"));
        let Some(config) = config else { continue };
        let file = config.split(':').next().unwrap();
        let toml: toml::Value = toml::from_str(&read(&repo().join(&file[2..]))).unwrap();
        for section in ["source", "legacy", "platform"] {
            let Some(url) = toml
                .get(section)
                .and_then(|s| s.get("url"))
                .and_then(|u| u.as_str())
            else {
                continue;
            };
            let variable = format!("SYNC_BRIDGE_{}__PASSWORD", section.to_uppercase());
            let given = service["environment"][variable.as_str()].as_str();
            assert_eq!(
                given,
                Some(password_of(&host_of(url)).as_str()),
                "{name}: {variable} for {url}"
            );
            connections += 1;
        }
    }
    assert_eq!(connections, 4, "two captures and apply's two databases");
}

#[test]
fn compose_capture_and_apply_run_the_deploy_config_files() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let mut seen = 0;
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let command: Vec<&str> = service["command"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
            .collect();
        let Some(binary @ ("capture" | "apply")) = command.first().copied() else {
            continue;
        };
        seen += 1;
        let config = command[command.iter().position(|c| *c == "--config").unwrap() + 1];
        let file = service["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .find_map(|v| {
                let mut parts = v.split(':');
                let (source, target) = (parts.next()?, parts.next()?);
                (target == config).then(|| source.to_owned())
            })
            .unwrap_or_else(|| panic!("{name}: {config} is not mounted"));
        assert!(
            file.starts_with("./deploy/config/"),
            "{name}: uses {file}, not a deploy/config file"
        );
        let text = read(&repo().join(&file[2..]));
        match binary {
            "capture" => {
                let parsed = capture::Config::from_toml(&text).unwrap();
                assert_eq!(format!("capture-{}", parsed.source.name), name);
            }
            _ => {
                apply::Config::from_toml(&text).unwrap();
            }
        }
        let labels = &service["labels"];
        let checks = labels["com.datadoghq.ad.checks"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: datadog autodiscovery label"));
        assert!(check_openmetrics(name, checks) >= 5);
    }
    assert_eq!(seen, 3, "capture-legacy, capture-platform, apply");

    let agent = &compose["services"]["datadog-agent"];
    assert_eq!(
        agent["profiles"].as_sequence().map(|p| p.len()),
        Some(1),
        "the agent only runs with its profile"
    );
    assert_eq!(agent["profiles"][0].as_str(), Some("datadog"));
    let api_key = agent["environment"]["DD_API_KEY"].as_str().unwrap();
    assert!(
        api_key.starts_with("${DD_API_KEY"),
        "the API key comes from the environment, got {api_key}"
    );
}

/// A docker compose client, if this machine has one.
fn compose_client() -> Option<Vec<&'static str>> {
    let works = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works("docker", &["compose", "version"]) {
        Some(vec!["docker", "compose"])
    } else if works("docker-compose", &["version"]) {
        Some(vec!["docker-compose"])
    } else {
        None
    }
}

#[test]
fn docker_compose_config_accepts_the_file() {
    let Some(client) = compose_client() else {
        println!("skipped: no docker compose client (neither `docker compose` nor `docker-compose`) on this machine");
        return;
    };
    for profile in [None, Some("datadog")] {
        let mut command = std::process::Command::new(client[0]);
        command.args(&client[1..]);
        if let Some(profile) = profile {
            command.args(["--profile", profile]);
        }
        let output = command
            .args(["-f", "docker-compose.yml", "config", "-q"])
            .current_dir(repo())
            .env_remove("DD_API_KEY")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{} config (profile {profile:?}) failed: {}",
            client.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_datadog_assets_know_exactly_the_metrics_the_services_export() {
    let exported: BTreeSet<&str> = sync_bridge_tests::metrics::all().into_iter().collect();
    let here: BTreeSet<&str> = AGREED_METRICS.iter().map(|(name, _)| *name).collect();
    assert_eq!(here, exported);
}
