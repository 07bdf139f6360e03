//! The client side of a connection: startup packets and authentication.
//!
//! Everything here runs before the client is given a server, under
//! `client_login_timeout`, and ends either in an [`Authenticated`] client or in
//! a clear FATAL ErrorResponse (or, for a CancelRequest, a silent close, as
//! PostgreSQL does).
//!
//! What may not live here: anything about servers or pools. A login reads
//! the settings, the cluster (for `auth_query`) and its own secret through
//! [`Logins`], never the whole proxy.

pub(crate) mod auth_query;
pub mod failures;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pgherd_auth::{ScramError, ScramServer};
use pgherd_config::AuthType;
use pgherd_tls::{ClientTls, Stream};
use pgherd_wire::backend::{self, ErrorFields};
use pgherd_wire::sqlstate;
use pgherd_wire::startup::{
    EncryptionRequest, StartupMessage, StartupPacket, ENCRYPTION_ACCEPTED, ENCRYPTION_REFUSED,
};
use pgherd_wire::{decode_startup, frontend, next_frame, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use pgherd_cluster::Cluster;
use rand::RngCore;

use crate::listen::addr::ClientAddr;
use crate::settings::Settings;
use auth_query::AuthQuery;
pub use failures::LoginFailures;

/// Largest message accepted from a client before it has logged in.
const LOGIN_MESSAGE_LIMIT: usize = 8 * 1024;

/// A client connection with its read buffer. Bytes the client sent after its
/// last login message (a pipelining driver) stay in `buf` for the session.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) stream: Stream,
    pub(crate) buf: BytesMut,
    pub(crate) peer: ClientAddr,
}

/// What a client said it is and proved.
#[derive(Debug)]
pub(crate) struct Authenticated {
    pub(crate) startup: StartupMessage,
    pub(crate) user: String,
    pub(crate) database: String,
    /// The client's SCRAM `ClientKey`, when it logged in with SCRAM.
    pub(crate) client_key: Option<[u8; 32]>,
    /// The password itself, when the client sent it in clear (`plain`).
    pub(crate) password: Option<pgherd_auth::Secret>,
    /// The user as `auth_query` found it (not in the config).
    pub(crate) looked_up: Option<pgherd_config::User>,
    /// User `pgbouncer` on the console, from a process of pgherd's own
    /// operating system user on the Unix socket: an admin, no password
    /// (pgbouncer's rule).
    pub(crate) local_admin: bool,
}

/// How the startup phase ended without an authenticated client.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Tell the client why, then close.
    Fatal(ErrorFields),
    /// A CancelRequest: carry it out and close silently.
    Cancel { pid: i32, secret: Bytes },
    /// The client went away or broke the connection; nothing to say.
    Gone,
    /// The TLS handshake failed (a client that does not trust pgherd's
    /// certificate, or has no valid one of its own): nothing can be said.
    Handshake(std::io::Error),
    /// TLS is required and the client logged in without: tell it, then close.
    TlsRequired(ErrorFields),
    /// `client_login_timeout` passed (the client was told when it could be).
    TimedOut,
}

/// What a client hears when its login takes longer than `client_login_timeout`.
fn login_timeout() -> ErrorFields {
    ErrorFields::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        "client_login_timeout: login took too long",
    )
}

impl From<std::io::Error> for Refused {
    fn from(_: std::io::Error) -> Self {
        Refused::Gone
    }
}

fn auth_failed(user: &str) -> Refused {
    Refused::Fatal(ErrorFields::fatal(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    ))
}

fn protocol_violation(message: impl Into<String>) -> Refused {
    Refused::Fatal(ErrorFields::fatal(sqlstate::PROTOCOL_VIOLATION, message))
}

