//! The deployment manifests in `manifests/` (not `manifests/examples/`),
//! validated offline:
//!
//! - every YAML document against the JSON Schema of its kind, generated from
//!   k8s-openapi's types (its `schemars` feature), made strict: every object
//!   schema gets `additionalProperties: false`, so a misspelt field fails;
//! - every document also survives a round trip through its k8s-openapi type
//!   unchanged (a field the type does not know would be dropped);
//! - what kproxy itself needs: the ConfigMap's KubeProxyConfiguration is one
//!   kproxy accepts with the DaemonSet's flags, the probes hit the health
//!   server's port and paths, the ClusterRole grants no more than kproxy
//!   uses, and kustomization.yaml lists every manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::schemars::JsonSchema;
use k8s_openapi::schemars::generate::SchemaSettings;
use kproxy::config::{Cli, Config, KubeProxyConfiguration, ProxyMode};
use serde::Serialize;
use serde::de::{Deserialize, DeserializeOwned};
use serde_json::{Value, json};

/// The port and paths of kproxy's health server (`--healthz-bind-address`).
const HEALTHZ_PORT: u16 = 10256;
/// The ConfigMap key the DaemonSet's `--config` points at.
const CONFIG_KEY: &str = "config.conf";

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

// === Loading ===

/// One YAML document of one manifest file.
#[derive(Clone, Debug)]
struct Doc {
    /// `file.yaml#index`, for messages.
    origin: String,
    value: Value,
}

/// Every non-empty YAML document in `text`, as JSON values.
fn parse_docs(text: &str, file: &str) -> Vec<Doc> {
    let mut out = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de).unwrap_or_else(|e| panic!("{file}: document {i} is not valid YAML: {e}"));
        if !value.is_null() {
            out.push(Doc {
                origin: format!("{file}#{i}"),
                value,
            });
        }
    }
    out
}

/// The deployment manifests: every `*.yaml` directly in manifests/ except
/// kustomization.yaml (examples/ is a directory and is skipped).
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .expect("read manifests/")
        .map(|e| e.expect("read manifests/ entry").path())
        .filter(|p| p.is_file())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests found in {}", manifests_dir().display());
    files
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn all_docs() -> Vec<Doc> {
    manifest_files()
        .iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            parse_docs(&text, &file_name(p))
        })
        .collect()
}

/// The one document of this kind; panics if there is not exactly one.
fn the_doc(kind: &str) -> Value {
    let found: Vec<Doc> = all_docs()
        .into_iter()
        .filter(|d| d.value.get("kind").and_then(Value::as_str) == Some(kind))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "want exactly one {kind} in manifests/, found {}",
        found.len()
    );
    found.into_iter().map(|d| d.value).next().unwrap_or_default()
}

// === Schemas ===

/// How one kind is checked: its strict JSON Schema and its round trip.
struct Kind {
    api_version: &'static str,
    kind: &'static str,
    schema: fn() -> Value,
    round_trip: fn(&Value) -> Result<Value, String>,
}

fn kind_of<K>() -> Kind
where
    K: k8s_openapi::Resource + JsonSchema + DeserializeOwned + Serialize,
{
    Kind {
        api_version: K::API_VERSION,
        kind: K::KIND,
        schema: strict_schema::<K>,
        round_trip: round_trip::<K>,
    }
}

/// The kinds the manifests may contain.
fn kinds() -> Vec<Kind> {
    vec![
        kind_of::<ServiceAccount>(),
        kind_of::<ClusterRole>(),
        kind_of::<ClusterRoleBinding>(),
        kind_of::<ConfigMap>(),
        kind_of::<DaemonSet>(),
    ]
}

/// K's JSON Schema (draft 2020-12), made strict.
fn strict_schema<K: JsonSchema>() -> Value {
    let mut schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<K>()
        .to_value();
    make_strict(&mut schema);
    schema
}

