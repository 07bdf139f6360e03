//! Who is connected, for the admin console (`SHOW CLIENTS`, `SHOW SERVERS`,
//! `KILL_CLIENT`, `KILL db`) and for `PAUSE`/`DISABLE` of a database.
//!
//! Clients and server connections register when they are set up and are
//! removed when their registration drops, so a session that ends any way
//! (error, panic, kill) leaves nothing behind. The maps are locked only then
//! and when the console reads them; on the data path a session updates its
//! own entry with relaxed atomic stores (its state, its server), a few per
//! transaction.
//!
//! What may not live here: decisions. The registry records and answers;
//! the console and the sessions act on what it says.

pub(crate) mod cancel;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use crate::clock::Micros;

use tokio::sync::Notify;

/// Where a cancel for one server connection goes: its address and the
/// key the server gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CancelTarget {
    pub(crate) addr: SocketAddr,
    pub(crate) pid: i32,
    pub(crate) secret: [u8; 4],
}

/// What a client is doing, pgbouncer's `SHOW CLIENTS` states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Linked to a server, or idle between transactions.
    Active,
    /// Waiting for a server (pool full, database paused, failover).
    Waiting,
}

/// A connected client, as the console shows it.
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub user: String,
    /// The database name the client asked for.
    pub database: String,
    pub addr: crate::listen::addr::ClientAddr,
    /// pgherd's end of a TCP connection; `None` on a Unix-domain socket.
    pub local_addr: Option<SocketAddr>,
    pub connected: SystemTime,
    pub application_name: String,
    state: AtomicU8,
    /// When it last asked for a server (µs after [`epoch`], plus one); 0: never.
    request_us: AtomicU64,
    /// Id of the server connection it holds; 0 when none.
    server: AtomicU64,
    killed: AtomicBool,
    /// `listen_fanout` queued a notification for it (see `fanout`).
    notified: AtomicBool,
    /// The session state it is pinned by (`session_state::Kinds` bits).
    pinned: std::sync::atomic::AtomicU16,
    /// The session's task, woken when something it must react to happened
    /// outside it: a kill, its node fenced, pgherd shutting down. One
    /// waker and flags the session checks, not a `Notify` or a watch
    /// channel per wait: a session waits for these around every
    /// transaction, and registering with a `Notify` takes its lock (it
    /// showed in a profile). Set once: a task's waker is the same at
    /// every poll, so it is kept (woken by reference) rather than
    /// registered again at each poll, which costs two locked
    /// compare-exchanges (an `AtomicWaker`'s), 14% of the relay's own
    /// time in a profile.
    waker: OnceLock<std::task::Waker>,
}

