//! Patroni's member list and leader, from one of two places:
//!
//! * its REST API, `GET /cluster` on any member (each answers from its
//!   view of the DCS), the default;
//! * its DCS itself when `patroni_etcd_urls` is set: the keys under
//!   `<namespace><scope>/` in etcd (v3, through etcd's JSON gateway): the
//!   `leader` key, whose value is the leader's name, and one `members/<name>`
//!   key per member. This still works while every Patroni agent is down,
//!   and the leader is read from the key Patroni itself takes.
//!
//! Tags are respected: `noloadbalance` gives a member no reads (weight 0,
//! as Patroni's own `/replica?noloadbalance` health check does for
//! haproxy); `nofailover` is Patroni's business alone (pgherd never
//! promotes).

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use pgherd_config::Node;
use pgherd_http::{Endpoint, TlsConnector};
use serde::Deserialize;

use super::Listing;
use crate::event::Role;
use crate::members::{Member, Source};
use crate::topology::Topology;

/// Patroni's REST API port when `patroni_urls` does not say.
const DEFAULT_PORT: u16 = 8008;

/// The most of an answer read: a few hundred bytes per member.
const BODY_LIMIT: usize = 1 << 20;

/// Where Patroni's view is read.
pub(crate) enum Patroni {
    /// `/cluster` on these APIs, or on port 8008 of every member.
    Rest {
        urls: Vec<Endpoint>,
        timeout: Duration,
        /// For https:// URLs.
        tls: Option<TlsConnector>,
    },
    /// The keys under `prefix` (`<namespace><scope>/`) in etcd.
    Etcd {
        urls: Vec<Endpoint>,
        prefix: String,
        timeout: Duration,
        /// For https:// URLs.
        tls: Option<TlsConnector>,
    },
}

impl std::fmt::Debug for Patroni {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, urls) = match self {
            Patroni::Rest { urls, .. } => ("Rest", urls),
            Patroni::Etcd { urls, .. } => ("Etcd", urls),
        };
        let origins: Vec<String> = urls.iter().map(Endpoint::origin).collect();
        f.debug_tuple(what).field(&origins).finish()
    }
}

impl Patroni {
    /// The member list from the first endpoint that answers.
    pub(crate) async fn read(&self, topology: &Topology) -> Result<Listing, String> {
        let (urls, timeout, what) = match self {
            Patroni::Rest { urls, timeout, .. } if urls.is_empty() => {
                let derived = (topology.members())
                    .filter_map(|(_, n)| {
                        let url = format!("http://{}:{DEFAULT_PORT}/cluster", n.node.host);
                        Endpoint::parse(&url).ok()
                    })
                    .collect();
                (
                    std::borrow::Cow::Owned(derived),
                    *timeout,
                    "Patroni REST API",
                )
            }
            Patroni::Rest { urls, timeout, .. } => (
                std::borrow::Cow::Borrowed(urls),
                *timeout,
                "Patroni REST API",
            ),
            Patroni::Etcd { urls, timeout, .. } => {
                (std::borrow::Cow::Borrowed(urls), *timeout, "etcd endpoint")
            }
        };
        let mut failures = Vec::new();
        for url in urls.iter() {
            let why = match tokio::time::timeout(timeout, self.read_from(url)).await {
                Ok(Ok(listing)) => return Ok(listing),
                Ok(Err(why)) => why,
                Err(_) => "timed out".into(),
            };
            failures.push(format!("{}: {why}", url.origin()));
        }
        Err(format!("no {what} answered ({})", failures.join("; ")))
    }

