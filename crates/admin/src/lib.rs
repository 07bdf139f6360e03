//! pgherd's admin HTTP port: what operators and their tools look at.
//!
//! * `/` — the HTML stats page: nodes, pools, recent events, notifications;
//! * `/metrics` — Prometheus text format, rendered at scrape time from
//!   snapshots (the data path only updates counters in place and never waits
//!   for a scrape);
//! * `/health`, `/ready`, `/primary`, `/replica` — health checks in the
//!   pgsqlchk / Patroni convention (200 or 503 with a one-line text body), for
//!   keepalived scripts, Kubernetes probes and external load balancers;
//! * `/api/v1/nodes`, `/pools`, `/databases`, `/clients`, `/servers`,
//!   `/events`, `/notifications`, `/config` — JSON for scripts and
//!   dashboards (no secrets);
//! * control, `POST` only, an `admin_users` member with HTTP basic auth:
//!   `/api/v1/pause`, `/api/v1/resume` (every database), `/api/v1/reload`,
//!   `/api/v1/reconnect`,
//!   `/api/v1/databases/{db}/pause|resume|disable|enable|kill|reconnect`,
//!   `/api/v1/nodes/{node}/drain|undrain`, `/api/v1/clients/{id}/kill` —
//!   the admin console's commands, through the same [`ProxyHandle`] calls.
//!
//! Reads only take [`ProxyHandle`] snapshots; nothing reaches into sessions.
//!
//! With `admin_tls_key_file` and `admin_tls_cert_file` the port speaks
//! HTTPS only (rustls, the client side's TLS versions), so basic auth's
//! passwords and the client list never cross the network in the clear.
#![forbid(unsafe_code)]

mod api;
mod auth;
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
    /// HTTPS, when configured.
    tls: Option<pgherd_tls::ClientTls>,
    proxy: ProxyHandle,
    sources: Sources,
}

/// How long a client has for the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the admin port shows besides the proxy's own state.
#[derive(Debug, Clone, Default)]
struct Sources {
    events: events::EventLog,
    notifications: pgherd_notify::Notifications,
}

impl Admin {
    pub async fn bind(addr: SocketAddr, proxy: ProxyHandle) -> std::io::Result<Admin> {
        let tls = match proxy.config().general.admin_tls() {
            Some(settings) => Some(pgherd_tls::ClientTls::new(&settings).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("admin TLS: {e}"))
            })?),
            None => None,
        };
        let events = events::EventLog::record(proxy.cluster());
        Ok(Admin {
            tls,
            // With so_reuseport, a new pgherd's admin port starts beside
            // the old one's, as its client ports do.
            listener: {
                let g = &proxy.config().general;
                pgherd_proxy::bind_tcp(addr, g.so_reuseport, g.listen_backlog)?
            },
            proxy,
            sources: Sources {
                events,
                notifications: pgherd_notify::Notifications::default(),
            },
        })
    }

    /// Shows these notification counters on `/metrics`.
    pub fn with_notifications(mut self, notifications: pgherd_notify::Notifications) -> Admin {
        self.sources.notifications = notifications;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// `https` or `http`, for the address pgherd logs.
    pub fn scheme(&self) -> &'static str {
        match self.tls {
            Some(_) => "https",
            None => "http",
        }
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
            let (proxy, sources) = (self.proxy.clone(), self.sources.clone());
            let Some(tls) = self.tls.clone() else {
                tokio::spawn(serve(stream, proxy, sources));
                continue;
            };
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                    Ok(Ok(stream)) => serve(stream, proxy, sources).await,
                    Ok(Err(e)) => tracing::debug!("admin TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!("admin TLS handshake not done in time"),
                }
            });
        }
    }
}

/// Answers the requests of one connection.
async fn serve<S>(stream: S, proxy: ProxyHandle, sources: Sources)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let proxy = proxy.clone();
        let sources = sources.clone();
        async move { Ok::<_, Infallible>(route(&proxy, &sources, &req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
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

async fn route<B>(
    proxy: &ProxyHandle,
    sources: &Sources,
    req: &Request<B>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let need = match (req.method(), path) {
        (_, "/health" | "/ready" | "/primary" | "/replica") => auth::Need::Nothing,
        (&Method::POST, _) => auth::Need::Control,
        (
            &Method::GET | &Method::HEAD,
            "/api/v1/clients" | "/api/v1/servers" | "/api/v1/config",
        ) => auth::Need::PrivateRead,
        (&Method::GET | &Method::HEAD, _) => auth::Need::Read,
        _ => {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET or HEAD to read, POST to control\n".into(),
            )
        }
    };
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth::check(&proxy.config(), need, authorization) {
        auth::Verdict::Allowed => {}
        auth::Verdict::Unauthenticated => {
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "authentication required (an admin_users member for control)\n".into(),
            );
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Basic realm=\"pgherd\""),
            );
            return r;
        }
        auth::Verdict::Forbidden => {
            return reply(
                StatusCode::FORBIDDEN,
                "text/plain",
                "this user may not do that (see admin_users, stats_users)\n".into(),
            )
        }
    }
    if need == auth::Need::Control {
        return api::control(proxy, path).await;
    }
    let query = req.uri().query().unwrap_or("");
    let json = |body: String| reply(StatusCode::OK, "application/json", body);
    match path {
        "/" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            page::render(proxy, &sources.events, &sources.notifications),
        ),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics::render(proxy, &sources.notifications),
        ),
        "/health" | "/ready" | "/primary" | "/replica" => {
            let (status, body) = health::check(path, query, &proxy.topology(), proxy.is_draining());
            reply(status, "text/plain", body + "\n")
        }
        "/api/v1/nodes" => json(api::nodes(proxy)),
        "/api/v1/pools" => json(api::pools(proxy)),
        "/api/v1/databases" => json(api::databases(proxy)),
        "/api/v1/clients" => json(api::clients(proxy)),
        "/api/v1/servers" => json(api::servers(proxy)),
        "/api/v1/config" => json(api::config(proxy)),
        "/api/v1/events" => json(api::events(&sources.events)),
        "/api/v1/notifications" => json(api::notifications(&sources.notifications)),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /, /metrics, /health, /ready, /primary, /replica, \
             /api/v1/nodes, /api/v1/pools, /api/v1/databases, /api/v1/clients, \
             /api/v1/servers, /api/v1/events, /api/v1/notifications, /api/v1/config\n"
                .into(),
        ),
    }
}