/// Forbids unknown fields in every object schema that lists its properties
/// (k8s-openapi's schemas allow them, as the OpenAPI documents do), and
/// spells out Kubernetes' `x-kubernetes-int-or-string` (IntOrString,
/// Quantity) as a JSON Schema type.
fn make_strict(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if obj.contains_key("properties") && !obj.contains_key("additionalProperties") {
        obj.insert("additionalProperties".into(), Value::Bool(false));
    }
    if obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) && !obj.contains_key("type") {
        obj.insert("type".into(), json!(["number", "string"]));
    }
    for key in ["properties", "$defs", "definitions", "patternProperties"] {
        if let Some(Value::Object(map)) = obj.get_mut(key) {
            map.values_mut().for_each(make_strict);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = obj.get_mut(key) {
            make_strict(sub);
        }
    }
    for key in ["allOf", "anyOf", "oneOf", "prefixItems"] {
        if let Some(Value::Array(list)) = obj.get_mut(key) {
            list.iter_mut().for_each(make_strict);
        }
    }
}

/// Deserializes into K and serializes back.
fn round_trip<K: DeserializeOwned + Serialize>(value: &Value) -> Result<Value, String> {
    let typed: K = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// `value` without null object members (k8s-openapi omits unset fields).
fn drop_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), drop_nulls(v)))
                .collect(),
        ),
        Value::Array(list) => Value::Array(list.iter().map(drop_nulls).collect()),
        other => other.clone(),
    }
}

/// Where `after` differs from `before`, as JSON pointers.
fn differences(before: &Value, after: &Value, path: &str, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}/{k}");
                match b.get(k) {
                    Some(w) => differences(v, w, &p, out),
                    None => out.push(format!("{p}: unknown field (dropped by the typed round trip)")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}/{k}: appeared in the round trip"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                differences(v, w, &format!("{path}/{i}"), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} became {b} in the round trip")),
    }
}

/// Every problem with one document; empty when it is valid.
fn validate(doc: &Value, kinds: &[Kind]) -> Vec<String> {
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let Some(k) = kinds.iter().find(|k| k.api_version == api_version && k.kind == kind) else {
        return vec![format!(
            "no schema for apiVersion {api_version:?} kind {kind:?} (known: {})",
            kinds
                .iter()
                .map(|k| format!("{}/{}", k.api_version, k.kind))
                .collect::<Vec<_>>()
                .join(", ")
        )];
    };
    let schema = (k.schema)();
    let validator = jsonschema::validator_for(&schema).expect("k8s-openapi's schema compiles");
    let mut problems: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    match (k.round_trip)(doc) {
        Ok(after) => differences(&drop_nulls(doc), &drop_nulls(&after), "", &mut problems),
        Err(e) => problems.push(format!("does not deserialize as {kind}: {e}")),
    }
    problems
}

// === Tests: schemas ===

#[test]
fn every_manifest_validates_against_the_kubernetes_schema_of_its_kind() {
    let kinds = kinds();
    let docs = all_docs();
    let mut problems = Vec::new();
    for doc in &docs {
        for p in validate(&doc.value, &kinds) {
            problems.push(format!("{}: {p}", doc.origin));
        }
    }
    assert!(problems.is_empty(), "invalid manifests:\n{}", problems.join("\n"));
    let seen: BTreeSet<&str> = docs
        .iter()
        .filter_map(|d| d.value.get("kind").and_then(Value::as_str))
        .collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
    ] {
        assert!(seen.contains(kind), "no {kind} in manifests/");
    }
}

