//! LISTEN without pinning (`listen_fanout`): in transaction mode a
//! client's `LISTEN channel` is served by pgherd, not by a pooled server.
//! One server connection per database and user, on the primary and owned
//! by a [`Hub`], listens on every channel some client listens on, and each
//! notification it receives is queued for every client listening on that
//! channel, which writes it out between its transactions (as PostgreSQL
//! delivers them). The notification is forwarded as the server sent it, so
//! its PID is the real sender's.
//!
//! The hub follows the primary: when its connection fails, or its node is
//! no longer the primary, it reconnects and listens again on every
//! channel. Notifications sent while it has no connection are lost, as
//! they are for a direct connection whose server went away.
//!
//! Only a simple query of one `LISTEN`/`UNLISTEN` statement, between
//! transactions, is served here; inside a transaction (or beside other
//! statements) it goes to the server and pins the client as before.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pgherd_wire::backend::ErrorFields;
use pgherd_wire::{backend, frame, frontend, Frame};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

use crate::registry::ClientInfo;
use crate::upstream::server::ServerConn;

/// What a client asked for, read from the start of its buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request {
    Listen(String),
    Unlisten(String),
    UnlistenAll,
    /// `DISCARD ALL`: goes to the server as usual, and ends the client's
    /// listening too (PostgreSQL's `DISCARD ALL` includes `UNLISTEN *`).
    DiscardAll,
}

/// The request at the start of `buf`, if it is a whole simple query of one
/// `LISTEN`/`UNLISTEN` (or `DISCARD ALL`) statement, with the length of
/// its message.
pub(crate) fn request(buf: &[u8]) -> Option<(Request, usize)> {
    if buf.first() != Some(&frontend::QUERY) {
        return None;
    }
    let len = 1 + u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize;
    let msg = buf.get(..len)?;
    // Only statements that start with these letters are looked at further.
    let sql = frame::body(msg);
    let first = sql.iter().find(|b| !b.is_ascii_whitespace())?;
    if !matches!(first | 0x20, b'l' | b'u' | b'd') {
        return None;
    }
    let sql = std::str::from_utf8(sql).ok()?.trim_end_matches('\0').trim();
    let sql = sql.strip_suffix(';').unwrap_or(sql).trim_end();
    let (word, rest) = sql.split_once(char::is_whitespace)?;
    let rest = rest.trim();
    let request = if word.eq_ignore_ascii_case("listen") {
        Request::Listen(channel(rest)?)
    } else if word.eq_ignore_ascii_case("unlisten") && rest == "*" {
        Request::UnlistenAll
    } else if word.eq_ignore_ascii_case("unlisten") {
        Request::Unlisten(channel(rest)?)
    } else if word.eq_ignore_ascii_case("discard") && rest.eq_ignore_ascii_case("all") {
        Request::DiscardAll
    } else {
        return None;
    };
    Some((request, len))
}

/// A channel name as PostgreSQL folds it: a quoted identifier as written
/// (`""` for `"`), a bare one in lower case.
fn channel(text: &str) -> Option<String> {
    if let Some(quoted) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        let name = quoted.replace("\"\"", "\"");
        let lone_quote = quoted.replace("\"\"", "").contains('"');
        return (!name.is_empty() && !lone_quote).then_some(name);
    }
    let mut chars = text.chars();
    let first = chars.next()?;
    let word = (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    word.then(|| text.to_ascii_lowercase())
}

/// `"name"`, with `"` doubled.
fn quoted(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    crate::relay::params::quote_ident(&mut out, name);
    out
}

/// Notifications waiting for one client, and the client to wake for them.
#[derive(Debug)]
pub(crate) struct Inbox {
    queue: Mutex<VecDeque<Bytes>>,
    client: Arc<ClientInfo>,
}

