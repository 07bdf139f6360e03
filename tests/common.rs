//! Helpers shared by the integration tests.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub use pgherd_testkit::*;

pub mod drill;

/// The SQLSTATE of a tokio-postgres error, if the server (or pgherd) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// Runs psql against pgherd at `addr` with `args`; returns its output.
pub async fn psql(
    pgherd: &RunningPgherd,
    user: &str,
    password: &str,
    db: &str,
    args: &[&str],
) -> Output {
    psql_with_env(pgherd, user, password, db, args, &[]).await
}

/// [`psql`] with extra environment variables (`PGTZ`, `PGDATESTYLE`...).
pub async fn psql_with_env(
    pgherd: &RunningPgherd,
    user: &str,
    password: &str,
    db: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let bins = pgherd_testkit::PgBinaries::find().expect("PostgreSQL binaries");
    let mut cmd = Command::new(bins.path("psql"));
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &pgherd.addr.ip().to_string()])
        .args(["-p", &pgherd.addr.port().to_string(), "-U", user, "-d", db])
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .envs(env.iter().copied());
    output(cmd).await.expect("run psql")
}

/// Runs `cmd` to the end on one of tokio's blocking threads, its output
/// captured.
///
/// Why not `tokio::process`: this crate is built together with the pgherd
/// binary, and cargo gives every package in one build the union of the
/// features any of them asks of a dependency. With tokio's `process`
/// feature, pgherd's runtime would check an orphan-process queue on every
/// wake-up (callgrind: ~120 instructions per transaction at 1 client).
pub async fn output(mut cmd: Command) -> std::io::Result<Output> {
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(std::io::Error::other)?
}

/// A tokio-postgres client through pgherd's Unix socket in `dir` for
/// listener `port` (`unix_socket_dir`).
pub async fn connect_unix(
    dir: &std::path::Path,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host_path(dir)
        .port(port)
        .user(user)
        .password(password)
        .dbname(db)
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Runs `sql` with the simple protocol; returns the rows as text.
pub async fn simple_rows(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect())
}

/// The single value of a one-row, one-column simple query.
pub async fn simple_value(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = simple_rows(client, sql).await.expect("query succeeds");
    rows[0][0].clone().expect("not null")
}

/// A client that speaks the protocol byte by byte, for what drivers won't send.
#[derive(Debug)]
pub struct RawClient {
    pub stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl RawClient {
    pub async fn connect(pgherd: &RunningPgherd) -> RawClient {
        RawClient {
            stream: tokio::net::TcpStream::connect(pgherd.addr)
                .await
                .expect("connect to pgherd"),
            buf: bytes::BytesMut::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("send");
    }

    /// The next backend message, or `None` at end of stream.
    pub async fn recv(&mut self) -> Option<pgherd_wire::Frame> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(f) = pgherd_wire::next_frame(&mut self.buf, 1 << 30).expect("valid frame") {
                return Some(f);
            }
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                self.stream.read_buf(&mut self.buf),
            )
            .await
            .expect("pgherd answers")
            .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads until an ErrorResponse; returns it. Panics on end of stream first.
    pub async fn expect_error(&mut self) -> pgherd_wire::backend::ErrorFields {
        loop {
            let f = self.recv().await.expect("an ErrorResponse before close");
            if f.tag == pgherd_wire::backend::ERROR_RESPONSE {
                return pgherd_wire::backend::ErrorFields::parse(&f.body).expect("valid error");
            }
        }
    }

    /// True when the server closes the connection (after any pending messages).
    pub async fn closed(&mut self) -> bool {
        while self.recv().await.is_some() {}
        true
    }

    /// Sends a StartupMessage with `params`.
    pub async fn startup(&mut self, params: &[(&str, &str)]) {
        let mut out = bytes::BytesMut::new();
        postgres_protocol::message::frontend::startup_message(params.iter().copied(), &mut out)
            .expect("encode startup");
        self.send(&out).await;
    }

    /// Logs in as `app` with SCRAM; returns the messages after AuthenticationOk
    /// up to and including ReadyForQuery.
    pub async fn login_app(&mut self) -> Vec<pgherd_wire::Frame> {
        self.login_app_with(&[]).await
    }

    /// [`RawClient::login_app`] with more startup parameters.
    pub async fn login_app_with(&mut self, more: &[(&str, &str)]) -> Vec<pgherd_wire::Frame> {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        use postgres_protocol::message::frontend;
        let mut params = vec![("user", "app"), ("database", "app")];
        params.extend_from_slice(more);
        self.startup(&params).await;
        let mut scram = ScramSha256::new(APP_PASSWORD.as_bytes(), ChannelBinding::unsupported());
        let mut after_ok = Vec::new();
        let mut authenticated = false;
        while let Some(f) = self.recv().await {
            if authenticated {
                let done = f.tag == pgherd_wire::backend::READY_FOR_QUERY;
                after_ok.push(f);
                if done {
                    return after_ok;
                }
                continue;
            }
            assert_eq!(
                f.tag,
                pgherd_wire::backend::AUTHENTICATION,
                "authentication request expected"
            );
            let code = i32::from_be_bytes(f.body[..4].try_into().expect("code"));
            let mut out = bytes::BytesMut::new();
            match code {
                10 => frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out)
                    .expect("encode"),
                11 => {
                    scram.update(&f.body[4..]).expect("server-first");
                    frontend::sasl_response(scram.message(), &mut out).expect("encode");
                }
                12 => scram.finish(&f.body[4..]).expect("server signature"),
                0 => authenticated = true,
                other => panic!("unexpected auth request {other}"),
            }
            if !out.is_empty() {
                self.send(&out).await;
            }
        }
        panic!("connection closed during login");
    }
}

