//! Connections from pgherd to a PostgreSQL server: login, reset, liveness.
//!
//! A server connection is opened with the startup parameters of the client
//! that needed it (so `options`, `application_name` and every other parameter
//! reach the server exactly as a direct connection would send them) and logs in
//! with whichever credential pgherd holds for that user: a plaintext password
//! (SCRAM-SHA-256, md5 or cleartext, as the server asks), the SCRAM keys
//! recovered from the client's own login, or nothing (`trust`).
//!
//! It runs over TLS when `server_tls_sslmode` asks for it; the login
//! itself is the same either way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pgherd_auth::{ScramKeysClient, ScramVerifier, Secret};
use pgherd_config::TcpOptions;
use pgherd_tls::{ServerTls, Stream};
use pgherd_wire::backend::{self, AuthRequest, ErrorFields, TxStatus};
use pgherd_wire::sqlstate;
use pgherd_wire::{frontend, next_frame, Frame};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend as pq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::clock::Micros;
use crate::relay::params::{ClientParams, ServerParams, TrackedParams};

/// Largest message accepted while logging in or resetting (no rows flow then).
const CONTROL_MESSAGE_LIMIT: usize = 1 << 20;

/// Startup parameters a server connection is opened with, sorted by name:
/// one allocation shared by the connections of one upstream, so the pool
/// tells a fitting connection by comparing pointers (see [`same_startup`]).
pub(crate) type Startup = Arc<[(String, String)]>;

/// Whether a connection opened with `theirs` fits a client that needs
/// `ours`: the same allocation, or equal.
pub(crate) fn same_startup(theirs: &Startup, ours: &Startup) -> bool {
    Arc::ptr_eq(theirs, ours) || theirs == ours
}

/// What pgherd proves to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCredential {
    /// No password: the server must `trust` this user.
    None,
    Password(Secret),
    /// `ClientKey` from the client's SCRAM login plus the verifier it matched.
    ScramKeys {
        client_key: [u8; 32],
        verifier: ScramVerifier,
    },
    /// An md5 secret (userlist.txt): enough for a server that asks md5.
    Md5Secret(Secret),
}

/// Why a server connection could not be opened or kept.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// No TLS when it was required, or the handshake failed.
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("server closed the connection")]
    Closed,
    /// The server answered with an ErrorResponse.
    #[error("server said: {0}")]
    Rejected(ErrorFields),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// `max_db_connections` / `max_user_connections` permits a server
/// connection holds while it is open (see `limits`).
pub(crate) type Permits = Vec<tokio::sync::OwnedSemaphorePermit>;

/// An open, logged-in connection to one node.
#[derive(Debug)]
pub struct ServerConn {
    pub(crate) stream: Stream,
    /// The relay's buffer for this server's replies, kept between
    /// transactions so relaying allocates nothing in steady state.
    pub(crate) read_buf: BytesMut,
    /// Named statements pgherd prepared here (transaction mode).
    pub(crate) statements: crate::relay::prepared::ServerStatements,
    /// Replies this server owes for requests pgherd added to a client's.
    pub(crate) expected: crate::relay::prepared::Expected,
    /// Index of the node in the configuration.
    pub node: usize,
    pub addr: SocketAddr,
    /// The server backend's process ID and cancel secret.
    pub pid: i32,
    pub secret: [u8; 4],
    /// ParameterStatus values as the server last reported them (plus
    /// tracked parameters pgherd set that it does not report).
    pub(crate) params: ServerParams,
    /// ParameterStatus values as reported at login: in transaction mode, the
    /// defaults for a client that sets none (see `params`).
    pub(crate) initial_params: ServerParams,
    /// The startup parameters this connection was opened with.
    pub(crate) startup: Startup,
    /// When it was opened (`server_lifetime`).
    pub(crate) created: Micros,
    /// When it last went back to the pool (`server_idle_timeout`,
    /// `server_check_delay`).
    pub(crate) idle_since: Micros,
    /// `max_db_connections` / `max_user_connections` permits, held while open.
    pub(crate) permits: Permits,
    /// Its entry in the admin console's list, while it is open.
    pub(crate) registered: Option<crate::registry::Registered<crate::registry::ServerInfo>>,
    /// NoticeResponse bodies the server sent during login: every client
    /// welcomed by it gets them, as one connecting directly with the same
    /// startup parameters would (a truncated identifier, a deprecation).
    pub(crate) login_notices: Vec<Bytes>,
}