impl Inbox {
    pub(crate) fn new(client: Arc<ClientInfo>) -> Arc<Inbox> {
        Arc::new(Inbox {
            queue: Mutex::new(VecDeque::new()),
            client,
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Bytes>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, notification: Bytes) {
        self.queue().push_back(notification);
        self.client.notify();
    }

    /// Every waiting notification, in order, as one write.
    pub(crate) fn take(&self) -> BytesMut {
        let mut out = BytesMut::new();
        for n in self.queue().drain(..) {
            out.extend_from_slice(&n);
        }
        out
    }
}

/// How a hub gets its connection: a server on the primary for its
/// database and user, and whether a node is still the primary.
pub(crate) trait Source: Send + Sync + 'static {
    fn open(&self) -> Pin<Box<dyn Future<Output = Result<ServerConn, ErrorFields>> + Send + '_>>;
    fn is_primary(&self, node: usize) -> bool;
}

enum Command {
    Listen(String, Arc<Inbox>, oneshot::Sender<Result<(), String>>),
    Unlisten(String, Arc<Inbox>),
    UnlistenAll(Arc<Inbox>),
}

/// The listening connection of one database and user (see the module
/// documentation). Its task ends when the hub is dropped.
#[derive(Debug)]
pub(crate) struct Hub {
    commands: mpsc::UnboundedSender<Command>,
    counts: Arc<Counts>,
}

/// What a hub's task tells the metrics.
#[derive(Debug, Default)]
struct Counts {
    channels: AtomicUsize,
    listeners: AtomicUsize,
    connected: AtomicBool,
    received: AtomicU64,
    delivered: AtomicU64,
}

/// One hub as `/metrics` shows it (`listen_fanout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutSnapshot {
    pub database: String,
    pub user: String,
    /// Channels some client listens on.
    pub channels: usize,
    /// (client, channel) pairs.
    pub listeners: usize,
    /// It has its connection on the primary.
    pub connected: bool,
    /// Notifications the connection received, and copies written to clients.
    pub received: u64,
    pub delivered: u64,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Listen(c, ..) => write!(f, "Listen({c})"),
            Command::Unlisten(c, _) => write!(f, "Unlisten({c})"),
            Command::UnlistenAll(_) => write!(f, "UnlistenAll"),
        }
    }
}

impl Hub {
    pub(crate) fn start(source: impl Source) -> Hub {
        let (commands, received) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        tokio::spawn(run(received, source, Arc::clone(&counts)));
        Hub { commands, counts }
    }

    /// Its figures now, named for `database` and `user`.
    pub(crate) fn snapshot(&self, database: &str, user: &str) -> FanoutSnapshot {
        let c = &self.counts;
        FanoutSnapshot {
            database: database.to_owned(),
            user: user.to_owned(),
            channels: c.channels.load(Ordering::Relaxed),
            listeners: c.listeners.load(Ordering::Relaxed),
            connected: c.connected.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
        }
    }

    /// Listens on `channel` for `inbox`: once this returns `Ok`, every
    /// notification on it is delivered.
    pub(crate) async fn listen(&self, channel: String, inbox: &Arc<Inbox>) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        let command = Command::Listen(channel, Arc::clone(inbox), done);
        if self.commands.send(command).is_err() {
            return Err("pgherd's listening connection is gone".into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("pgherd's listening connection is gone".into()))
    }

    pub(crate) fn unlisten(&self, channel: String, inbox: &Arc<Inbox>) {
        let _ = self
            .commands
            .send(Command::Unlisten(channel, Arc::clone(inbox)));
    }

    pub(crate) fn unlisten_all(&self, inbox: &Arc<Inbox>) {
        let _ = self.commands.send(Command::UnlistenAll(Arc::clone(inbox)));
    }
}

/// Who listens on what.
type Channels = HashMap<String, Vec<Arc<Inbox>>>;

impl Counts {
    fn update(&self, channels: &Channels, connected: bool) {
        let listeners = channels.values().map(Vec::len).sum();
        self.channels.store(channels.len(), Ordering::Relaxed);
        self.listeners.store(listeners, Ordering::Relaxed);
        self.connected.store(connected, Ordering::Relaxed);
    }
}

/// The hub's connection and its read buffer.
struct Connection {
    server: ServerConn,
    buf: BytesMut,
}