#[test]
fn a_misspelt_field_is_caught() {
    let kinds = kinds();
    let good = the_doc("DaemonSet");
    assert_eq!(validate(&good, &kinds), Vec::<String>::new());

    // hostNetwork → hostNetwrok in the pod spec.
    let mut bad = good.clone();
    let spec = bad
        .pointer_mut("/spec/template/spec")
        .and_then(Value::as_object_mut)
        .expect("pod spec");
    let v = spec.remove("hostNetwork").expect("hostNetwork is set");
    spec.insert("hostNetwrok".into(), v);
    let problems = validate(&bad, &kinds);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("hostNetwrok") && p.contains("/spec/template/spec")),
        "schema check missed the misspelling: {problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("unknown field") && p.contains("hostNetwrok")),
        "round trip missed the misspelling: {problems:?}"
    );

    // A misspelt field deep inside (the container's securityContext).
    let mut bad = good.clone();
    let sc = bad
        .pointer_mut("/spec/template/spec/containers/0/securityContext")
        .and_then(Value::as_object_mut)
        .expect("securityContext");
    sc.insert("privilged".into(), Value::Bool(false));
    let problems = validate(&bad, &kinds);
    assert!(problems.iter().any(|p| p.contains("privilged")), "{problems:?}");

    // A wrong type and a missing required field.
    let mut bad = good.clone();
    *bad.pointer_mut("/spec/template/spec/hostNetwork").expect("hostNetwork") = json!("yes");
    assert!(!validate(&bad, &kinds).is_empty(), "a string hostNetwork was accepted");
    let mut bad = good;
    if let Some(c) = bad
        .pointer_mut("/spec/template/spec/containers/0")
        .and_then(Value::as_object_mut)
    {
        c.remove("name");
    }
    assert!(
        !validate(&bad, &kinds).is_empty(),
        "a container without a name was accepted"
    );

    // An unknown kind is not waved through.
    let problems = validate(&json!({"apiVersion": "v1", "kind": "Sevrice"}), &kinds);
    assert!(problems.iter().any(|p| p.contains("no schema")), "{problems:?}");
}

// === Tests: kustomization ===

#[test]
fn kustomization_lists_every_manifest() {
    let path = manifests_dir().join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).expect("read manifests/kustomization.yaml");
    let docs = parse_docs(&text, "kustomization.yaml");
    assert_eq!(docs.len(), 1, "kustomization.yaml holds one document");
    let k = &docs[0].value;
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    let known = ["apiVersion", "kind", "resources", "namespace", "labels", "images"];
    for key in k.as_object().expect("a mapping").keys() {
        assert!(known.contains(&key.as_str()), "unexpected kustomization field {key:?}");
    }
    let listed: Vec<&str> = k["resources"]
        .as_array()
        .expect("resources is a list")
        .iter()
        .map(|r| r.as_str().expect("resource is a string"))
        .collect();
    let listed_set: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(listed.len(), listed_set.len(), "a resource is listed twice: {listed:?}");
    let files: BTreeSet<String> = manifest_files().iter().map(|p| file_name(p)).collect();
    let files: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    assert_eq!(
        listed_set, files,
        "kustomization.yaml resources must be exactly the manifests in manifests/"
    );
    assert!(
        !listed.iter().any(|r| r.contains("examples")),
        "examples are not part of the deployment"
    );
}

// === Tests: what kproxy needs ===

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer}"))
}

fn container(ds: &Value) -> &Value {
    let containers = ds
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The container's command line, `$(NODE_NAME)` expanded as the kubelet would.
fn command_line(ds: &Value, node: &str) -> Vec<String> {
    let c = container(ds);
    ["command", "args"]
        .iter()
        .filter_map(|k| c.get(*k).and_then(Value::as_array))
        .flatten()
        .map(|a| a.as_str().expect("a string argument").replace("$(NODE_NAME)", node))
        .collect()
}

/// The Config kproxy builds in the pod: the DaemonSet's flags over the ConfigMap's file.
fn config_in_pod() -> (Config, Vec<String>) {
    let ds = the_doc("DaemonSet");
    let cm = the_doc("ConfigMap");
    let argv = command_line(&ds, "worker-1");
    assert_eq!(argv.first().map(String::as_str), Some("/usr/local/bin/kproxy"));
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("kproxy refuses {argv:?}: {e}"));
    assert!(cli.command.is_none(), "the DaemonSet runs the proxy, not a subcommand");

    // --config names a key of the ConfigMap mounted at its directory.
    let config_path = cli.flags.config.clone().expect("--config is given");
    let dir = config_path.parent().expect("config dir").to_string_lossy().into_owned();
    let key = config_path
        .file_name()
        .expect("config file")
        .to_string_lossy()
        .into_owned();
    assert_eq!(key, CONFIG_KEY);
    let cm_name = str_at(&cm, "/metadata/name");
    let volume = ds
        .pointer("/spec/template/spec/volumes")
        .and_then(Value::as_array)
        .expect("volumes")
        .iter()
        .find(|v| v.pointer("/configMap/name").and_then(Value::as_str) == Some(cm_name))
        .expect("the ConfigMap is a volume");
    let mount = container(&ds)["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the ConfigMap volume is mounted");
    assert_eq!(
        mount["mountPath"].as_str(),
        Some(dir.as_str()),
        "--config is not where the ConfigMap is"
    );

    let text = str_at(&cm, &format!("/data/{CONFIG_KEY}"));
    let file = KubeProxyConfiguration::parse(text, "ConfigMap kproxy config.conf")
        .unwrap_or_else(|e| panic!("kproxy refuses the ConfigMap's configuration: {e}"));
    let cfg =
        Config::build(&cli.flags, Some(&file)).unwrap_or_else(|e| panic!("kproxy refuses the configuration: {e}"));
    (cfg, argv)
}