/// The message of a server (or pgherd) error, or the error's text otherwise.
pub fn message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_owned(),
        None => e.to_string(),
    }
}

/// `GET path` on pgherd's admin port; returns the status code and body.
pub async fn http_get(pgherd: &RunningPgherd, path: &str) -> (u16, String) {
    http_request(pgherd, "GET", path, None).await
}

/// An HTTP request to pgherd's admin port, with basic auth when `login`
/// (user, password) is given; returns the status and the body.
pub async fn http_request(
    pgherd: &RunningPgherd,
    method: &str,
    path: &str,
    login: Option<(&str, &str)>,
) -> (u16, String) {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = pgherd.admin_addr.expect("admin port enabled");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect admin");
    let auth = login
        .map(|(u, p)| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!("Authorization: Basic {token}\r\n")
        })
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: pgherd\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read response");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `GET path` over HTTP/1.0 (so the body is never chunked) from any
/// server on `addr`; returns the status code and body.
pub async fn http_get_at(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `sql` on node `node` of `cluster` until it returns `expected`
/// (bounded: 30 s, then the test fails).
pub async fn wait_for_sql(cluster: &TestCluster, node: usize, sql: &str, expected: &str) {
    for _ in 0..600 {
        if cluster.pg.sql(node, sql).ok().as_deref() == Some(expected) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{sql} never returned {expected}");
}

/// One request a [`Receiver`] got.
#[derive(Debug)]
pub struct Received {
    pub path: String,
    pub body: serde_json::Value,
}

/// A loopback HTTP endpoint (a webhook's receiver) that records what is posted to it and answers
/// with the given statuses in turn, then 200.
#[derive(Debug)]
pub struct Receiver {
    pub addr: SocketAddr,
    got: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    pub async fn start(mut statuses: Vec<u16>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a webhook receiver");
        let addr = listener.local_addr().expect("its address");
        let (tx, got) = mpsc::unbounded_channel();
        statuses.reverse();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let Some((path, body)) = read_http_request(&mut conn).await else {
                    continue;
                };
                let status = statuses.pop().unwrap_or(200);
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = conn.write_all(reply.as_bytes()).await;
                let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let _ = tx.send(Received { path, body });
            }
        });
        Receiver { addr, got }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next request whose text contains `text`, skipping others (at
    /// start pgherd announces what it finds: nodes up, the primary). Both
    /// a webhook's body and Telegram's carry the text.
    pub async fn next_with_text(&mut self, text: &str) -> Received {
        loop {
            let got = self.next().await;
            if got.body["text"].as_str().is_some_and(|t| t.contains(text)) {
                return got;
            }
        }
    }

    /// The next request, waiting up to 30 s.
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(30), self.got.recv())
            .await
            .expect("a notification within 30 s")
            .expect("the receiver runs")
    }
}

/// Reads one request: its path and body (by `content-length`).
async fn read_http_request(conn: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let path = head.split_whitespace().nth(1)?.to_owned();
    let head = head.to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((path, buf[head_end..head_end + length].to_vec()))
}

/// Connects as `app` and forwards the connection's notifications to a
/// channel.
pub async fn connect_listening(
    pgherd: &RunningPgherd,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) {
    use futures_util::StreamExt;
    let (client, mut connection) = pgherd
        .config("app", APP_PASSWORD, "app")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect through pgherd");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n);
            }
        }
    });
    (client, rx)
}

/// A loopback port free now (the caller binds it soon after).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("its address").port()
}

/// The next cluster event `wanted` accepts (waiting up to 30 s).
pub async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<pgherd_cluster::Event>,
    wanted: impl Fn(&pgherd_cluster::ClusterEvent) -> bool,
) -> pgherd_cluster::ClusterEvent {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(pgherd_cluster::Event::Cluster(e)) if wanted(&e) => return e,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events ended: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("the event within 30 s")
}
