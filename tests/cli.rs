//! The `kproxy` binary as a user runs it: `--help`, refusing bad input with
//! one line and exit code 2, and `kproxy render` from manifests and from a
//! (fake) API server. Every run of the binary is bounded by a timeout.

#![allow(clippy::disallowed_types)] // tests run the binary

#[path = "support/api_server.rs"]
mod api_server;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api_server::TestApiServer;
use kproxy::model::builders::{mk_node, mk_service, mk_slice};

const BIN: &str = env!("CARGO_BIN_EXE_kproxy");
/// Bound for a command that needs no network.
const QUICK: Duration = Duration::from_secs(10);
/// Bound for a command that talks to the (fake) API server.
const SLOW: Duration = Duration::from_secs(20);

/// What one run of the binary produced.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The non-empty lines of stderr.
    fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| !l.trim().is_empty()).collect()
    }
}

/// Runs `kproxy args` from the crate root, killing it after `timeout`.
fn kproxy(args: &[&str], timeout: Duration) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kproxy");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("wait for kproxy") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let err = stderr.join().unwrap_or_default();
                panic!("kproxy {args:?} did not exit within {timeout:?}; stderr:\n{err}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Run {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "kproxy-cli-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Asserts `kproxy args` exits 2 with exactly one stderr line containing
/// every one of `needles`.
fn assert_refused(args: &[&str], needles: &[&str]) {
    let run = kproxy(args, QUICK);
    assert_eq!(run.code(), Some(2), "kproxy {args:?}: {run:#?}");
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "kproxy {args:?} must say one line: {:#?}", run.stderr);
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "kproxy {args:?}: {:?} does not name {needle:?}",
            lines[0]
        );
    }
    assert!(
        run.stdout.is_empty(),
        "kproxy {args:?} printed on stdout: {:?}",
        run.stdout
    );
}

/// The blocks of `render --format table`: service port name → block text.
fn table_blocks(stdout: &str) -> Vec<(String, String)> {
    stdout
        .split("\n\n")
        .filter_map(|block| {
            let header = block.lines().find(|l| !l.is_empty() && !l.starts_with('#'))?;
            if header.starts_with(' ') {
                return None;
            }
            let name = header.split_whitespace().next()?.to_string();
            Some((name, block.to_string()))
        })
        .collect()
}

// === --help ===

#[test]
fn help_lists_every_flag() {
    let run = kproxy(&["--help"], QUICK);
    assert_eq!(run.code(), Some(0), "{run:#?}");
    for flag in [
        "--proxy-mode",
        "--kubeconfig",
        "--master",
        "--hostname-override",
        "--cluster-cidr",
        "--nodeport-addresses",
        "--masquerade-all",
        "--sync-period",
        "--min-sync-period",
        "--metrics-bind-address",
        "--healthz-bind-address",
        "--udp-timeout",
        "--cleanup",
        "-v, --v",
        "--config",
    ] {
        assert!(
            run.stdout.contains(flag),
            "--help does not list {flag}:\n{}",
            run.stdout
        );
    }
    assert!(
        run.stdout.contains("render"),
        "--help does not list render:\n{}",
        run.stdout
    );

    let run = kproxy(&["render", "--help"], QUICK);
    assert_eq!(run.code(), Some(0), "{run:#?}");
    for flag in ["--manifests", "--format", "--kubeconfig", "--hostname-override"] {
        assert!(
            run.stdout.contains(flag),
            "render --help does not list {flag}:\n{}",
            run.stdout
        );
    }
}

// === Bad input ===

#[test]
fn bad_flag_values_exit_2_with_one_line_naming_the_problem() {
    assert_refused(&["--proxy-mode", "bogus"], &["--proxy-mode", "bogus"]);
    assert_refused(&["--proxy-mode=kernelspace"], &["--proxy-mode", "kernelspace"]);
    assert_refused(&["--cluster-cidr", "10.0.0.0/33"], &["--cluster-cidr", "10.0.0.0/33"]);
    assert_refused(&["--cluster-cidr", "10.0.0.0/8,nope"], &["--cluster-cidr", "nope"]);
    assert_refused(&["--nodeport-addresses", "bogus"], &["--nodeport-addresses", "bogus"]);
    assert_refused(&["--sync-period=-5s"], &["--sync-period", "-5s", "negative"]);
    // kube-proxy's flag parser takes "-1s" as the value; so does kproxy.
    assert_refused(&["--min-sync-period", "-1s"], &["--min-sync-period", "-1s", "negative"]);
    assert_refused(&["--sync-period", "soon"], &["--sync-period", "soon"]);
    assert_refused(
        &["--metrics-bind-address", "nowhere"],
        &["--metrics-bind-address", "nowhere"],
    );
    // The same checks guard `render`.
    assert_refused(
        &["render", "--manifests", "manifests/examples", "--proxy-mode", "bogus"],
        &["--proxy-mode", "bogus"],
    );
}