impl ClientInfo {
    /// The session state that pins it to its server, as names (empty: none).
    pub fn pinned_by(&self) -> Vec<&'static str> {
        let bits = self.pinned.load(Ordering::Relaxed);
        crate::relay::session_state::Kinds::from_bits(bits)
            .names()
            .collect()
    }

    pub(crate) fn set_pinned(&self, kinds: crate::relay::session_state::Kinds) {
        self.pinned.store(kinds.bits(), Ordering::Relaxed);
    }

    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Waiting,
            _ => ClientState::Active,
        }
    }

    /// It asked for a server at `asked` (a clock the caller read anyway):
    /// waiting until [`ClientInfo::served`].
    pub(crate) fn wants_server(&self, asked: Micros) {
        self.asked_for_server(asked);
        self.state
            .store(ClientState::Waiting as u8, Ordering::Relaxed);
    }

    /// It asked for a server at `asked` and got one at once (it stays
    /// `Active`: the console's `request_time`, nothing else).
    pub(crate) fn asked_for_server(&self, asked: Micros) {
        // Kept as the clock's own reading: +1, as 0 means "never asked".
        self.request_us.store(asked.as_u64() + 1, Ordering::Relaxed);
    }

    /// It got its server (or gave up waiting).
    pub(crate) fn served(&self) {
        self.state
            .store(ClientState::Active as u8, Ordering::Relaxed);
    }

    /// How long it has been waiting (when it is), and when it last asked
    /// for a server.
    pub fn waiting_since(&self) -> (Option<Duration>, Option<SystemTime>) {
        let us = self.request_us.load(Ordering::Relaxed);
        if us == 0 {
            return (None, None);
        }
        // Kept on the monotonic clock (no wall-clock read per
        // transaction), shown as wall time.
        let ago = Duration::from_micros(Micros::now().as_u64().saturating_sub(us - 1));
        let waited = (self.state() == ClientState::Waiting).then_some(ago);
        (waited, SystemTime::now().checked_sub(ago))
    }

    /// The server connection this client holds now, if any.
    pub fn server(&self) -> Option<u64> {
        Some(self.server.load(Ordering::Relaxed)).filter(|&id| id != 0)
    }

    pub(crate) fn set_server(&self, id: Option<u64>) {
        self.server.store(id.unwrap_or(0), Ordering::Relaxed);
    }

    /// Ends the session: it stops at once (mid-transaction included) with
    /// 57P01.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.nudge();
    }

    /// Wakes the session to look at the flags it watches (a fence, shutdown).
    pub(crate) fn nudge(&self) {
        if let Some(waker) = self.waker.get() {
            waker.wake_by_ref();
        }
    }

    /// Wakes `waker` at every [`ClientInfo::nudge`] or kill from now on.
    /// Only the session's own task registers, and the first waker is
    /// kept: the task's, the same at every poll.
    pub(crate) fn register(&self, waker: &std::task::Waker) {
        let kept = self.waker.get_or_init(|| waker.clone());
        debug_assert!(kept.will_wake(waker), "one task per session");
    }

    /// Completes when `done` says so, checked now and at each
    /// [`ClientInfo::nudge`] or kill. Only the session's own task waits.
    pub(crate) fn until<'a, T>(
        &'a self,
        mut done: impl FnMut() -> Option<T> + 'a,
    ) -> impl std::future::Future<Output = T> + 'a {
        std::future::poll_fn(move |cx| {
            if let Some(v) = done() {
                return std::task::Poll::Ready(v);
            }
            // Registered before the flags are read again, so a nudge in
            // between is not lost.
            self.register(cx.waker());
            match done() {
                Some(v) => std::task::Poll::Ready(v),
                None => std::task::Poll::Pending,
            }
        })
    }

    /// A notification waits for it: the session is woken to write it.
    pub(crate) fn notify(&self) {
        self.notified.store(true, Ordering::SeqCst);
        self.nudge();
    }

    /// Whether a notification was queued since the last call.
    pub(crate) fn take_notified(&self) -> bool {
        // A plain load first: the swap is a locked instruction, and this is
        // asked before every wait.
        self.notified.load(Ordering::Relaxed) && self.notified.swap(false, Ordering::SeqCst)
    }

    pub(crate) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Completes once [`ClientInfo::kill`] was called. Only the session's
    /// own task waits for this (one waker is kept).
    pub(crate) fn killed(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.until(|| self.is_killed().then_some(()))
    }
}

/// What a server connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// In the pool.
    Idle,
    /// Held by a client.
    Active,
}

/// An open server connection, as the console shows it.
#[derive(Debug)]
pub struct ServerInfo {
    pub id: u64,
    pub node: usize,
    pub user: String,
    pub database: String,
    pub addr: SocketAddr,
    pub local_addr: Option<SocketAddr>,
    pub connected: SystemTime,
    pub pid: i32,
    /// The backend's cancel secret.
    secret: [u8; 4],
    /// Id of the client holding it; 0 when idle.
    client: AtomicU64,
    /// `RECONNECT`: close it when its client releases it.
    close_needed: AtomicBool,
}

impl ServerInfo {
    pub fn state(&self) -> ServerState {
        match self.client() {
            Some(_) => ServerState::Active,
            None => ServerState::Idle,
        }
    }

    pub fn client(&self) -> Option<u64> {
        Some(self.client.load(Ordering::Relaxed)).filter(|&id| id != 0)
    }