/// pgbouncer's `application_name_add_host`: the client's address after the
/// `application_name` it logged in with (not one it sets later), so the
/// server's logs and `pg_stat_activity` tell where a query came from.
fn add_host(startup: &mut StartupMessage, peer: ClientAddr) {
    let value = startup
        .params
        .iter_mut()
        .find(|(k, _)| k == "application_name")
        .map(|(_, v)| v);
    if let Some(app) = value {
        *app = format!("{app} - {}:{}", peer.host(), peer.port());
    }
}

/// `auth_type = "peer"`: the client's process runs as the operating system
/// user of the name it logs in with. PostgreSQL's error and code (28000)
/// when it does not, or when the client is not on a Unix-domain socket.
/// The uid's name is looked up in place (`getpwuid_r`), as pgbouncer does:
/// local files answer at once; a directory service behind NSS would hold
/// up the event loop for as long as it takes.
fn check_peer(peer: ClientAddr, user: &str) -> Result<(), Refused> {
    let os_user = peer
        .unix_uid()
        .and_then(|uid| nix::unistd::User::from_uid(uid.into()).ok().flatten());
    match os_user {
        Some(os_user) if os_user.name == user => Ok(()),
        _ => Err(Refused::Fatal(ErrorFields::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("peer authentication failed for user \"{user}\""),
        ))),
    }
}

/// The virtual database names that open the admin console: a login
/// question (the console has rules of its own), answered here so the
/// console's room is not needed to let a client in.
pub(crate) fn is_console(database: &str) -> bool {
    database == "pgbouncer" || database == "pgherd"
}

/// What logging clients in reads: the settings, the cluster (auth_query
/// asks the primary), the secret that seeds mock SCRAM exchanges for
/// unknown users, and the failure counters.
#[derive(Debug)]
pub(crate) struct Logins {
    pub(crate) settings: Arc<Settings>,
    cluster: Cluster,
    process_secret: [u8; 32],
    auth_query: AuthQuery,
    pub(crate) failures: LoginFailures,
}

impl Logins {
    pub(crate) fn new(settings: Arc<Settings>, cluster: Cluster) -> Logins {
        let mut process_secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut process_secret);
        Logins {
            settings,
            cluster,
            process_secret,
            auth_query: AuthQuery::default(),
            failures: LoginFailures::default(),
        }
    }
}