#[test]
fn configmap_holds_a_configuration_kproxy_accepts() {
    let (cfg, argv) = config_in_pod();
    assert_eq!(cfg.mode, ProxyMode::Iptables, "{argv:?}");
    assert_eq!(cfg.hostname_override.as_deref(), Some("worker-1"));
    assert!(!cfg.cluster_cidrs.is_empty(), "clusterCIDR is set");
    assert_eq!(
        cfg.metrics_bind_address,
        "0.0.0.0:10249".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(cfg.healthz_bind_address.port(), HEALTHZ_PORT);
    assert!(
        cfg.healthz_bind_address.ip().is_unspecified(),
        "the kubelet probes the node IP"
    );
    let cm = the_doc("ConfigMap");
    assert_eq!(
        str_at(&cm, "/metadata/namespace"),
        str_at(&the_doc("DaemonSet"), "/metadata/namespace")
    );
}

#[test]
fn daemonset_runs_kproxy_as_kube_proxy_runs() {
    let ds = the_doc("DaemonSet");
    let pod = ds.pointer("/spec/template/spec").expect("pod spec");
    assert_eq!(str_at(&ds, "/metadata/namespace"), "kube-system");
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert!(
        pod["tolerations"]
            .as_array()
            .expect("tolerations")
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none() && t.get("effect").is_none()),
        "a toleration with operator Exists and no key or effect tolerates every taint"
    );
    assert_eq!(str_at(&ds, "/spec/updateStrategy/type"), "RollingUpdate");
    assert_eq!(
        ds.pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable"),
        Some(&json!(1))
    );

    // Probes: the health server's port and paths.
    let c = container(&ds);
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], json!(HEALTHZ_PORT), "{probe}");
        assert!(
            get.get("host").is_none(),
            "{probe}: the kubelet probes the pod (node) IP"
        );
    }
    let (cfg, _) = config_in_pod();
    assert_eq!(cfg.healthz_bind_address.port(), HEALTHZ_PORT);

    // Prometheus annotations point at the metrics port.
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], cfg.metrics_bind_address.port().to_string());

    // NODE_NAME from the downward API.
    let env = c["env"].as_array().expect("env");
    let node = env.iter().find(|e| e["name"] == "NODE_NAME").expect("NODE_NAME");
    assert_eq!(
        node.pointer("/valueFrom/fieldRef/fieldPath"),
        Some(&json!("spec.nodeName"))
    );

    // Capabilities, not privileged.
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    let caps: BTreeSet<&str> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(caps, BTreeSet::from(["NET_ADMIN", "NET_RAW", "SYS_MODULE"]));

    // Host mounts.
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| (v["name"].as_str().expect("volume name"), v))
        .collect();
    let mounts: BTreeMap<&str, &Value> = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| (m["mountPath"].as_str().expect("mountPath"), m))
        .collect();
    for (path, host_type, read_only) in [
        ("/run/xtables.lock", Some("FileOrCreate"), false),
        ("/lib/modules", None, true),
    ] {
        let m = mounts.get(path).unwrap_or_else(|| panic!("{path} is not mounted"));
        let v = volumes[m["name"].as_str().expect("mount name")];
        assert_eq!(v.pointer("/hostPath/path").and_then(Value::as_str), Some(path));
        if let Some(t) = host_type {
            assert_eq!(v.pointer("/hostPath/type").and_then(Value::as_str), Some(t), "{path}");
        }
        assert_eq!(
            m.get("readOnly").and_then(Value::as_bool).unwrap_or(false),
            read_only,
            "{path}"
        );
    }

    // Enumerated fields the schema leaves as free strings.
    for hp in volumes.values().filter_map(|v| v.pointer("/hostPath/type")) {
        let t = hp.as_str().expect("hostPath type");
        let ok = [
            "",
            "DirectoryOrCreate",
            "Directory",
            "FileOrCreate",
            "File",
            "Socket",
            "CharDevice",
            "BlockDevice",
        ];
        assert!(ok.contains(&t), "hostPath type {t:?}");
    }
    if let Some(p) = c.get("imagePullPolicy") {
        assert!(
            ["Always", "IfNotPresent", "Never"].contains(&p.as_str().unwrap_or_default()),
            "{p}"
        );
    }
    for port in c["ports"].as_array().into_iter().flatten() {
        assert!(["TCP", "UDP", "SCTP"].contains(&port["protocol"].as_str().unwrap_or("TCP")));
    }
    assert!(c["resources"]["requests"].get("cpu").is_some() && c["resources"]["requests"].get("memory").is_some());

    // The selector selects the template.
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in ds["spec"]["selector"]["matchLabels"].as_object().expect("matchLabels") {
        assert_eq!(&labels[k], v, "selector label {k}");
    }
}