    async fn read_from(&self, url: &Endpoint) -> Result<Listing, String> {
        match self {
            Patroni::Rest { tls, .. } => {
                let body = answer(pgherd_http::get(url, tls.as_ref(), BODY_LIMIT).await)?;
                let view: ClusterView = serde_json::from_slice(&body)
                    .map_err(|e| format!("not Patroni's /cluster: {e}"))?;
                let leader = (view.members.iter())
                    .find(|m| role(&m.role) == Role::Primary)
                    .map(|m| m.name.clone());
                Ok(listing(view.members, leader))
            }
            Patroni::Etcd { prefix, tls, .. } => {
                let request = range_request(prefix);
                let reply = pgherd_http::post_json(url, request, tls.as_ref(), BODY_LIMIT).await;
                let body = answer(reply)?;
                let range: Range = serde_json::from_slice(&body)
                    .map_err(|e| format!("not an etcd range answer: {e}"))?;
                dcs_listing(prefix, range)
            }
        }
    }
}

/// A 2xx answer's body, or what went wrong.
fn answer(reply: Result<pgherd_http::Reply, pgherd_http::HttpError>) -> Result<Bytes, String> {
    match reply {
        Ok(r) if r.status.is_success() => Ok(r.body),
        Ok(r) => Err(format!("answered {}", r.status)),
        Err(e) => Err(e.to_string()),
    }
}

/// A member as Patroni describes it.
#[derive(Debug, Deserialize)]
struct MemberView {
    name: String,
    role: String,
    host: Option<String>,
    port: Option<u16>,
    #[serde(default)]
    tags: Tags,
}

#[derive(Debug, Default, Deserialize)]
struct Tags {
    #[serde(default)]
    noloadbalance: bool,
}

/// `GET /cluster`, as much of it as pgherd reads.
#[derive(Debug, Deserialize)]
struct ClusterView {
    members: Vec<MemberView>,
}

fn role(name: &str) -> Role {
    match name {
        "leader" | "master" | "primary" => Role::Primary,
        _ => Role::Standby,
    }
}

/// The listing of `members`, `leader` (by name) being the authority's
/// choice (none: no member may take writes).
fn listing(members: Vec<MemberView>, leader: Option<String>) -> Listing {
    let mut out = Listing {
        authority: true,
        ..Listing::default()
    };
    for m in members {
        let Some(host) = m.host.filter(|h| !h.is_empty()) else {
            out.skipped.push((
                m.name,
                "Patroni gives it no address (is it running?)".into(),
            ));
            continue;
        };
        let mut node = Node::at(m.name.clone(), host, m.port.unwrap_or(5432));
        if m.tags.noloadbalance {
            node.weight = 0;
        }
        if leader.as_deref() == Some(m.name.as_str()) {
            out.leader = Some(m.name.clone());
        }
        out.roles.push((m.name, role(&m.role)));
        out.members.push(Member {
            node,
            source: Source::Patroni,
        });
    }
    out
}

/// etcd v3's `/v3/kv/range` body for every key under `prefix`.
fn range_request(prefix: &str) -> Bytes {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut end = prefix.as_bytes().to_vec();
    // The first key after every key starting with `prefix`.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let body = serde_json::json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&end) });
    Bytes::from(body.to_string())
}

/// etcd's range answer (keys and values in base64).
#[derive(Debug, Deserialize)]
struct Range {
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Debug, Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
}

/// A `members/<name>` key's value, as much of it as pgherd reads.
#[derive(Debug, Deserialize)]
struct MemberKey {
    conn_url: Option<String>,
    #[serde(default)]
    role: String,
    #[serde(default)]
    tags: Tags,
}