#[test]
fn unknown_flags_exit_2_with_one_line_naming_the_flag() {
    assert_refused(&["--bogus-flag"], &["--bogus-flag"]);
    assert_refused(&["--proxy-mod", "iptables"], &["--proxy-mod"]);
    assert_refused(&["render", "--no-such-flag"], &["--no-such-flag"]);
    assert_refused(&["--v", "loud"], &["--v", "loud"]);
}

#[test]
fn bad_config_files_exit_2_with_one_line_naming_the_problem() {
    let dir = TempDir::new("config");
    let unknown = dir.write(
        "unknown-field.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: iptables\nbogusField: 1\n",
    );
    let unknown = unknown.to_str().expect("utf-8 temp path");
    assert_refused(&["--config", unknown], &["bogusField", unknown]);

    let nested = dir.write(
        "nested-unknown.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\niptables:\n  syncPeriodd: 5s\n",
    );
    assert_refused(&["--config", nested.to_str().expect("utf-8")], &["syncPeriodd"]);

    let bad_value = dir.write(
        "bad-cidr.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.0.0.0/99\n",
    );
    assert_refused(
        &["--config", bad_value.to_str().expect("utf-8")],
        &["clusterCIDR", "10.0.0.0/99"],
    );

    let missing = dir.path().join("does-not-exist.yaml");
    let missing = missing.to_str().expect("utf-8 temp path");
    assert_refused(&["--config", missing], &[missing]);
    // A directory cannot be read as a file either.
    let as_dir = dir.path().to_str().expect("utf-8 temp path");
    assert_refused(&["--config", as_dir], &[as_dir]);
}

// === render ===

#[test]
fn render_manifests_table_lists_every_proxied_service_port() {
    let run = kproxy(
        &["render", "--manifests", "manifests/examples", "--format", "table"],
        QUICK,
    );
    assert_eq!(run.code(), Some(0), "{run:#?}");
    let blocks = table_blocks(&run.stdout);
    let names: BTreeSet<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    // Name → an endpoint each must list (legacy has none).
    let expected = [
        ("default/web:http", Some("10.244.1.5:8080")),
        ("kube-system/kube-dns:dns", Some("10.244.0.2:53")),
        ("kube-system/kube-dns:dns-tcp", Some("10.244.0.3:53")),
        ("kube-system/kube-dns:metrics", Some("10.244.0.2:9153")),
        ("shop/shop:http", Some("10.244.2.20:8080")),
        ("ingress/ingress:https", Some("10.244.1.30:8443")),
        ("shop/cart:http", Some("10.244.1.50:8080")),
        ("default/legacy:http", None),
    ];
    let want: BTreeSet<&str> = expected.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, want, "{}", run.stdout);
    for (name, endpoint) in expected {
        let (_, block) = blocks.iter().find(|(n, _)| n == name).expect("block");
        assert!(block.contains("endpoints:"), "{name} lists no endpoints:\n{block}");
        if let Some(ep) = endpoint {
            assert!(block.contains(ep), "{name} does not list {ep}:\n{block}");
        }
    }
    for never in ["default/db", "shop/payments"] {
        assert!(
            !run.stdout.contains(never),
            "{never} must not be rendered:\n{}",
            run.stdout
        );
    }
}