impl Connection {
    /// The next message. Cancel-safe: what was read stays in `buf`. (Read
    /// through a buffer of its own rather than `ServerConn`'s reader: the
    /// relay's reads inline better with fewer users of the same reader.)
    async fn next_frame(&mut self) -> Result<Frame, String> {
        loop {
            if let Some(frame) =
                pgherd_wire::next_frame(&mut self.buf, MAX_MESSAGE).map_err(|e| e.to_string())?
            {
                return Ok(frame);
            }
            let mut chunk = [0u8; 4096];
            match self.server.stream.read(&mut chunk).await {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// The largest message the hub reads (a notification's payload is at
/// most 8,000 bytes).
const MAX_MESSAGE: usize = 1 << 20;

/// How long a hub waits before connecting again after a failure.
const RETRY: Duration = Duration::from_secs(1);

async fn run(
    mut commands: mpsc::UnboundedReceiver<Command>,
    source: impl Source,
    counts: Arc<Counts>,
) {
    let mut channels = Channels::new();
    let mut conn: Option<Connection> = None;
    let mut check = tokio::time::interval(RETRY);
    loop {
        if conn.is_none() && !channels.is_empty() {
            // Lost: connect again and listen on every channel.
            let connected = connect(&source, channels.keys(), &counts).await;
            counts.update(&channels, connected.is_ok());
            match connected {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!("listen_fanout: reconnecting failed: {e}");
                    answer_offline(&mut commands, &mut channels, &e);
                    counts.update(&channels, false);
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        let command = match conn.as_mut() {
            None => match commands.recv().await {
                Some(c) => c,
                None => return,
            },
            Some(c) => tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => command,
                    None => return,
                },
                frame = c.next_frame() => {
                    match frame {
                        Ok(f) => deliver(&channels, f.tag, &f.body, &counts),
                        Err(e) => {
                            tracing::warn!("listen_fanout: connection lost: {e}");
                            conn = None;
                            counts.update(&channels, false);
                        }
                    }
                    continue;
                }
                _ = check.tick() => {
                    if !source.is_primary(c.server.node) {
                        tracing::info!("listen_fanout: following the primary");
                        if let Some(c) = conn.take() {
                            c.server.close_in_background();
                        }
                        counts.update(&channels, false);
                    }
                    continue;
                }
            },
        };
        match command {
            Command::Listen(channel, inbox, done) => {
                let answer = match join(&mut channels, &channel, inbox) {
                    None => Ok(()),
                    Some(inbox) => {
                        let listened =
                            listen_new(&mut conn, &source, &channel, (&channels, &counts)).await;
                        if listened.is_ok() {
                            channels.insert(channel, vec![inbox]);
                        }
                        listened
                    }
                };
                let _ = done.send(answer);
            }
            Command::Unlisten(channel, inbox) => {
                if forget(&mut channels, &channel, &inbox) {
                    unlisten(&mut conn, &channel, (&channels, &counts)).await;
                }
            }
            Command::UnlistenAll(inbox) => {
                for name in forget_all(&mut channels, &inbox) {
                    unlisten(&mut conn, &name, (&channels, &counts)).await;
                }
            }
        }
        if channels.is_empty() {
            // Nobody listens: the connection is not kept.
            if let Some(c) = conn.take() {
                c.server.close_in_background();
            }
        }
        counts.update(&channels, conn.is_some());
    }
}

/// Listens on a channel nobody listened on yet: on the connection, or on
/// one opened for it.
async fn listen_new(
    conn: &mut Option<Connection>,
    source: &impl Source,
    channel: &String,
    (channels, counts): (&Channels, &Counts),
) -> Result<(), String> {
    match conn.as_mut() {
        Some(c) => {
            let sql = format!("LISTEN {}", quoted(channel));
            query(c, &sql, channels, counts).await
        }
        None => {
            *conn = Some(connect(source, std::iter::once(channel), counts).await?);
            Ok(())
        }
    }
}

/// Answers the commands that came while there is no connection: a LISTEN
/// on a channel not listened on yet fails with `error`; the rest only
/// change who listens (the reconnect listens on what is left).
fn answer_offline(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    channels: &mut Channels,
    error: &str,
) {
    while let Ok(command) = commands.try_recv() {
        match command {
            Command::Listen(channel, inbox, done) => {
                let answer = match join(channels, &channel, inbox) {
                    None => Ok(()),
                    Some(_) => Err(error.to_owned()),
                };
                let _ = done.send(answer);
            }
            Command::Unlisten(channel, inbox) => {
                forget(channels, &channel, &inbox);
            }
            Command::UnlistenAll(inbox) => {
                forget_all(channels, &inbox);
            }
        }
    }
}

/// Adds `inbox` to `channel`'s listeners when the hub listens on it
/// already, once (a second LISTEN of a channel changes nothing, as in
/// PostgreSQL); gives `inbox` back when the channel is new.
fn join(channels: &mut Channels, channel: &str, inbox: Arc<Inbox>) -> Option<Arc<Inbox>> {
    let Some(listeners) = channels.get_mut(channel) else {
        return Some(inbox);
    };
    if !listeners.iter().any(|l| Arc::ptr_eq(l, &inbox)) {
        listeners.push(inbox);
    }
    None
}

/// Takes `inbox` off `channel`; true when nobody listens on it any more.
fn forget(channels: &mut Channels, channel: &str, inbox: &Arc<Inbox>) -> bool {
    let Some(listeners) = channels.get_mut(channel) else {
        return false;
    };
    listeners.retain(|l| !Arc::ptr_eq(l, inbox));
    if listeners.is_empty() {
        channels.remove(channel);
        return true;
    }
    false
}

/// Takes `inbox` off every channel; returns those nobody listens on any
/// more.
fn forget_all(channels: &mut Channels, inbox: &Arc<Inbox>) -> Vec<String> {
    let names: Vec<String> = channels.keys().cloned().collect();
    names
        .into_iter()
        .filter(|name| forget(channels, name, inbox))
        .collect()
}

/// Stops listening on a channel nobody listens on any more.
async fn unlisten(
    conn: &mut Option<Connection>,
    name: &str,
    (channels, counts): (&Channels, &Counts),
) {
    let Some(c) = conn.as_mut() else {
        return;
    };
    if let Err(e) = query(c, &format!("UNLISTEN {}", quoted(name)), channels, counts).await {
        tracing::warn!("listen_fanout: UNLISTEN failed, reconnecting: {e}");
        *conn = None;
    }
}

/// A connection on the primary that listens on `names`.
async fn connect<'a>(
    source: &impl Source,
    names: impl Iterator<Item = &'a String>,
    counts: &Counts,
) -> Result<Connection, String> {
    let server = source.open().await.map_err(|e| e.message)?;
    let mut c = Connection {
        server,
        buf: BytesMut::new(),
    };
    let sql: String = names.map(|n| format!("LISTEN {};", quoted(n))).collect();
    query(&mut c, &sql, &Channels::new(), counts).await?;
    Ok(c)
}

/// Runs `sql` and reads up to its ReadyForQuery, delivering the
/// notifications that arrive meanwhile.
async fn query(
    c: &mut Connection,
    sql: &str,
    channels: &Channels,
    counts: &Counts,
) -> Result<(), String> {
    let mut out = BytesMut::new();
    frontend::query(&mut out, sql);
    c.server
        .stream
        .send(&out)
        .await
        .map_err(|e| e.to_string())?;
    let mut failed = None;
    loop {
        let f = c.next_frame().await?;
        match f.tag {
            backend::READY_FOR_QUERY => return failed.map_or(Ok(()), Err),
            backend::ERROR_RESPONSE => {
                let message =
                    ErrorFields::parse(&f.body).map_or_else(|| "error".into(), |e| e.message);
                failed.get_or_insert(message);
            }
            tag => deliver(channels, tag, &f.body, counts),
        }
    }
}

/// A NotificationResponse to everyone listening on its channel, as the
/// server sent it.
fn deliver(channels: &Channels, tag: u8, body: &[u8], counts: &Counts) {
    if tag != backend::NOTIFICATION_RESPONSE {
        return;
    }
    counts.received.fetch_add(1, Ordering::Relaxed);
    let Some(channel) = body
        .get(4..)
        .and_then(|rest| pgherd_wire::cstr::split_cstr(rest))
        .map(|(channel, _)| channel)
    else {
        return;
    };
    let Some(listeners) = channels.get(channel) else {
        return;
    };
    let mut message = BytesMut::with_capacity(body.len() + 5);
    frame::put_message(&mut message, tag, &[body]);
    let message = message.freeze();
    for inbox in listeners {
        inbox.push(message.clone());
    }
    let copies = listeners.len() as u64;
    counts.delivered.fetch_add(copies, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query_message(sql: &str) -> BytesMut {
        let mut out = BytesMut::new();
        frontend::query(&mut out, sql);
        out
    }

    fn read(sql: &str) -> Option<Request> {
        let msg = query_message(sql);
        let (request, len) = request(&msg)?;
        assert_eq!(len, msg.len());
        Some(request)
    }

    #[test]
    fn listen_statements_of_their_own_are_read() {
        assert_eq!(read("LISTEN jobs"), Some(Request::Listen("jobs".into())));
        assert_eq!(
            read(" listen Jobs ; "),
            Some(Request::Listen("jobs".into()))
        );
        assert_eq!(
            read("LISTEN \"Mixed \"\"Case\"\"\""),
            Some(Request::Listen("Mixed \"Case\"".into()))
        );
        assert_eq!(
            read("UNLISTEN jobs"),
            Some(Request::Unlisten("jobs".into()))
        );
        assert_eq!(read("unlisten *;"), Some(Request::UnlistenAll));
        assert_eq!(read("DISCARD ALL"), Some(Request::DiscardAll));
        for other in [
            "LISTEN a; LISTEN b",
            "LISTEN a b",
            "LISTEN 1a",
            "LISTEN \"a\"b\"",
            "BEGIN; LISTEN a",
            "SELECT 1",
            "DISCARD TEMP",
            "LOAD 'x'",
            "UPDATE t SET a = 1",
        ] {
            assert_eq!(read(other), None, "{other}");
        }
    }

    #[test]
    fn only_a_whole_message_is_read() {
        let msg = query_message("LISTEN jobs");
        assert_eq!(request(&msg[..msg.len() - 1]), None);
        let mut two = msg.clone();
        two.extend_from_slice(&query_message("SELECT 1"));
        assert_eq!(
            request(&two),
            Some((Request::Listen("jobs".into()), msg.len()))
        );
    }
}