#[test]
fn cluster_role_grants_what_kproxy_uses_and_nothing_more() {
    let role = the_doc("ClusterRole");
    // (apiGroup, resource) → verbs allowed.
    let allowed: BTreeMap<(&str, &str), &[&str]> = BTreeMap::from([
        (("", "services"), &["list", "watch"][..]),
        (("discovery.k8s.io", "endpointslices"), &["list", "watch"][..]),
        (("", "nodes"), &["get", "list", "watch"][..]),
        (("", "events"), &["create", "patch"][..]),
        (("events.k8s.io", "events"), &["create", "patch"][..]),
    ]);
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let strings = |v: &Value, field: &str| -> Vec<String> {
        v[field]
            .as_array()
            .unwrap_or_else(|| panic!("rule {v} has no {field}"))
            .iter()
            .map(|s| s.as_str().expect("a string").to_string())
            .collect()
    };
    for rule in role["rules"].as_array().expect("rules") {
        assert!(rule.get("nonResourceURLs").is_none(), "no non-resource URLs: {rule}");
        assert!(rule.get("resourceNames").is_none(), "unexpected resourceNames: {rule}");
        let (groups, resources, verbs) = (
            strings(rule, "apiGroups"),
            strings(rule, "resources"),
            strings(rule, "verbs"),
        );
        for s in groups.iter().chain(&resources).chain(&verbs) {
            assert!(!s.contains('*'), "wildcard {s:?} in {rule}");
        }
        for g in &groups {
            for r in &resources {
                let ok = allowed
                    .get(&(g.as_str(), r.as_str()))
                    .unwrap_or_else(|| panic!("{r} in group {g:?} is not needed"));
                for v in &verbs {
                    assert!(ok.contains(&v.as_str()), "verb {v} on {g:?}/{r} is not needed");
                }
                granted
                    .entry((g.clone(), r.clone()))
                    .or_default()
                    .extend(verbs.iter().cloned());
            }
        }
    }
    // What the watchers need, at least.
    for (group, resource) in [("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "nodes")] {
        let verbs = granted
            .get(&(group.to_string(), resource.to_string()))
            .unwrap_or_else(|| panic!("{resource} is not granted"));
        assert!(
            verbs.contains("list") && verbs.contains("watch"),
            "{resource}: {verbs:?}"
        );
    }

    // Bound to the DaemonSet's ServiceAccount.
    let binding = the_doc("ClusterRoleBinding");
    let sa = the_doc("ServiceAccount");
    let ds = the_doc("DaemonSet");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let subjects = binding["subjects"].as_array().expect("subjects");
    assert_eq!(subjects.len(), 1, "one subject");
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], sa["metadata"]["name"]);
    assert_eq!(subjects[0]["namespace"], sa["metadata"]["namespace"]);
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );
    assert_eq!(ds["metadata"]["namespace"], sa["metadata"]["namespace"]);
}