    pub(crate) fn set_client(&self, id: Option<u64>) {
        self.client.store(id.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn close_needed(&self) -> bool {
        self.close_needed.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_close_needed(&self) {
        self.close_needed.store(true, Ordering::Relaxed);
    }

    /// Where a CancelRequest for its backend goes.
    pub(crate) fn cancel_target(&self) -> CancelTarget {
        CancelTarget {
            addr: self.addr,
            pid: self.pid,
            secret: self.secret,
        }
    }
}

/// Pause and disable switches of one database name (as clients ask for it).
#[derive(Debug, Default)]
pub struct DatabaseControl {
    paused: AtomicBool,
    disabled: AtomicBool,
    /// Servers held by this database's clients right now.
    in_use: AtomicUsize,
    /// Signalled on RESUME: clients waiting in `enter` go on.
    resumed: Notify,
    /// Signalled when `in_use` drops to 0 while paused: `PAUSE` returns.
    idle: Notify,
}

impl DatabaseControl {
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::SeqCst)
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        if !paused {
            self.resumed.notify_waiters();
        }
    }

    pub(crate) fn set_disabled(&self, disabled: bool) {
        self.disabled.store(disabled, Ordering::Relaxed);
    }

    /// Claims the right to use a server, waiting while the database is
    /// paused. The claim is counted before the pause flag is read, so a
    /// `PAUSE` that saw no server in use cannot be overtaken.
    /// Not paused (every transaction): two atomic operations, no waiter
    /// registered on the database's shared `Notify`.
    pub(crate) async fn enter(self: &Arc<Self>) -> InUse {
        loop {
            if let Some(in_use) = self.try_enter() {
                return in_use;
            }
            // Registered before the flag is read again, so a RESUME in
            // between is not missed.
            let notified = self.resumed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.paused.load(Ordering::SeqCst) {
                notified.await;
            }
        }
    }

    /// [`DatabaseControl::enter`] when the database is not paused; `None`
    /// (and no claim) when it is.
    pub(crate) fn try_enter(self: &Arc<Self>) -> Option<InUse> {
        self.in_use.fetch_add(1, Ordering::SeqCst);
        if !self.paused.load(Ordering::SeqCst) {
            return Some(InUse(Arc::clone(self)));
        }
        self.leave();
        None
    }

    fn leave(&self) {
        if self.in_use.fetch_sub(1, Ordering::SeqCst) == 1 && self.paused() {
            self.idle.notify_waiters();
        }
    }

    /// Waits until no client of this database holds a server (`PAUSE`).
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_use() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A claim on a database's servers (see [`DatabaseControl::enter`]).
#[derive(Debug)]
pub(crate) struct InUse(Arc<DatabaseControl>);

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// Every client, server connection and database switch.
#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    clients: Mutex<HashMap<u64, Arc<ClientInfo>>>,
    servers: Mutex<HashMap<u64, Arc<ServerInfo>>>,
    databases: Mutex<HashMap<String, Arc<DatabaseControl>>>,
    /// `PAUSE` without a database: databases first used later start paused.
    all_paused: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is one map operation: a poisoned map is whole.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes its entry from the registry when dropped.
#[derive(Debug)]
pub(crate) struct Registered<T> {
    registry: Arc<Registry>,
    pub(crate) info: Arc<T>,
    remove: fn(&Registry, u64),
    id: u64,
}

impl<T> Drop for Registered<T> {
    fn drop(&mut self) {
        (self.remove)(&self.registry, self.id);
    }
}

/// What a new client entry needs.
pub(crate) struct NewClient<'a> {
    pub(crate) user: &'a str,
    pub(crate) database: &'a str,
    pub(crate) addr: crate::listen::addr::ClientAddr,
    pub(crate) local_addr: Option<SocketAddr>,
    pub(crate) application_name: &'a str,
}

/// What a new server entry needs.
pub(crate) struct NewServer<'a> {
    pub(crate) node: usize,
    pub(crate) user: &'a str,
    pub(crate) database: &'a str,
    pub(crate) addr: SocketAddr,
    pub(crate) local_addr: Option<SocketAddr>,
    pub(crate) pid: i32,
    pub(crate) secret: [u8; 4],
}

impl Registry {
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn add_client(self: &Arc<Self>, c: NewClient<'_>) -> Registered<ClientInfo> {
        let id = self.id();
        let info = Arc::new(ClientInfo {
            id,
            user: c.user.to_owned(),
            database: c.database.to_owned(),
            addr: c.addr,
            local_addr: c.local_addr,
            connected: SystemTime::now(),
            application_name: c.application_name.to_owned(),
            state: AtomicU8::new(ClientState::Active as u8),
            request_us: AtomicU64::new(0),
            server: AtomicU64::new(0),
            killed: AtomicBool::new(false),
            notified: AtomicBool::new(false),
            pinned: std::sync::atomic::AtomicU16::new(0),
            waker: OnceLock::new(),
        });
        lock(&self.clients).insert(id, Arc::clone(&info));
        Registered {
            registry: Arc::clone(self),
            info,
            remove: |r, id| {
                lock(&r.clients).remove(&id);
            },
            id,
        }
    }

