//! A minimal HTTP/1 server for `/metrics`, `/healthz`, `/livez` and the
//! health-check node ports. Listeners are bound by the caller (so tests can
//! pass 127.0.0.1:0) and handed in.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

/// What a handler returns.
pub type HttpResponse = Response<Full<Bytes>>;

/// A request handler: only the path matters to every endpoint kproxy serves.
pub type Handler = Arc<dyn Fn(&str) -> HttpResponse + Send + Sync>;

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, handler: Handler) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                debug!(error = %e, "Accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = handler(req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await {
                debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

/// A response with a body and content type.
pub fn response(status: StatusCode, content_type: &str, body: String) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    resp
}

/// 404 for unknown paths.
pub fn not_found() -> HttpResponse {
    response(StatusCode::NOT_FOUND, "text/plain", "404 page not found\n".into())
}
