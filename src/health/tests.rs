use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::service::OnAddress;
use super::*;
use crate::model::ServiceName;
use crate::sync::{Runner, RunnerConfig};

/// GET `path` on 127.0.0.1:`port`; returns (status, headers+body text).
async fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, buf)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A trigger whose requests are never synced (every sync fails).
fn stuck_trigger() -> (Trigger, tokio::task::JoinHandle<()>) {
    let runner = Runner::new(RunnerConfig::try_new(Duration::from_millis(10), Duration::from_secs(60)).expect("cfg"));
    let trigger = runner.trigger();
    let task = tokio::spawn(runner.run(|_| async { false }));
    (trigger, task)
}

#[tokio::test(start_paused = true)]
async fn unhealthy_when_an_update_waits_longer_than_the_timeout() {
    let (_tx, status) = watch::channel(SyncStatus::default());
    let (trigger, task) = stuck_trigger();
    let health = ProxyHealth::new(status, trigger.clone(), Duration::from_secs(60));
    assert!(health.check(Instant::now()).healthy, "nothing queued");
    trigger.request();
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(health.check(Instant::now()).healthy, "queued, within the timeout");
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(!health.check(Instant::now()).healthy, "stuck past the timeout");
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_successful_sync_clears_the_queued_update() {
    let (_tx, status) = watch::channel(SyncStatus::default());
    let runner = Runner::new(RunnerConfig::try_new(Duration::from_millis(10), Duration::from_secs(60)).expect("cfg"));
    let trigger = runner.trigger();
    let task = tokio::spawn(runner.run(|_| async { true }));
    let health = ProxyHealth::new(status, trigger.clone(), Duration::from_secs(1));
    trigger.request();
    tokio::time::advance(Duration::from_millis(100)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(health.check(Instant::now()).healthy);
    assert_eq!(trigger.queued_since(), None);
    task.abort();
}

#[tokio::test]
async fn healthz_reports_node_draining_but_livez_does_not() {
    let (tx, status) = watch::channel(SyncStatus::default());
    let health = ProxyHealth::new(status, Trigger::default(), Duration::from_secs(60));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let metrics = Metrics::new(crate::config::ProxyMode::Iptables);
    let server = tokio::spawn(serve_proxy_health(listener, health, Some(metrics.clone())));
    let (code, body) = get(port, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"nodeEligible\": true"), "{body}");
    tx.send_modify(|s| s.node_draining = true);
    assert_eq!(get(port, "/healthz").await.0, 503);
    assert_eq!(get(port, "/livez").await.0, 200);
    assert_eq!(get(port, "/nope").await.0, 404);
    let text = metrics.encode();
    assert!(text.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 1"), "{text}");
    assert!(text.contains("kubeproxy_proxy_livez_total{code=\"200\"} 1"), "{text}");
    server.abort();
}

#[tokio::test]
async fn health_check_port_follows_local_endpoints() {
    let (_tx, status) = watch::channel(SyncStatus::default());
    let health = ProxyHealth::new(status, Trigger::default(), Duration::from_secs(60));
    let mut server = ServiceHealthServer::new(Arc::new(OnAddress("127.0.0.1".parse().expect("ip"))), health);
    let port = free_port();
    let svc = ServiceName::new("ingress", "web");
    let want = |n| {
        vec![HealthCheckPort {
            port,
            service: svc.clone(),
            local_endpoints: n,
        }]
    };
    assert!(!server.sync(&want(2)));
    let (code, body) = get(port, "/").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"localEndpoints\": 2"), "{body}");
    assert!(body.contains("\"namespace\": \"ingress\""), "{body}");
    assert!(
        body.to_lowercase().contains("x-load-balancing-endpoint-weight: 2"),
        "{body}"
    );

    server.sync(&want(0));
    let (code, body) = get(port, "/").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"localEndpoints\": 0"));

    server.sync(&[]);
    assert!(server.open_ports().is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "closed when the service goes"
    );
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_is_reported_not_fatal() {
    let (_tx, status) = watch::channel(SyncStatus::default());
    let health = ProxyHealth::new(status, Trigger::default(), Duration::from_secs(60));
    let mut server = ServiceHealthServer::new(Arc::new(OnAddress("127.0.0.1".parse().expect("ip"))), health);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let free = free_port();
    let ports = vec![
        HealthCheckPort {
            port,
            service: ServiceName::new("a", "busy"),
            local_endpoints: 1,
        },
        HealthCheckPort {
            port: free,
            service: ServiceName::new("a", "ok"),
            local_endpoints: 1,
        },
    ];
    assert!(server.sync(&ports), "the busy port is reported missing");
    assert_eq!(server.open_ports(), vec![free], "the other one still serves");
    drop(taken);
    assert!(!server.sync(&ports), "retried and bound once free");
}