/// `render --manifests` applies the watch's label selector: a Service (or
/// slice) labelled for another proxy, or headless, is not rendered.
#[test]
fn render_manifests_skips_services_labelled_for_another_proxy() {
    let dir = TempDir::new("labelled");
    dir.write(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: mine, namespace: default}\n\
         spec: {clusterIP: 10.96.7.1, ports: [{name: http, port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: theirs, namespace: default, \
         labels: {service.kubernetes.io/service-proxy-name: other-proxy}}\n\
         spec: {clusterIP: 10.96.7.2, ports: [{name: http, port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: headless-ish, namespace: default, \
         labels: {service.kubernetes.io/headless: \"\"}}\n\
         spec: {clusterIP: 10.96.7.3, ports: [{name: http, port: 80}]}\n",
    );
    let path = dir.path().to_str().expect("utf-8 temp path").to_string();
    let run = kproxy(&["render", "--manifests", &path, "--format", "table"], QUICK);
    assert_eq!(run.code(), Some(0), "{run:#?}");
    let names: Vec<String> = table_blocks(&run.stdout).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["default/mine:http"], "{}", run.stdout);
}

#[test]
fn render_reports_unusable_manifests_in_one_line() {
    let dir = TempDir::new("manifests");
    let missing = dir.path().join("missing");
    let missing = missing.to_str().expect("utf-8 temp path");
    let run = kproxy(&["render", "--manifests", missing, "--format", "table"], QUICK);
    assert_ne!(run.code(), Some(0), "{run:#?}");
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "{:#?}", run.stderr);
    assert!(lines[0].contains(missing), "{lines:?}");
    // The OS error is said once (it is not repeated as an error "source").
    assert!(
        lines[0].matches("No such file or directory").count() <= 1,
        "the reason is printed more than once: {lines:?}"
    );

    let bad = dir.write("bad.yaml", "apiVersion: v1\nkind: Service\nmetadata: [not, a, map]\n");
    let bad = bad.to_str().expect("utf-8 temp path");
    let run = kproxy(&["render", "--manifests", bad, "--format", "table"], QUICK);
    assert_ne!(run.code(), Some(0), "{run:#?}");
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "{:#?}", run.stderr);
    assert!(lines[0].contains(bad), "{lines:?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
}

#[test]
fn render_reads_services_from_the_api_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let server = rt.block_on(TestApiServer::start()).expect("start fake API server");
    server.apply_service(
        mk_service("default", "web")
            .cluster_ip("10.96.0.10")
            .port("http", 80, "TCP")
            .build(),
    );
    server.apply_slice(
        mk_slice("default", "web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint_on("10.0.0.1", "node-a")
            .endpoint_on("10.0.0.2", "node-b")
            .build(),
    );
    server.apply_service(
        mk_service("kube-system", "dns")
            .cluster_ip("10.96.0.53")
            .port("dns", 53, "UDP")
            .build(),
    );
    server.apply_slice(
        mk_slice("kube-system", "dns-1", "dns")
            .port("dns", 53, "UDP")
            .endpoint("10.0.0.53")
            .build(),
    );
    // Ignored: another proxy's service and a headless one.
    server.apply_service(
        mk_service("default", "other-proxy")
            .cluster_ip("10.96.0.20")
            .port("http", 80, "TCP")
            .label("service.kubernetes.io/service-proxy-name", "other")
            .build(),
    );
    server.apply_service(mk_service("default", "db").headless().port("pg", 5432, "TCP").build());
    server.apply_node(mk_node("node-a").zone("zone-a").internal_ip("192.168.0.1").build());
    server.apply_node(mk_node("node-b").zone("zone-b").internal_ip("192.168.0.2").build());

    let dir = TempDir::new("render");
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
    let run = kproxy(
        &[
            "render",
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8 temp path"),
            "--hostname-override",
            "node-a",
            "--format",
            "table",
        ],
        SLOW,
    );
    assert_eq!(run.code(), Some(0), "{run:#?}");
    let blocks = table_blocks(&run.stdout);
    let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["default/web:http", "kube-system/dns:dns"], "{}", run.stdout);
    let web = &blocks[0].1;
    assert!(web.contains("10.0.0.1:8080") && web.contains("10.0.0.2:8080"), "{web}");
    assert!(blocks[1].1.contains("10.0.0.53:53"), "{}", blocks[1].1);
    // Our own Node, found by name.
    assert!(
        run.stdout.contains("node-a") && run.stdout.contains("zone-a") && run.stdout.contains("192.168.0.1"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("zone-b"), "{}", run.stdout);

    // It asked with kube-proxy's label selector.
    let reqs = server.requests();
    let lists: Vec<&String> = reqs
        .iter()
        .filter(|r| {
            r.starts_with("GET /api/v1/services?") || r.starts_with("GET /apis/discovery.k8s.io/v1/endpointslices?")
        })
        .collect();
    assert_eq!(lists.len(), 2, "{reqs:#?}");
    assert!(lists.iter().all(|r| r.contains("labelSelector=")), "{reqs:#?}");
    rt.block_on(server.stop());
}