impl ServerConn {
    /// Connects to `host:port` (with TLS as `tls` says) and logs in with
    /// `startup` parameters. `tracked` names the parameters clients keep.
    pub(crate) async fn connect(
        (node, host, port): (usize, &str, u16),
        (startup, tracked): (Startup, &Arc<TrackedParams>),
        credential: &ServerCredential,
        (tls, tcp): (&ServerTls, &TcpOptions),
        timeout: Duration,
    ) -> Result<ServerConn, ServerError> {
        let attempts = async {
            let at = (node, host, port);
            let first = (tls, tcp, false);
            match Self::connect_once(at, (startup.clone(), tracked), credential, first).await {
                // `allow`: the server refused a plain login; try TLS.
                Err(ServerError::Rejected(f))
                    if f.code == sqlstate::INVALID_AUTHORIZATION_SPECIFICATION
                        && tls.retries_with_tls() =>
                {
                    let insisting = (tls, tcp, true);
                    Self::connect_once(at, (startup, tracked), credential, insisting).await
                }
                done => done,
            }
        };
        tokio::time::timeout(timeout, attempts)
            .await
            .map_err(|_| ServerError::Timeout(timeout))?
    }

    async fn connect_once(
        (node, host, port): (usize, &str, u16),
        (startup, tracked): (Startup, &Arc<TrackedParams>),
        credential: &ServerCredential,
        (tls, options, insist_on_tls): (&ServerTls, &TcpOptions, bool),
    ) -> Result<ServerConn, ServerError> {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(ServerError::Connect)?;
        crate::listen::sockets::tune(&tcp, options)?;
        let addr = tcp.peer_addr()?;
        let stream = tls
            .start(tcp, host, insist_on_tls)
            .await
            .map_err(ServerError::Tls)?;
        let mut conn = ServerConn {
            stream,
            read_buf: BytesMut::new(),
            statements: Default::default(),
            expected: Default::default(),
            node,
            addr,
            pid: 0,
            secret: [0; 4],
            params: ServerParams::new(Arc::clone(tracked)),
            initial_params: ServerParams::new(Arc::clone(tracked)),
            startup,
            created: Micros::now(),
            idle_since: Micros::now(),
            permits: Vec::new(),
            registered: None,
            login_notices: Vec::new(),
        };
        conn.login(credential).await?;
        conn.initial_params = conn.params.clone();
        Ok(conn)
    }

    /// True when the server reports itself as a hot standby (PostgreSQL 14+
    /// reports `in_hot_standby`; older servers are taken as primaries here).
    pub fn is_standby(&self) -> bool {
        self.params.is_standby()
    }