/// The members and leader of the keys under `prefix`.
fn dcs_listing(prefix: &str, range: Range) -> Result<Listing, String> {
    let text = |b64: &str| -> Result<String, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("etcd sent bad base64: {e}"))?;
        String::from_utf8(bytes).map_err(|e| format!("etcd sent a value that is not text: {e}"))
    };
    let mut leader = None;
    let mut members = Vec::new();
    for kv in &range.kvs {
        let key = text(&kv.key)?;
        let Some(name) = key.strip_prefix(prefix) else {
            continue;
        };
        if name == "leader" {
            leader = Some(text(&kv.value)?);
        } else if let Some(member) = name.strip_prefix("members/") {
            let value: MemberKey = serde_json::from_str(&text(&kv.value)?)
                .map_err(|e| format!("member key {key}: {e}"))?;
            let address = (value.conn_url.as_deref()).and_then(|u| super::tcp_address(u).ok());
            let (host, port) = address.unzip();
            members.push(MemberView {
                name: member.to_owned(),
                role: value.role,
                host,
                port,
                tags: value.tags,
            });
        }
    }
    if members.is_empty() {
        return Err(format!(
            "no Patroni member keys under {prefix} (scope and namespace right?)"
        ));
    }
    Ok(listing(members, leader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_roles_tags_and_the_leader_come_from_cluster() {
        let body = r#"{
            "members": [
                {"name": "pg0", "role": "leader", "state": "running",
                 "api_url": "http://127.0.0.1:8008/patroni", "host": "10.0.0.1", "port": 5432, "timeline": 3},
                {"name": "pg1", "role": "replica", "state": "streaming", "host": "10.0.0.2", "port": 5433,
                 "tags": {"noloadbalance": true, "nofailover": true}, "lag": 0},
                {"name": "pg2", "role": "sync_standby", "state": "streaming", "host": "10.0.0.3", "port": 5432},
                {"name": "pg3", "role": "replica", "state": "stopped"}
            ],
            "scope": "demo"
        }"#;
        let view: ClusterView = serde_json::from_str(body).unwrap();
        let l = listing(view.members, Some("pg0".into()));
        let members: Vec<(&str, &str, u16, u32)> = (l.members.iter())
            .map(|m| {
                let n = &m.node;
                (n.name.as_str(), n.host.as_str(), n.port, n.weight)
            })
            .collect();
        assert_eq!(
            members,
            [
                ("pg0", "10.0.0.1", 5432, Node::DEFAULT_WEIGHT),
                ("pg1", "10.0.0.2", 5433, 0),
                ("pg2", "10.0.0.3", 5432, Node::DEFAULT_WEIGHT)
            ]
        );
        assert_eq!(l.leader.as_deref(), Some("pg0"));
        assert!(l.authority);
        assert_eq!(l.roles[0], ("pg0".into(), Role::Primary));
        assert_eq!(l.roles[2], ("pg2".into(), Role::Standby));
        assert_eq!(l.skipped.len(), 1);
    }

    #[test]
    fn the_dcs_keys_give_the_members_and_the_leader_key_the_leader() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let kv = |k: &str, v: &str| format!(r#"{{"key":"{}","value":"{}"}}"#, b64(k), b64(v));
        let body = format!(
            r#"{{"header":{{}},"kvs":[{},{},{},{}],"count":"4"}}"#,
            kv("/service/demo/config", "{}"),
            kv("/service/demo/leader", "pg1"),
            kv(
                "/service/demo/members/pg0",
                r#"{"conn_url":"postgres://10.0.0.1:5432/postgres","role":"replica","state":"running"}"#
            ),
            kv(
                "/service/demo/members/pg1",
                r#"{"conn_url":"postgres://10.0.0.2:5433/postgres","role":"master","tags":{"noloadbalance":true}}"#
            ),
        );
        let range: Range = serde_json::from_str(&body).unwrap();
        let l = dcs_listing("/service/demo/", range).unwrap();
        assert_eq!(l.leader.as_deref(), Some("pg1"));
        let members: Vec<(&str, &str, u16, u32)> = (l.members.iter())
            .map(|m| {
                (
                    m.node.name.as_str(),
                    m.node.host.as_str(),
                    m.node.port,
                    m.node.weight,
                )
            })
            .collect();
        assert_eq!(
            members,
            [("pg0", "10.0.0.1", 5432, 1), ("pg1", "10.0.0.2", 5433, 0)]
        );

        // No leader key: an answer too (no member may take writes).
        let range: Range = serde_json::from_str(&format!(
            r#"{{"kvs":[{}]}}"#,
            kv(
                "/service/demo/members/pg0",
                r#"{"conn_url":"postgres://h:1/postgres","role":"replica"}"#
            )
        ))
        .unwrap();
        let l = dcs_listing("/service/demo/", range).unwrap();
        assert_eq!(l.leader, None);
        assert!(l.authority);
        let empty: Range = serde_json::from_str("{}").unwrap();
        assert!(dcs_listing("/service/demo/", empty)
            .unwrap_err()
            .contains("scope"));
    }

    #[test]
    fn the_range_covers_every_key_under_the_prefix() {
        let body: serde_json::Value =
            serde_json::from_slice(&range_request("/service/demo/")).unwrap();
        let decode = |v: &serde_json::Value| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .unwrap();
            String::from_utf8(bytes).unwrap()
        };
        assert_eq!(decode(&body["key"]), "/service/demo/");
        assert_eq!(decode(&body["range_end"]), "/service/demo0");
    }

    /// An https server on 127.0.0.1 answering every request with `body`.
    async fn https_server(
        cert: &std::path::Path,
        key: &std::path::Path,
        body: &'static str,
    ) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let acceptor = pgherd_tls::test_pki::acceptor(cert, key);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.flush().await;
            }
        });
        port
    }

    #[tokio::test]
    async fn an_https_api_is_read_when_its_certificate_verifies() {
        let pki = pgherd_tls::test_pki::TestPki::new();
        let body =
            r#"{"members": [{"name": "pg0", "role": "leader", "host": "10.0.0.1", "port": 5432}]}"#;
        let reader = |port: u16| Patroni::Rest {
            urls: vec![Endpoint::parse(&format!("https://127.0.0.1:{port}/cluster")).unwrap()],
            timeout: Duration::from_secs(10),
            tls: Some(pgherd_tls::https_connector(&pki.ca_cert).unwrap()),
        };
        let nobody = Topology::unprobed(Vec::new());
        let trusted = https_server(&pki.server_cert, &pki.server_key, body).await;
        let l = reader(trusted).read(&nobody).await.unwrap();
        assert_eq!(l.leader.as_deref(), Some("pg0"));

        let rogue = https_server(&pki.rogue_cert, &pki.rogue_key, body).await;
        let err = reader(rogue).read(&nobody).await.unwrap_err();
        assert!(err.contains("TLS"), "{err}");
    }

    /// A plain HTTP server on 127.0.0.1 answering every request with
    /// `status` and `body`.
    async fn http_server(status: &'static str, body: &'static str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn an_api_that_fails_or_is_not_patroni_is_named_and_the_next_one_asked() {
        let garbage = http_server("200 OK", "<html>hello</html>").await;
        let failing = http_server("503 Service Unavailable", "").await;
        let good = http_server(
            "200 OK",
            r#"{"members": [{"name": "pg0", "role": "leader", "host": "h", "port": 1}]}"#,
        )
        .await;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let reader = |ports: &[u16]| Patroni::Rest {
            urls: (ports.iter())
                .map(|p| Endpoint::parse(&format!("http://127.0.0.1:{p}/cluster")).unwrap())
                .collect(),
            timeout: Duration::from_secs(10),
            tls: None,
        };
        let nobody = Topology::unprobed(Vec::new());
        let err = reader(&[garbage, failing, closed])
            .read(&nobody)
            .await
            .unwrap_err();
        assert!(err.contains("not Patroni's /cluster"), "{err}");
        assert!(err.contains("answered 503"), "{err}");
        assert!(
            err.contains(&format!("127.0.0.1:{closed}: connecting")),
            "{err}"
        );
        let l = reader(&[closed, garbage, good])
            .read(&nobody)
            .await
            .unwrap();
        assert_eq!(l.leader.as_deref(), Some("pg0"));
    }
}
