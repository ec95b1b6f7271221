//! Health-check node ports: for every externalTrafficPolicy Local service,
//! an HTTP server on its `healthCheckNodePort` answering kube-proxy's JSON
//! with 200 when this node has ready local endpoints and 503 otherwise, so
//! cloud load balancers send traffic only to nodes that can serve it.
//!
//! Servers open and close as services come and go. A port that cannot be
//! bound is logged and retried on the next update and every few seconds;
//! it is never fatal.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use hyper::header::{HeaderName, HeaderValue};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{ProxyHealth, http};
pub use crate::model::HealthCheckPort;
use crate::model::ServiceName;

/// Binds health-check ports; injected so tests can use loopback.
pub trait PortBinder: Send + Sync + 'static {
    fn bind(&self, port: u16) -> std::io::Result<std::net::TcpListener>;
}

/// Binds on every address (kube-proxy's default), like a NodePort.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllAddresses;

impl PortBinder for AllAddresses {
    fn bind(&self, port: u16) -> std::io::Result<std::net::TcpListener> {
        std::net::TcpListener::bind((IpAddr::from([0u8; 16]), port))
            .or_else(|_| std::net::TcpListener::bind((IpAddr::from([0u8; 4]), port)))
    }
}

/// Binds on one address (tests use 127.0.0.1).
#[derive(Clone, Copy, Debug)]
pub struct OnAddress(pub IpAddr);

impl PortBinder for OnAddress {
    fn bind(&self, port: u16) -> std::io::Result<std::net::TcpListener> {
        std::net::TcpListener::bind((self.0, port))
    }
}

/// Keeps one HTTP server per health-check port.
pub struct ServiceHealthServer {
    binder: Arc<dyn PortBinder>,
    health: ProxyHealth,
    servers: BTreeMap<u16, Server>,
}

struct Server {
    service: ServiceName,
    count: watch::Sender<usize>,
    task: JoinHandle<()>,
}

// === impl ServiceHealthServer ===

impl ServiceHealthServer {
    pub fn new(binder: Arc<dyn PortBinder>, health: ProxyHealth) -> Self {
        Self {
            binder,
            health,
            servers: BTreeMap::new(),
        }
    }

    /// Follows `wanted` until the sender goes away, retrying failed binds.
    pub async fn run(mut self, mut wanted: watch::Receiver<Vec<HealthCheckPort>>) {
        loop {
            let ports = wanted.borrow_and_update().clone();
            let missing = self.sync(&ports);
            let retry = async {
                if missing {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                changed = wanted.changed() => if changed.is_err() { break },
                _ = retry => {}
            }
        }
        self.sync(&[]);
    }

    /// Opens, updates and closes servers; returns whether a port could not be bound.
    pub fn sync(&mut self, ports: &[HealthCheckPort]) -> bool {
        let wanted: BTreeMap<u16, &HealthCheckPort> = ports.iter().map(|p| (p.port, p)).collect();
        let gone: Vec<u16> = self
            .servers
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            if let Some(s) = self.servers.remove(&port) {
                s.task.abort();
                info!(port, service = %s.service, "Closed health check node port");
            }
        }
        let mut missing = false;
        for (port, want) in wanted {
            if let Some(s) = self.servers.get(&port)
                && s.service == want.service
            {
                s.count.send_replace(want.local_endpoints);
                continue;
            }
            if let Some(old) = self.servers.remove(&port) {
                old.task.abort();
            }
            match self.open(want) {
                Ok(server) => {
                    info!(port, service = %want.service, "Opened health check node port");
                    self.servers.insert(port, server);
                }
                Err(e) => {
                    missing = true;
                    warn!(port, service = %want.service, error = %e, "Cannot open health check node port; will retry");
                }
            }
        }
        missing
    }

    /// Ports with a running server.
    pub fn open_ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }

    fn open(&self, want: &HealthCheckPort) -> std::io::Result<Server> {
        let std_listener = self.binder.bind(want.port)?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let (count, rx) = watch::channel(want.local_endpoints);
        let service = want.service.clone();
        let health = self.health.clone();
        let svc = service.clone();
        let handler: http::Handler = Arc::new(move |_path: &str| respond(&svc, *rx.borrow(), &health));
        let task = tokio::spawn(http::serve(listener, handler));
        Ok(Server { service, count, task })
    }
}

impl Drop for ServiceHealthServer {
    fn drop(&mut self) {
        for s in self.servers.values() {
            s.task.abort();
        }
    }
}

/// kube-proxy's health-check response.
fn respond(service: &ServiceName, count: usize, health: &ProxyHealth) -> http::HttpResponse {
    let v = health.check(Instant::now());
    let proxy_healthy = v.healthy && v.node_eligible;
    let code = if count > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {:?},\n\t\t\"name\": {:?}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        service.namespace, service.name
    );
    let mut resp = http::response(code, "application/json", body);
    if let Ok(v) = HeaderValue::from_str(&count.to_string()) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-load-balancing-endpoint-weight"), v);
    }
    resp
}