    fn user(&self) -> &str {
        self.startup
            .iter()
            .find(|(k, _)| k == "user")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    async fn login(&mut self, credential: &ServerCredential) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        pq::startup_message(
            self.startup.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &mut out,
        )?;
        self.stream.send(&out).await?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut sasl: Option<SaslClient> = None;
        loop {
            let frame = self.read_frame(&mut buf).await?;
            match frame.tag {
                backend::AUTHENTICATION => {
                    let req = AuthRequest::parse(&frame.body).ok_or_else(|| {
                        ServerError::Protocol("malformed authentication request".into())
                    })?;
                    out.clear();
                    self.answer_auth(req, credential, &mut sasl, &mut out)?;
                    if !out.is_empty() {
                        self.stream.send(&out).await?;
                    }
                }
                backend::PARAMETER_STATUS => {
                    let (k, v) = backend::parameter_status_view(&frame.body)
                        .ok_or_else(|| ServerError::Protocol("malformed ParameterStatus".into()))?;
                    self.set_param(k, v);
                }
                backend::BACKEND_KEY_DATA => {
                    (self.pid, self.secret) = backend::backend_key_data_view(&frame.body)
                        .ok_or_else(|| ServerError::Protocol("malformed BackendKeyData".into()))?;
                }
                backend::ERROR_RESPONSE => return Err(rejected(&frame)),
                backend::READY_FOR_QUERY => return Ok(()),
                backend::NOTICE_RESPONSE => self.login_notices.push(frame.body),
                backend::NEGOTIATE_PROTOCOL_VERSION => {}
                other => {
                    return Err(ServerError::Protocol(format!(
                        "unexpected message {:?} during login",
                        char::from(other)
                    )))
                }
            }
        }
    }

    fn answer_auth(
        &self,
        req: AuthRequest<'_>,
        credential: &ServerCredential,
        sasl: &mut Option<SaslClient>,
        out: &mut BytesMut,
    ) -> Result<(), ServerError> {
        let password = || match credential {
            ServerCredential::Password(p) => Ok(p.expose()),
            _ => Err(ServerError::Auth(
                "the server asks for a password and pgherd has none for this user \
                 (set server_password for the user, or user/password on the database)"
                    .into(),
            )),
        };
        match req {
            AuthRequest::Ok => {}
            AuthRequest::Cleartext => pq::password_message(password()?.as_bytes(), out)?,
            AuthRequest::Md5 { salt } => {
                let hash = match credential {
                    ServerCredential::Md5Secret(m) => {
                        pgherd_auth::md5::md5_salted(m.expose(), salt)
                    }
                    _ => postgres_protocol::authentication::md5_hash(
                        self.user().as_bytes(),
                        password()?.as_bytes(),
                        salt,
                    ),
                };
                pq::password_message(hash.as_bytes(), out)?;
            }
            AuthRequest::Sasl(mechanisms) => {
                if !mechanisms.contains(&pgherd_auth::scram::MECHANISM) {
                    return Err(ServerError::Auth(format!(
                        "server offers SASL mechanisms {mechanisms:?}, pgherd speaks SCRAM-SHA-256"
                    )));
                }
                let client = match credential {
                    ServerCredential::Password(p) => SaslClient::Password(ScramSha256::new(
                        p.expose().as_bytes(),
                        ChannelBinding::unsupported(),
                    )),
                    ServerCredential::ScramKeys {
                        client_key,
                        verifier,
                    } => SaslClient::Keys(ScramKeysClient::new(*client_key, verifier.clone())),
                    ServerCredential::Md5Secret(_) => {
                        return Err(ServerError::Auth(
                            "the server asks for SCRAM and pgherd has only an md5 secret for \
                             this user (give it a SCRAM verifier or a server_password)"
                                .into(),
                        ))
                    }
                    ServerCredential::None => {
                        return Err(password()
                            .err()
                            .unwrap_or_else(|| ServerError::Auth("no credential".into())))
                    }
                };
                let first = match &client {
                    SaslClient::Password(c) => c.message().to_vec(),
                    SaslClient::Keys(c) => c.client_first(),
                };
                pq::sasl_initial_response(pgherd_auth::scram::MECHANISM, &first, out)?;
                *sasl = Some(client);
            }
            AuthRequest::SaslContinue(data) => {
                let reply = match sasl.as_mut() {
                    Some(SaslClient::Password(c)) => {
                        c.update(data)
                            .map_err(|e| ServerError::Auth(e.to_string()))?;
                        c.message().to_vec()
                    }
                    Some(SaslClient::Keys(c)) => c
                        .server_first(data)
                        .map_err(|e| ServerError::Auth(e.to_string()))?,
                    None => return Err(ServerError::Protocol("SASLContinue before SASL".into())),
                };
                pq::sasl_response(&reply, out)?;
            }
            AuthRequest::SaslFinal(data) => match sasl.as_mut() {
                Some(SaslClient::Password(c)) => c
                    .finish(data)
                    .map_err(|e| ServerError::Auth(e.to_string()))?,
                Some(SaslClient::Keys(c)) => c
                    .server_final(data)
                    .map_err(|e| ServerError::Auth(e.to_string()))?,
                None => return Err(ServerError::Protocol("SASLFinal before SASL".into())),
            },
            AuthRequest::Other(code) => {
                return Err(ServerError::Auth(format!(
                    "server asks for authentication method {code}, which pgherd does not support"
                )))
            }
        }
        Ok(())
    }

