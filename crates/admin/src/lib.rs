//! pgherd's admin HTTP port: what operators and their tools look at.
//!
//! * `/` — the HTML stats page: nodes, pools, recent events;
//! * `/metrics` — Prometheus text format, rendered at scrape time from
//!   snapshots (the data path only updates counters in place and never waits
//!   for a scrape);
//! * `/health`, `/ready`, `/primary`, `/replica` — health checks in the
//!   pgsqlchk / Patroni convention (200 or 503 with a one-line text body), for
//!   keepalived scripts, Kubernetes probes and external load balancers;
//! * `/api/v1/nodes`, `/api/v1/pools`, `/api/v1/events` — JSON for scripts
//!   and dashboards.
//!
//! Everything here only reads [`ProxyHandle`] snapshots; nothing reaches into
//! sessions.
#![forbid(unsafe_code)]

mod api;
mod events;
mod health;
mod metrics;
mod page;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pgherd_proxy::ProxyHandle;
use tokio::net::TcpListener;

/// The admin listener, bound.
#[derive(Debug)]
pub struct Admin {
    listener: TcpListener,
    proxy: ProxyHandle,
    events: events::EventLog,
}

impl Admin {
    pub async fn bind(addr: SocketAddr, proxy: ProxyHandle) -> std::io::Result<Admin> {
        let events = events::EventLog::record(proxy.cluster());
        Ok(Admin {
            listener: TcpListener::bind(addr).await?,
            proxy,
            events,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves requests until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("admin accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            let proxy = self.proxy.clone();
            let events = self.events.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let response = route(&proxy, &events, &req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

/// A response with a body and content type.
pub(crate) fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn route<B>(
    proxy: &ProxyHandle,
    events: &events::EventLog,
    req: &Request<B>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD\n".into(),
        );
    }
    let query = req.uri().query().unwrap_or("");
    match req.uri().path() {
        "/" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page::render(proxy, events),
        ),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics::render(proxy),
        ),
        "/health" | "/ready" | "/primary" | "/replica" => {
            let (status, body) = health::check(req.uri().path(), query, &proxy.topology());
            reply(status, "text/plain", body + "\n")
        }
        "/api/v1/nodes" => reply(StatusCode::OK, "application/json", api::nodes(proxy)),
        "/api/v1/pools" => reply(StatusCode::OK, "application/json", api::pools(proxy)),
        "/api/v1/events" => reply(StatusCode::OK, "application/json", api::events(events)),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /, /metrics, /health, /ready, /primary, /replica, /api/v1/nodes, /api/v1/pools, /api/v1/events\n"
                .into(),
        ),
    }
}