impl Client {
    /// A new connection, before anything is read: negotiates encryption
    /// (`client_tls_sslmode`). An SSLRequest is answered `S` and followed
    /// by a TLS handshake when TLS is on, `N` otherwise (and always on a
    /// Unix-domain socket, as PostgreSQL answers there); a GSSENCRequest
    /// always gets `N`. What else the client sent first stays in the
    /// buffer for [`Client::login`].
    /// Gives up at `deadline` (`client_login_timeout`).
    pub(crate) async fn accept(
        mut stream: Stream,
        peer: ClientAddr,
        tls: &ClientTls,
        deadline: tokio::time::Instant,
    ) -> Result<Client, Refused> {
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            // Every startup packet begins with its length and a code: eight
            // bytes, read exactly, so nothing meant for TLS is read here.
            let mut head = [0u8; 8];
            match tokio::time::timeout_at(deadline, stream.read_exact(&mut head)).await {
                Ok(read) => read?,
                Err(_) => {
                    let mut out = BytesMut::new();
                    login_timeout().encode(&mut out);
                    let _ = stream.write_all(&out).await;
                    return Err(Refused::TimedOut);
                }
            };
            match (EncryptionRequest::from_head(&head), stream) {
                (Some(EncryptionRequest::Ssl), Stream::Plain(mut tcp)) if tls.offered() => {
                    tcp.write_all(&[ENCRYPTION_ACCEPTED]).await?;
                    let stream = tokio::time::timeout_at(deadline, tls.accept(tcp))
                        .await
                        .map_err(|_| Refused::TimedOut)?
                        .map_err(Refused::Handshake)?;
                    return Ok(Client { stream, buf, peer });
                }
                (Some(_), mut plain) => {
                    plain.write_all(&[ENCRYPTION_REFUSED]).await?;
                    stream = plain;
                }
                (_, stream) => {
                    buf.extend_from_slice(&head);
                    return Ok(Client { stream, buf, peer });
                }
            }
        }
    }

    /// Writes `fields` as an ErrorResponse (best effort: the client may be gone).
    pub(crate) async fn send_error(&mut self, fields: &ErrorFields) {
        let mut out = BytesMut::new();
        fields.encode(&mut out);
        let _ = self.stream.send(&out).await;
    }

    async fn read_more(&mut self) -> Result<(), Refused> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(Refused::Gone);
        }
        Ok(())
    }

    /// Reads until a StartupMessage arrives. Encryption was negotiated in
    /// [`Client::accept`]; a request for it now (a second one, or one sent
    /// inside TLS) gets `N`, as PostgreSQL answers.
    pub(crate) async fn read_startup(&mut self) -> Result<StartupMessage, Refused> {
        loop {
            let packet = match decode_startup(&mut self.buf) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    self.read_more().await?;
                    continue;
                }
                Err(e) => return Err(protocol_violation(e.to_string())),
            };
            match packet {
                StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                    if !self.buf.is_empty() {
                        // Bytes after an SSLRequest and before our answer would
                        // be read as TLS by a real server (CVE-2021-23214).
                        return Err(protocol_violation("unexpected data after SSL request"));
                    }
                    self.stream.send(&[ENCRYPTION_REFUSED]).await?;
                }
                StartupPacket::Cancel { pid, secret } => {
                    return Err(Refused::Cancel { pid, secret })
                }
                StartupPacket::Startup(msg) => return Ok(msg),
            }
        }
    }

    async fn read_frame(&mut self) -> Result<Frame, Refused> {
        loop {
            match next_frame(&mut self.buf, LOGIN_MESSAGE_LIMIT) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => self.read_more().await?,
                Err(e) => return Err(protocol_violation(e.to_string())),
            }
        }
    }

    /// Reads the client's answer to an authentication request.
    async fn read_password_message(&mut self) -> Result<Bytes, Refused> {
        let frame = self.read_frame().await?;
        match frame.tag {
            frontend::PASSWORD => Ok(frame.body),
            frontend::TERMINATE => Err(Refused::Gone),
            other => Err(protocol_violation(format!(
                "expected password response, got message type {:?}",
                char::from(other)
            ))),
        }
    }

    /// Runs the startup phase: startup packet, `max_client_conn` (checked only
    /// now, so a CancelRequest still gets through when the proxy is full),
    /// protocol negotiation, authentication. On success `AuthenticationOk`
    /// has been sent; a client that is not done by `deadline`
    /// (`client_login_timeout`) is told so.
    pub(crate) async fn login(
        &mut self,
        logins: &Logins,
        over_limit: bool,
        deadline: tokio::time::Instant,
        channel_binding: Option<Arc<[u8]>>,
    ) -> Result<Box<Authenticated>, Refused> {
        let login = Box::pin(self.login_steps(logins, over_limit, channel_binding));
        match tokio::time::timeout_at(deadline, login).await {
            Ok(done) => done,
            Err(_) => {
                self.send_error(&login_timeout()).await;
                Err(Refused::TimedOut)
            }
        }
    }

    /// `channel_binding`: SCRAM's binding data for the certificate this
    /// client's TLS connection was accepted with (`None` without TLS).
    async fn login_steps(
        &mut self,
        logins: &Logins,
        over_limit: bool,
        channel_binding: Option<Arc<[u8]>>,
    ) -> Result<Box<Authenticated>, Refused> {
        let mut startup = self.read_startup().await?;
        let config = logins.settings.config();
        if config.general.application_name_add_host {
            add_host(&mut startup, self.peer);
        }
        let tls = logins.settings.tls();
        // As pgbouncer: a Unix-domain socket needs no encryption.
        if !self.stream.is_tls() && !self.peer.is_unix() && tls.client.required() {
            return Err(Refused::TlsRequired(ErrorFields::fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                format!(
                    "pgherd requires TLS: connect with sslmode=require or stronger \
                     (client_tls_sslmode = {})",
                    tls.client.mode().name()
                ),
            )));
        }
        drop(tls);
        if over_limit {
            return Err(Refused::Fatal(ErrorFields::fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                "no more connections allowed (max_client_conn)",
            )));
        }
        let mut out = BytesMut::new();
        if startup.minor_version > 0 || !startup.protocol_options.is_empty() {
            backend::negotiate_protocol_version(&mut out, 0, &startup.protocol_options);
        }
        let user = match startup.param("user") {
            Some(u) if !u.is_empty() => u.to_owned(),
            _ => {
                return Err(Refused::Fatal(ErrorFields::fatal(
                    sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                    "no PostgreSQL user name specified in startup packet",
                )))
            }
        };
        let database = startup
            .param("database")
            .filter(|d| !d.is_empty())
            .unwrap_or(&user)
            .to_owned();
        let local_admin = user == "pgbouncer"
            && is_console(&database)
            && self.peer.unix_uid() == Some(nix::unistd::getuid().as_raw());
        let auth_type = match local_admin {
            true => {
                tracing::info!(peer = %self.peer, "console access as pgbouncer from pgherd's own OS user");
                AuthType::Trust
            }
            false => match config.auth_type(&user) {
                AuthType::Hba => self.hba_method(&config, &user, &database)?,
                auth_type => auth_type,
            },
        };
        let looked_up = match config.users.get(&user) {
            None if config.general.auth_user.is_some()
                && !matches!(auth_type, AuthType::Trust | AuthType::Peer) =>
            {
                logins
                    .auth_query
                    .lookup((&logins.cluster, &logins.settings), &config, &user)
                    .await
            }
            _ => None,
        };
        let entry = config.users.get(&user).or(looked_up.as_ref());
        let verifier = entry.and_then(|u| u.verifier.clone());
        let md5 = entry.and_then(|u| u.md5.clone());
        let (mut client_key, mut password) = (None, None);
        match auth_type {
            AuthType::Trust => {}
            AuthType::ScramSha256 => {
                let binding = channel_binding.clone();
                client_key = Some(
                    self.scram(logins, &user, verifier, binding, &mut out)
                        .await?,
                );
            }
            // pgbouncer's rule: a user with only a SCRAM secret logs in with
            // SCRAM even when auth_type is md5.
            AuthType::Md5 if md5.is_none() && verifier.is_some() => {
                let binding = channel_binding.clone();
                client_key = Some(
                    self.scram(logins, &user, verifier, binding, &mut out)
                        .await?,
                );
            }
            AuthType::Md5 => self.md5(&user, md5, &mut out).await?,
            AuthType::Plain => {
                password = Some(self.plain(&user, verifier, md5, &mut out).await?);
            }
            AuthType::Peer => check_peer(self.peer, &user)?,
            // Resolved to the rule's method above.
            AuthType::Hba => return Err(auth_failed(&user)),
        }
        // `out` may still hold a NegotiateProtocolVersion (trust: nothing was sent yet).
        backend::authentication_ok(&mut out);
        self.stream.send(&out).await?;
        // Boxed: the session keeps it for its whole life, and moved inline
        // through its futures it would be copied into each of them.
        Ok(Box::new(Authenticated {
            startup,
            user,
            database,
            client_key,
            password,
            looked_up,
            local_admin,
        }))
    }

    /// `auth_type = "hba"`: the method of the first `auth_hba_file` line for
    /// this connection, or PostgreSQL's refusal (28000) when that line says
    /// `reject` or no line matches.
    fn hba_method(
        &self,
        config: &pgherd_config::Config,
        user: &str,
        database: &str,
    ) -> Result<AuthType, Refused> {
        let ip = match self.peer {
            ClientAddr::Tcp(a) => Some(a.ip()),
            ClientAddr::Unix { .. } => None,
        };
        let connection = pgherd_config::HbaConnection {
            ip,
            tls: self.stream.is_tls(),
            database,
            user,
        };
        let found = config
            .hba
            .as_ref()
            .and_then(|rules| rules.find(&connection));
        let host = ip.map_or("[local]".to_owned(), |ip| ip.to_string());
        let tls = if connection.tls {
            "TLS"
        } else {
            "no encryption"
        };
        let refused = |what: String| {
            Err(Refused::Fatal(ErrorFields::fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                format!(
                    "{what} for host \"{host}\", user \"{user}\", database \"{database}\", {tls}"
                ),
            )))
        };
        match found {
            Some((pgherd_config::HbaMethod::Auth(auth_type), _)) => Ok(auth_type),
            Some((pgherd_config::HbaMethod::Reject, line)) => {
                refused(format!("auth_hba_file line {line} rejects connection"))
            }
            None => refused("no auth_hba_file entry".to_owned()),
        }
    }

    /// md5 against the user's md5 secret. An unknown user is challenged all
    /// the same and fails the same way (28P01).
    async fn md5(
        &mut self,
        user: &str,
        secret: Option<pgherd_auth::Secret>,
        out: &mut BytesMut,
    ) -> Result<(), Refused> {
        let mut salt = [0u8; 4];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut salt);
        backend::authentication_md5(out, salt);
        self.stream.send(out).await?;
        out.clear();
        let body = self.read_password_message().await?;
        let answer = frontend::password(&body)
            .ok_or_else(|| protocol_violation("malformed password message"))?;
        let ok = secret.is_some_and(|s| {
            pgherd_auth::md5::md5_answer_matches(s.expose(), salt, answer.as_bytes())
        });
        if ok {
            Ok(())
        } else {
            Err(auth_failed(user))
        }
    }

    /// Cleartext password, checked against the user's SCRAM verifier or md5
    /// secret. Returns it: pgherd may log in to servers with it.
    async fn plain(
        &mut self,
        user: &str,
        verifier: Option<pgherd_auth::ScramVerifier>,
        md5: Option<pgherd_auth::Secret>,
        out: &mut BytesMut,
    ) -> Result<pgherd_auth::Secret, Refused> {
        backend::authentication_cleartext(out);
        self.stream.send(out).await?;
        out.clear();
        let body = self.read_password_message().await?;
        let password = frontend::password(&body)
            .ok_or_else(|| protocol_violation("malformed password message"))?
            .to_owned();
        let ok = match (&verifier, &md5) {
            (Some(v), _) => v.verify_password(&password),
            (None, Some(m)) => pgherd_auth::md5::md5_password_matches(m.expose(), user, &password),
            (None, None) => false,
        };
        if ok {
            Ok(pgherd_auth::Secret::new(password))
        } else {
            Err(auth_failed(user))
        }
    }

    /// SCRAM-SHA-256 against the user's verifier (a mock one for unknown
    /// users, so the reply does not tell whether the user exists).
    async fn scram(
        &mut self,
        logins: &Logins,
        user: &str,
        verifier: Option<pgherd_auth::ScramVerifier>,
        channel_binding: Option<Arc<[u8]>>,
        out: &mut BytesMut,
    ) -> Result<[u8; 32], Refused> {
        let failed = || {
            Refused::Fatal(ErrorFields::fatal(
                sqlstate::INVALID_PASSWORD,
                format!("password authentication failed for user \"{user}\""),
            ))
        };
        let scram_err = |e: ScramError| match e {
            ScramError::AuthFailed => failed(),
            ScramError::Protocol(m) => protocol_violation(m),
        };
        let mut server = ScramServer::new(verifier, user, &logins.process_secret)
            .with_channel_binding(channel_binding);
        backend::authentication_sasl(out, server.mechanisms());
        self.stream.send(out).await?;
        out.clear();

        let body = self.read_password_message().await?;
        let initial = frontend::SaslInitialResponse::parse(&body)
            .ok_or_else(|| protocol_violation("malformed SASLInitialResponse"))?;
        if server.select(initial.mechanism).is_err() {
            return Err(protocol_violation(format!(
                "client selected an invalid SASL authentication mechanism {:?}",
                initial.mechanism
            )));
        }
        let data = initial
            .data
            .ok_or_else(|| protocol_violation("missing SCRAM client-first message"))?;
        let server_first = server.client_first(data).map_err(scram_err)?;
        backend::authentication_sasl_continue(out, &server_first);
        self.stream.send(out).await?;
        out.clear();

        let body = self.read_password_message().await?;
        let (server_final, client_key) = server.client_final(&body).map_err(scram_err)?;
        backend::authentication_sasl_final(out, &server_final);
        self.stream.send(out).await?;
        out.clear();
        Ok(client_key)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pgherd_config::Config;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Logins for a config whose one node nothing answers on (so no
    /// auth_query can succeed), with `users` in `[users]`.
    fn logins(general: &str, users: &str) -> Logins {
        let text = format!(
            "[pgherd]\nprobe_user = \"p\"\n{general}\n\
             [[nodes]]\nname = \"a\"\nhost = \"127.0.0.1\"\nport = 1\n\
             [databases]\n\"*\" = {{}}\n[users]\n{users}\n"
        );
        let config = Config::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let tls = pgherd_tls::Contexts::new(&config.general).unwrap_or_else(|e| panic!("{e}"));
        let cluster = Cluster::start(&config, &tls.server).unwrap_or_else(|e| panic!("{e}"));
        Logins::new(Arc::new(Settings::new(config, tls)), cluster)
    }

    /// The next connection on `listener`, accepted as pgherd accepts one
    /// (encryption negotiated), with its login deadline a minute away.
    async fn accept_next(
        logins: &Logins,
        listener: &TcpListener,
    ) -> (Result<Client, Refused>, tokio::time::Instant) {
        let (tcp, peer) = listener.accept().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let tls = logins.settings.tls();
        let client = Client::accept(
            Stream::Plain(tcp),
            ClientAddr::Tcp(peer),
            &tls.client,
            deadline,
        )
        .await;
        (client, deadline)
    }

    /// A client connection accepted and logged in as pgherd does, while
    /// `client` (a tokio-postgres config) connects: what each side ended with.
    async fn login_with(
        logins: &Logins,
        client: tokio_postgres::Config,
        over_limit: bool,
    ) -> (
        Result<Box<Authenticated>, Refused>,
        Result<(), tokio_postgres::Error>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = client;
        client.host("127.0.0.1").port(addr.port()).dbname("app");
        let app = async {
            let (c, connection) = client.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            drop(c);
            Ok(())
        };
        let pgherd = async {
            let (accepted, deadline) = accept_next(logins, &listener).await;
            let mut c = accepted?;
            let done = c.login(logins, over_limit, deadline, None).await;
            match &done {
                Err(Refused::Fatal(fields)) => c.send_error(fields).await,
                // What the session would send next, in short: ready.
                Ok(_) => {
                    let mut out = BytesMut::new();
                    backend::ready_for_query(&mut out, backend::TxStatus::Idle);
                    c.stream.send(&out).await.unwrap();
                    // Until the client hangs up (its Terminate, then EOF).
                    let _ = c.stream.read_to_end(&mut Vec::new()).await;
                }
                Err(_) => {}
            }
            done
        };
        tokio::join!(pgherd, app)
    }

    fn app(password: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.user("app").password(password);
        c
    }

    #[tokio::test]
    async fn a_scram_login_with_the_right_password_is_authenticated() {
        let logins = logins("", "app = { password = \"secret\" }");
        let (ours, theirs) = login_with(&logins, app("secret"), false).await;
        let auth = ours.unwrap_or_else(|_| panic!("refused"));
        assert_eq!((auth.user.as_str(), auth.database.as_str()), ("app", "app"));
        assert!(theirs.is_ok(), "{theirs:?}");
    }

    #[tokio::test]
    async fn a_wrong_password_and_an_unknown_user_get_the_same_28p01() {
        let logins = logins("", "app = { password = \"secret\" }");
        for (user, password) in [("app", "wrong"), ("nobody", "secret")] {
            let mut client = app(password);
            client.user(user);
            let (ours, theirs) = login_with(&logins, client, false).await;
            match ours {
                Err(Refused::Fatal(f)) => assert_eq!(f.code, sqlstate::INVALID_PASSWORD, "{user}"),
                _ => panic!("{user}: not refused"),
            }
            let err = theirs.unwrap_err();
            assert_eq!(
                err.code().map(|c| c.code()),
                Some(sqlstate::INVALID_PASSWORD)
            );
        }
    }

    #[tokio::test]
    async fn over_max_client_conn_gets_53300() {
        let logins = logins("", "app = { password = \"secret\" }");
        let (ours, theirs) = login_with(&logins, app("secret"), true).await;
        assert!(matches!(ours, Err(Refused::Fatal(f)) if f.code == sqlstate::TOO_MANY_CONNECTIONS));
        let err = theirs.unwrap_err();
        assert_eq!(
            err.code().map(|c| c.code()),
            Some(sqlstate::TOO_MANY_CONNECTIONS)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_says_nothing_is_dropped_at_the_login_deadline() {
        let logins = logins("", "app = { password = \"secret\" }");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut silent = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_secs(60);
        let tls = logins.settings.tls();
        let accepted = Client::accept(
            Stream::Plain(tcp),
            ClientAddr::Tcp(peer),
            &tls.client,
            deadline,
        );
        // Past the deadline and still waiting: a failure, not a hang.
        let accepted = tokio::time::timeout(Duration::from_secs(120), accepted)
            .await
            .unwrap_or_else(|_| panic!("no timeout at the deadline"));
        assert!(matches!(accepted, Err(Refused::TimedOut)));
        assert!(start.elapsed() >= Duration::from_secs(60));
        // It was told why, in PostgreSQL's words for a startup timeout.
        let mut said = Vec::new();
        silent.read_to_end(&mut said).await.unwrap();
        let fields = ErrorFields::parse(pgherd_wire::frame::body(&said)).unwrap();
        assert_eq!(fields.code, sqlstate::PROTOCOL_VIOLATION);
    }

    #[tokio::test]
    async fn an_ssl_request_without_tls_is_answered_no_and_the_login_goes_on() {
        let logins = logins("", "app = { password = \"secret\" }");
        let mut client = app("secret");
        client.ssl_mode(tokio_postgres::config::SslMode::Prefer);
        let (ours, theirs) = login_with(&logins, client, false).await;
        assert!(ours.is_ok() && theirs.is_ok(), "{theirs:?}");
    }

    #[tokio::test]
    async fn garbage_instead_of_a_startup_packet_is_a_protocol_violation() {
        let logins = logins("", "app = { password = \"secret\" }");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut bad = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        // A length of 8 and a protocol version 9.9 nobody speaks.
        bad.write_all(&[0, 0, 0, 8, 0, 9, 0, 9]).await.unwrap();
        let (accepted, deadline) = accept_next(&logins, &listener).await;
        let mut c = accepted.unwrap_or_else(|_| panic!("accepted"));
        match c.login(&logins, false, deadline, None).await {
            Err(Refused::Fatal(f)) => assert_eq!(f.code, sqlstate::PROTOCOL_VIOLATION),
            _ => panic!("not refused"),
        }
    }
}