    /// Records the server's value of a parameter.
    fn set_param(&mut self, name: &str, value: &str) {
        self.params.record(name, value);
    }

    async fn read_frame(&mut self, buf: &mut BytesMut) -> Result<Frame, ServerError> {
        loop {
            if let Some(frame) = next_frame(buf, CONTROL_MESSAGE_LIMIT)
                .map_err(|e| ServerError::Protocol(e.to_string()))?
            {
                return Ok(frame);
            }
            if self.stream.read_buf(buf).await? == 0 {
                return Err(ServerError::Closed);
            }
        }
    }

    /// Makes the connection fit for another client: rolls back an open
    /// transaction, runs `reset_query` (unless empty), and waits until the
    /// server is idle again. Parameter changes the reset reports are recorded.
    pub async fn reset(
        &mut self,
        status: TxStatus,
        reset_query: &str,
        timeout: Duration,
    ) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        let mut expected = 0;
        if status != TxStatus::Idle {
            frontend::query(&mut out, "ROLLBACK");
            expected += 1;
        }
        if !reset_query.is_empty() {
            frontend::query(&mut out, reset_query);
            expected += 1;
            if crate::relay::prepared::drops_all(reset_query.as_bytes()) {
                self.statements.clear();
            }
            let resets_all = crate::relay::settings::parse(reset_query.as_bytes(), |_| false);
            if resets_all == Some(crate::relay::settings::Change::ResetAll) {
                // DISCARD ALL and RESET ALL reset every parameter to its
                // session default: the values this connection logged in
                // with, and none of the settings replayed on it. (The
                // ParameterStatus the server sends may refine them.)
                self.params = self.initial_params.clone();
            }
        }
        self.exchange(&out, (expected, None), timeout).await
    }

    /// Runs `server_check_query` on a connection that sat idle: a half-open
    /// connection fails here instead of in a client's transaction.
    pub(crate) async fn check(
        &mut self,
        query: &str,
        timeout: Duration,
    ) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        frontend::query(&mut out, query);
        self.exchange(&out, (1, None), timeout).await
    }

    /// Whether it has outlived `server_lifetime` at `now` (a clock the
    /// caller read anyway: this runs for every transaction).
    pub(crate) fn expired(&self, lifetime: Option<Duration>, now: Micros) -> bool {
        lifetime.is_some_and(|l| now.since(self.created) >= l)
    }

    /// Sets session parameters on the idle server (transaction mode: a
    /// client's own values, see `params`). `values` are recorded as the
    /// server's, also those it does not report; the ParameterStatus it does
    /// send then replace them with its spelling. On an error the caller must
    /// close the connection: its recorded values may be wrong.
    /// Returns the NoticeResponse bodies the server sent meanwhile.
    pub(crate) async fn apply(
        &mut self,
        query: &str,
        values: &ClientParams,
        timeout: Duration,
    ) -> Result<Vec<Bytes>, ServerError> {
        self.params.assume(values);
        let mut out = BytesMut::new();
        frontend::query(&mut out, query);
        let mut notices = Vec::new();
        self.exchange(&out, (1, Some(&mut notices)), timeout)
            .await?;
        Ok(notices)
    }

    /// Sends `out` (`expected` simple queries) and reads the replies up to
    /// the last ReadyForQuery, which must say idle. The first error the
    /// server reports is returned; ParameterStatus changes are recorded.
    /// NoticeResponse bodies go to `notices`, if given.
    async fn exchange(
        &mut self,
        out: &[u8],
        (mut expected, mut notices): (usize, Option<&mut Vec<Bytes>>),
        timeout: Duration,
    ) -> Result<(), ServerError> {
        if expected == 0 {
            return Ok(());
        }
        let work = async {
            self.stream.send(out).await?;
            let mut buf = BytesMut::with_capacity(256);
            let mut failed = None;
            while expected > 0 {
                let frame = self.read_frame(&mut buf).await?;
                match frame.tag {
                    backend::READY_FOR_QUERY => {
                        expected -= 1;
                        if expected == 0 && frame.body.first() != Some(&TxStatus::Idle.as_byte()) {
                            failed.get_or_insert(ServerError::Protocol(
                                "still in a transaction after pgherd's own queries".into(),
                            ));
                        }
                    }
                    backend::ERROR_RESPONSE => {
                        failed.get_or_insert(rejected(&frame));
                    }
                    backend::PARAMETER_STATUS => {
                        if let Some((k, v)) = backend::parameter_status_view(&frame.body) {
                            self.set_param(k, v);
                        }
                    }
                    backend::NOTICE_RESPONSE => {
                        if let Some(notices) = notices.as_deref_mut() {
                            notices.push(frame.body);
                        }
                    }
                    _ => {}
                }
            }
            if !buf.is_empty() {
                return Err(ServerError::Protocol(
                    "unexpected data after pgherd's own queries".into(),
                ));
            }
            failed.map_or(Ok(()), Err)
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ServerError::Timeout(timeout))?
    }

    /// True when the idle connection is still usable: the server has neither
    /// closed it nor sent anything (an idle server only speaks to say it is
    /// terminating the connection).
    pub fn is_alive(&mut self) -> bool {
        self.stream.is_idle_and_open()
    }

    /// Says goodbye to the server (Terminate) and closes the connection.
    /// Leaves the console's lists now and says goodbye to the server in a
    /// task of its own.
    pub(crate) fn close_in_background(mut self) {
        self.registered = None;
        tokio::spawn(self.close());
    }

    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.stream.send(&out).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