    pub(crate) fn add_server(self: &Arc<Self>, s: NewServer<'_>) -> Registered<ServerInfo> {
        let id = self.id();
        let info = Arc::new(ServerInfo {
            id,
            node: s.node,
            user: s.user.to_owned(),
            database: s.database.to_owned(),
            addr: s.addr,
            local_addr: s.local_addr,
            connected: SystemTime::now(),
            pid: s.pid,
            secret: s.secret,
            client: AtomicU64::new(0),
            close_needed: AtomicBool::new(false),
        });
        lock(&self.servers).insert(id, Arc::clone(&info));
        Registered {
            registry: Arc::clone(self),
            info,
            remove: |r, id| {
                lock(&r.servers).remove(&id);
            },
            id,
        }
    }

    /// Every client, by id.
    /// Wakes every session to look at its flags (see [`ClientInfo::nudge`]).
    pub(crate) fn nudge_all(&self) {
        for c in lock(&self.clients).values() {
            c.nudge();
        }
    }

    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = lock(&self.clients).values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Every open server connection, by id.
    pub fn servers(&self) -> Vec<Arc<ServerInfo>> {
        let mut v: Vec<_> = lock(&self.servers).values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
    }

    pub(crate) fn client(&self, id: u64) -> Option<Arc<ClientInfo>> {
        lock(&self.clients).get(&id).cloned()
    }

    pub(crate) fn server(&self, id: u64) -> Option<Arc<ServerInfo>> {
        lock(&self.servers).get(&id).cloned()
    }

    /// The switches of database `name`, created on first use.
    pub(crate) fn database(&self, name: &str) -> Arc<DatabaseControl> {
        let mut dbs = lock(&self.databases);
        if let Some(d) = dbs.get(name) {
            return Arc::clone(d);
        }
        let d = Arc::new(DatabaseControl::default());
        if self.all_paused.load(Ordering::SeqCst) {
            d.set_paused(true);
        }
        dbs.insert(name.to_owned(), Arc::clone(&d));
        d
    }

    /// Database names with switches, sorted.
    pub fn databases(&self) -> Vec<(String, Arc<DatabaseControl>)> {
        let mut v: Vec<_> = lock(&self.databases)
            .iter()
            .map(|(k, d)| (k.clone(), Arc::clone(d)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Pauses or resumes every database, including ones first used later.
    pub(crate) fn set_all_paused(&self, paused: bool) {
        self.all_paused.store(paused, Ordering::SeqCst);
        for (_, d) in self.databases() {
            d.set_paused(paused);
        }
    }

    pub fn all_paused(&self) -> bool {
        self.all_paused.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(r: &Arc<Registry>) -> Registered<ClientInfo> {
        r.add_client(NewClient {
            user: "u",
            database: "d",
            addr: crate::listen::addr::ClientAddr::Tcp("127.0.0.1:1".parse().unwrap()),
            local_addr: None,
            application_name: "",
        })
    }

    #[test]
    fn entries_leave_when_dropped() {
        let r = Arc::new(Registry::default());
        let a = client(&r);
        let b = client(&r);
        assert_eq!(r.clients().len(), 2);
        assert!(a.info.id < b.info.id);
        drop(a);
        assert_eq!(r.clients().len(), 1);
        assert!(r.client(b.info.id).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn pause_waits_for_servers_in_use_and_holds_new_ones() {
        let db = Arc::new(DatabaseControl::default());
        let busy = db.enter().await;
        db.set_paused(true);
        let mut drained = Box::pin(db.drained());
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut drained)
                .await
                .is_err(),
            "a server is still in use"
        );
        let waiting = tokio::spawn({
            let db = Arc::clone(&db);
            async move {
                let _in = db.enter().await;
            }
        });
        drop(busy);
        drained.await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "new work waits while paused");
        db.set_paused(false);
        waiting.await.unwrap();
        assert_eq!(db.in_use(), 0);
    }

    #[tokio::test]
    async fn kill_wakes_the_session() {
        let r = Arc::new(Registry::default());
        let c = client(&r);
        let info = Arc::clone(&c.info);
        let waiter = tokio::spawn(async move { info.killed().await });
        tokio::task::yield_now().await;
        r.client(c.info.id).unwrap().kill();
        waiter.await.unwrap();
        // Killed before anyone waits: still seen.
        c.info.killed().await;
    }
}