enum SaslClient {
    Password(ScramSha256),
    Keys(ScramKeysClient),
}

fn rejected(frame: &Frame) -> ServerError {
    match ErrorFields::parse(&frame.body) {
        Some(fields) => ServerError::Rejected(fields),
        None => ServerError::Protocol("malformed ErrorResponse".into()),
    }
}

/// Sends a CancelRequest for backend `pid`/`secret` to the server at `addr`
/// and waits (briefly) for the server to close the connection, as libpq does.
pub async fn send_cancel(addr: SocketAddr, pid: i32, secret: [u8; 4]) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut out = BytesMut::new();
    pq::cancel_request(pid, i32::from_be_bytes(secret), &mut out);
    stream.write_all(&out).await?;
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use pgherd_config::{Config, General};
    use pgherd_wire::frontend;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn general() -> General {
        Config::parse("[pgherd]\nprobe_user = \"p\"\n[[nodes]]\nname = \"a\"\nhost = \"h\"")
            .map(|c| c.general)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A server that reads the startup packet and each message it expects
    /// (the password), answering each step with the next of `steps`.
    async fn server(steps: Vec<Vec<u8>>) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.unwrap();
            let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            s.read_exact(&mut startup).await.unwrap();
            let mut received = Vec::new();
            for (i, step) in steps.iter().enumerate() {
                if i > 0 {
                    let mut header = [0u8; 5];
                    s.read_exact(&mut header).await.unwrap();
                    let mut body =
                        vec![0u8; u32::from_be_bytes(header[1..].try_into().unwrap()) as usize - 4];
                    s.read_exact(&mut body).await.unwrap();
                    received.push(header[0]);
                }
                s.write_all(step).await.unwrap();
            }
            // Keep the connection until the client is done with it.
            let _ = s.read(&mut [0u8; 1]).await;
            received
        });
        (port, task)
    }

    async fn connect(port: u16, credential: &ServerCredential) -> Result<ServerConn, ServerError> {
        let g = general();
        let tls = ServerTls::new(&g.server_tls()).unwrap();
        let startup: Startup = vec![("user".to_owned(), "app".to_owned())].into();
        let tracked = Arc::new(TrackedParams::new(&g));
        ServerConn::connect(
            (0, "127.0.0.1", port),
            (startup, &tracked),
            credential,
            (&tls, &g.tcp()),
            Duration::from_secs(5),
        )
        .await
    }

    fn welcome(standby: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        backend::authentication_ok(&mut b);
        ErrorFields::notice("identifier will be truncated").encode_notice(&mut b);
        backend::parameter_status(&mut b, "in_hot_standby", standby);
        backend::backend_key_data(&mut b, 4242, *b"abcd");
        backend::ready_for_query(&mut b, TxStatus::Idle);
        b.to_vec()
    }

    #[tokio::test]
    async fn a_cleartext_login_records_the_key_and_the_standby_flag() {
        let mut ask = BytesMut::new();
        backend::authentication_cleartext(&mut ask);
        let (port, server) = server(vec![ask.to_vec(), welcome("on")]).await;
        let password = ServerCredential::Password(pgherd_auth::Secret::new("pw"));
        let conn = connect(port, &password).await.unwrap();
        assert!(conn.is_standby());
        assert_eq!((conn.pid, conn.secret), (4242, *b"abcd"));
        drop(conn);
        assert_eq!(server.await.unwrap(), [frontend::PASSWORD]);
    }

    #[tokio::test]
    async fn a_login_refused_by_the_server_carries_its_error() {
        let mut refusal = BytesMut::new();
        ErrorFields::fatal(sqlstate::INVALID_PASSWORD, "password authentication failed")
            .encode(&mut refusal);
        let (port, _server) = server(vec![refusal.to_vec()]).await;
        match connect(port, &ServerCredential::None).await {
            Err(ServerError::Rejected(f)) => assert_eq!(f.code, sqlstate::INVALID_PASSWORD),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_password_request_without_a_password_is_an_auth_error() {
        let mut ask = BytesMut::new();
        backend::authentication_cleartext(&mut ask);
        let (port, _server) = server(vec![ask.to_vec()]).await;
        assert!(matches!(
            connect(port, &ServerCredential::None).await,
            Err(ServerError::Auth(_))
        ));
    }

    #[tokio::test]
    async fn a_broken_message_during_login_is_a_protocol_error() {
        let (port, _server) = server(vec![vec![backend::AUTHENTICATION, 0, 0, 0, 1]]).await;
        assert!(matches!(
            connect(port, &ServerCredential::None).await,
            Err(ServerError::Protocol(_) | ServerError::Io(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_expires_after_server_lifetime() {
        let mut ask = BytesMut::new();
        backend::authentication_cleartext(&mut ask);
        let (port, _server) = server(vec![ask.to_vec(), welcome("off")]).await;
        let password = ServerCredential::Password(pgherd_auth::Secret::new("pw"));
        let conn = connect(port, &password).await.unwrap();
        let lifetime = Some(Duration::from_secs(3600));
        assert!(!conn.expired(lifetime, Micros::now()));
        tokio::time::advance(Duration::from_secs(3599)).await;
        assert!(!conn.expired(lifetime, Micros::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(conn.expired(lifetime, Micros::now()));
        assert!(
            !conn.expired(None, Micros::now()),
            "no server_lifetime: never"
        );
    }
}
