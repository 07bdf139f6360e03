//! Cluster awareness: which node is the primary, which standbys may serve
//! reads — what haproxy plus the xinetd `pgsqlchk` script told each other in
//! the classic setup, done by pgherd itself with SQL.
//!
//! One task per node keeps a probe connection (tokio-postgres, as the probe
//! user) and runs the probe its server's version needs ([`probe::PROBE_SQL`],
//! or [`probe::PROBE_SQL_96`] on 9.6) every `probe_interval`, bounded by
//! `probe_timeout` (a hung node counts as a failed probe). Results go to one
//! evaluator task that owns the [`topology::Evaluator`], publishes each new
//! [`Topology`] on a `watch` channel (sessions read it without locks on the
//! data path) and broadcasts [`ClusterEvent`]s.
//!
//! [`Cluster::request_probe`] probes every node at once: the proxy calls it
//! when a server connection to the primary fails, so a failover is noticed in
//! one round trip rather than one interval.
//!
//! While the cluster is unsettled (no primary, or the primary's last probe
//! failed) probes run every `probe_fast_interval` instead (haproxy's
//! `fastinter`): a promotion is seen within that.
//!
//! With `state_file` set, the highest timeline seen is kept there (see
//! [`state`]) so fencing survives a pgherd restart.
#![forbid(unsafe_code)]

pub mod discovery;
pub mod event;
pub mod members;
pub mod probe;
pub mod state;
pub mod topology;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgherd_config::Config;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use tokio::sync::{broadcast, mpsc, watch};

pub use event::{ClusterEvent, Event, Outage, ProxyEvent, Role};
pub use members::{Member, Source, NODE_SLOTS};
pub use topology::{NodeStatus, ProbeSample, Thresholds, Topology};

/// The quickest discovery reads a cluster manager while the cluster is
/// unsettled: its API is a program of its own, not a probe.
const MIN_FAST_DISCOVERY: Duration = Duration::from_millis(250);

/// [`Cluster::primary_now`]'s stored value for "no primary".
const NO_PRIMARY: usize = usize::MAX;

/// Handle to the running probes. Cloning is cheap; dropping the last handle
/// does not stop the probes (they stop with the runtime).
#[derive(Debug, Clone)]
pub struct Cluster {
    topology: watch::Receiver<Arc<Topology>>,
    /// Each node's `fenced`, stored before the topology that says so is
    /// published: a relay checks this flag on every wake-up instead of
    /// subscribing to the topology for each transaction.
    fenced: Arc<[AtomicBool]>,
    /// The latest topology's primary ([`NO_PRIMARY`] when none), stored
    /// with `fenced`: the node every write-transaction starts by asking
    /// for, one atomic load where borrowing the topology takes and
    /// releases its lock.
    primary: Arc<AtomicUsize>,
    events: broadcast::Sender<Event>,
    schedule: Arc<probe::Schedule>,
    /// The evaluator and what it publishes to: probe results and member
    /// lists (see [`Cluster::set_members`]) are applied under this lock,
    /// one at a time.
    evaluation: Arc<Mutex<Evaluation>>,
    /// What failovers do to clients, counted by the proxy; the evaluator's
    /// task reports it with each failover.
    clients: Arc<ClientCounts>,
    /// With `discovery` on: how reading the manager goes.
    discovery: Option<Arc<Mutex<discovery::DiscoveryStatus>>>,
}

/// Running totals behind [`Outage`]: a failover reports the difference
/// since the old primary was elected.
#[derive(Debug, Default)]
struct ClientCounts {
    held: AtomicU64,
    failed: AtomicU64,
}

impl ClientCounts {
    fn now(&self) -> Outage {
        Outage {
            held: self.held.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

impl Cluster {
    /// Starts probing every node of `config` on the current tokio runtime,
    /// connecting with `tls` (`server_tls_*`).
    /// Fails only when the state file exists but cannot be read.
    pub fn start(config: &Config, tls: &pgherd_tls::ServerTls) -> std::io::Result<Cluster> {
        let probe = &config.general.probe();
        let state_file = config.general.state_file.clone();
        let remembered = match &state_file {
            Some(path) => state::load(path)?,
            None => None,
        };
        if let Some(r) = remembered {
            tracing::info!(
                "highest timeline seen before: {} (system identifier {})",
                r.timeline,
                r.system_identifier
            );
        }
        let configured: Vec<Member> = config
            .nodes
            .iter()
            .cloned()
            .map(Member::configured)
            .collect();
        let mut evaluator = topology::Evaluator::new(
            configured.clone(),
            Thresholds {
                rise: probe.rise,
                fall: probe.fall,
                max_lag_bytes: probe.max_replica_lag_bytes,
                max_lag: probe.max_replica_lag,
                orphan_timeout: probe.replica_orphan_timeout,
            },
            remembered,
        );
        if config.general.discovery == pgherd_config::Discovery::Patroni {
            evaluator.await_authority(Source::Patroni);
        }
        let (topo_tx, topo_rx) = watch::channel(Arc::new(evaluator.topology().clone()));
        let (events, _) = broadcast::channel(256);
        let schedule = Arc::new(probe::Schedule::new(probe));
        let (results_tx, results_rx) = mpsc::channel(NODE_SLOTS);
        let mut probes = Probes {
            running: Vec::new(),
            probe: probe.clone(),
            tls: tls.clone(),
            schedule: Arc::clone(&schedule),
            results: results_tx,
        };
        for (i, node) in config.nodes.iter().enumerate() {
            probes.start(i, node);
        }
        let fenced: Arc<[AtomicBool]> = (0..NODE_SLOTS).map(|_| AtomicBool::new(false)).collect();
        let primary = Arc::new(AtomicUsize::new(
            evaluator.topology().primary.unwrap_or(NO_PRIMARY),
        ));
        let clients = Arc::new(ClientCounts::default());
        let counted = clients.now();
        let evaluation = Arc::new(Mutex::new(Evaluation {
            saved: evaluator.remembered(),
            evaluator,
            sources: [(Source::Config, configured)].into(),
            probes,
            published: Published {
                topology: topo_tx,
                fenced: Arc::clone(&fenced),
                primary: Arc::clone(&primary),
                events: events.clone(),
            },
            clients: Arc::clone(&clients),
            counted,
            state_file,
        }));
        tokio::spawn(evaluate(Arc::clone(&evaluation), results_rx));
        let mut cluster = Cluster {
            topology: topo_rx,
            fenced,
            primary,
            events,
            schedule,
            evaluation,
            clients,
            discovery: None,
        };
        let g = &config.general;
        let reader = discovery::Reader::new(config, tls).map_err(std::io::Error::other)?;
        if let Some(reader) = reader {
            let status = Arc::new(Mutex::new(discovery::DiscoveryStatus {
                manager: reader.source(),
                last_read: None,
                last_error: None,
                failures: 0,
                disagreements: Vec::new(),
            }));
            cluster.discovery = Some(Arc::clone(&status));
            let pace = (
                g.discovery_interval,
                probe.fast_interval.max(MIN_FAST_DISCOVERY),
            );
            tokio::spawn(follow_manager(cluster.clone(), reader, pace, status));
        }
        Ok(cluster)
    }

    /// One reading of the cluster manager, applied at once: its members
    /// and, when its leader is the fencing authority, that leader (the only
    /// node that may be primary from now on: see [`topology::Authority`]),
    /// with when the manager was asked.
    pub(crate) fn take_reading(
        &self,
        manager: Source,
        members: Vec<Member>,
        authority: Option<(topology::Authority, std::time::Instant)>,
    ) {
        let mut evaluation = self.evaluation.lock().unwrap_or_else(|e| e.into_inner());
        let before = evaluation.evaluator.topology().version;
        let mut happened = evaluation.change_members(manager, members);
        if let Some((authority, read)) = authority {
            let now = std::time::Instant::now();
            let evaluator = &mut evaluation.evaluator;
            happened.extend(evaluator.set_authority(Some(authority), read, now));
        }
        evaluation.publish(before, happened);
    }

    /// How reading the cluster manager goes, with `discovery` on.
    pub fn discovery(&self) -> Option<discovery::DiscoveryStatus> {
        let status = self.discovery.as_ref()?;
        Some(status.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Logs `event` and announces it to every subscriber.
    pub(crate) fn announce(&self, event: ClusterEvent) {
        announce(&self.events, event);
    }

    /// The nodes `source` lists now (the configuration's after a RELOAD,
    /// a cluster manager's after discovery): nodes join and leave the
    /// topology accordingly (see [`members`]), published before this
    /// returns.
    pub fn set_members(&self, source: Source, nodes: Vec<Member>) {
        let mut evaluation = self.evaluation.lock().unwrap_or_else(|e| e.into_inner());
        evaluation.set_members(source, nodes);
    }

    /// The latest topology.
    pub fn topology(&self) -> Arc<Topology> {
        Arc::clone(&self.topology.borrow())
    }

    /// The address, weight and priority of the node in `slot` (removed
    /// ones included: their servers may still be open).
    pub fn node(&self, slot: usize) -> Option<Arc<pgherd_config::Node>> {
        self.topology
            .borrow()
            .nodes
            .get(slot)
            .map(|n| Arc::clone(&n.node))
    }

    /// How many node slots are in use (removed nodes' included).
    pub fn slots(&self) -> usize {
        self.topology.borrow().nodes.len()
    }

    /// The name of the node in `slot`, for messages.
    pub fn node_name(&self, slot: usize) -> String {
        (self.topology.borrow().nodes.get(slot)).map_or_else(String::new, |n| n.name.clone())
    }

    /// Whether node `i` is fenced in the latest topology (one atomic load).
    pub fn is_fenced(&self, i: usize) -> bool {
        self.fenced
            .get(i)
            .is_some_and(|f| f.load(Ordering::Acquire))
    }

    /// The latest topology's primary (one atomic load).
    pub fn primary_now(&self) -> Option<usize> {
        Some(self.primary.load(Ordering::Acquire)).filter(|&p| p != NO_PRIMARY)
    }

    /// A receiver that sees every new topology.
    pub fn watch(&self) -> watch::Receiver<Arc<Topology>> {
        self.topology.clone()
    }

    /// Events from now on, the cluster's and the proxy's.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Logs `event` and announces it to every subscriber.
    pub fn publish(&self, event: ProxyEvent) {
        match &event {
            ProxyEvent::Started { .. } | ProxyEvent::PoolRecovered { .. } => {
                tracing::info!("{event}")
            }
            ProxyEvent::ConfigReloaded { kept, .. } if kept.is_empty() => {
                tracing::info!("{event}")
            }
            _ => tracing::warn!("{event}"),
        }
        // No subscriber is fine: the event is logged.
        let _ = self.events.send(Event::Proxy(event));
    }

    /// A transaction waited for a primary (reported with the next failover).
    pub fn count_held(&self) {
        self.clients.held.fetch_add(1, Ordering::Relaxed);
    }

    /// A transaction failed for want of a primary: its server was lost, or
    /// none came within `primary_wait_timeout`.
    pub fn count_failed(&self) {
        self.clients.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Probes every node now instead of at the next interval.
    pub fn request_probe(&self) {
        self.schedule.reprobe.notify_waiters();
    }

    /// What `pick` chooses in the current topology, without waiting.
    pub fn pick_now<T>(&self, pick: impl Fn(&Topology) -> Option<T>) -> Option<T> {
        pick(&self.topology.borrow())
    }

    /// Waits up to `timeout` for a topology that satisfies `pick`, probing
    /// at once if the current one does not. Returns what `pick` chose, or
    /// the last topology seen.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        pick: impl Fn(&Topology) -> Option<T>,
    ) -> Result<T, Arc<Topology>> {
        // The common case, on every checkout: no receiver to clone.
        if let Some(t) = pick(&self.topology.borrow()) {
            return Ok(t);
        }
        let mut rx = self.topology.clone();
        if let Some(t) = pick(&rx.borrow_and_update()) {
            return Ok(t);
        }
        self.request_probe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {
                    if let Some(t) = pick(&rx.borrow_and_update()) {
                        return Ok(t);
                    }
                }
                _ => return Err(self.topology()),
            }
        }
    }
}

/// The probe task of each slot, and what starting one takes.
struct Probes {
    running: Vec<Option<tokio::task::JoinHandle<()>>>,
    probe: pgherd_config::Probe,
    tls: pgherd_tls::ServerTls,
    schedule: Arc<probe::Schedule>,
    results: mpsc::Sender<(usize, Result<ProbeSample, String>)>,
}

impl Probes {
    fn start(&mut self, slot: usize, node: &pgherd_config::Node) {
        self.stop(slot);
        let target = probe::ProbeTarget::new(node, &self.probe, &self.tls);
        let task = tokio::spawn(probe::run(
            slot,
            target,
            Arc::clone(&self.schedule),
            self.results.clone(),
        ));
        if self.running.len() <= slot {
            self.running.resize_with(slot + 1, || None);
        }
        self.running[slot] = Some(task);
    }

    fn stop(&mut self, slot: usize) {
        if let Some(task) = self.running.get_mut(slot).and_then(Option::take) {
            task.abort();
        }
    }
}

/// Where a new topology goes: the watch channel, the atomics the data path
/// reads, the event stream.
struct Published {
    topology: watch::Sender<Arc<Topology>>,
    fenced: Arc<[AtomicBool]>,
    primary: Arc<AtomicUsize>,
    events: broadcast::Sender<Event>,
}

/// The evaluator with each source's member list, the probes, and what
/// publishing a topology needs.
struct Evaluation {
    evaluator: topology::Evaluator,
    sources: std::collections::BTreeMap<Source, Vec<Member>>,
    probes: Probes,
    published: Published,
    /// What failovers did to clients: counted by the proxy, reported with
    /// each failover as the difference since `counted`.
    clients: Arc<ClientCounts>,
    /// The clients' counts when the current (or last) primary was elected:
    /// a failover reports what happened since, the trouble that led to it
    /// included (clients notice a dead primary before the probes do).
    counted: Outage,
    state_file: Option<PathBuf>,
    /// What the state file holds.
    saved: Option<topology::Remembered>,
}

impl std::fmt::Debug for Evaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluation")
            .field("topology", self.evaluator.topology())
            .finish_non_exhaustive()
    }
}

impl Evaluation {
    /// Takes one probe result.
    fn take_probe(&mut self, node: usize, result: Result<ProbeSample, String>) {
        let before = self.evaluator.topology().version;
        let happened = self
            .evaluator
            .apply(node, result, std::time::Instant::now());
        self.publish(before, happened);
    }

    /// Takes `source`'s new list and publishes the result.
    fn set_members(&mut self, source: Source, list: Vec<Member>) {
        let before = self.evaluator.topology().version;
        let happened = self.change_members(source, list);
        self.publish(before, happened);
    }

    /// Takes `source`'s new list: the merged members, probes started and
    /// stopped to match. Returns the events, for [`Evaluation::publish`].
    fn change_members(&mut self, source: Source, list: Vec<Member>) -> Vec<ClusterEvent> {
        self.sources.insert(source, list);
        let configured = self
            .sources
            .get(&Source::Config)
            .map_or(&[][..], Vec::as_slice);
        let discovered: Vec<Member> = (self.sources.iter())
            .filter(|(s, _)| **s != Source::Config)
            .flat_map(|(_, list)| list.iter().cloned())
            .collect();
        let desired = members::merge(configured, &discovered);
        let (changes, happened) = self
            .evaluator
            .set_members(&desired, std::time::Instant::now());
        for change in changes {
            match change {
                members::Change::Join(slot, m) => self.probes.start(slot, &m.node),
                members::Change::Leave(slot) => self.probes.stop(slot),
                members::Change::Update(..) => {}
            }
        }
        happened
    }

    /// Publishes the evaluator's topology if it is newer than `before`,
    /// keeps the probe pace and the state file up to date, and announces
    /// `happened`.
    fn publish(&mut self, before: u64, happened: Vec<ClusterEvent>) {
        let evaluator = &self.evaluator;
        let out = &self.published;
        if evaluator.topology().version != before {
            for (flag, node) in out.fenced.iter().zip(&evaluator.topology().nodes) {
                flag.store(node.fenced, Ordering::Release);
            }
            out.primary.store(
                evaluator.topology().primary.unwrap_or(NO_PRIMARY),
                Ordering::Release,
            );
            out.topology
                .send_replace(Arc::new(evaluator.topology().clone()));
        }
        let schedule = &self.probes.schedule;
        let unsettled = evaluator.topology().unsettled();
        let was = schedule.unsettled.swap(unsettled, Ordering::Relaxed);
        if unsettled && !was {
            // Wake the probes sleeping a whole interval.
            schedule.reprobe.notify_waiters();
        }
        let remembered = evaluator.remembered();
        if let (Some(path), Some(r)) = (&self.state_file, remembered) {
            if remembered != self.saved {
                // Rare (a new timeline): a blocking write is fine here, and
                // the probes wait for it rather than race it.
                match state::save(path, &r) {
                    Ok(()) => self.saved = remembered,
                    Err(e) => tracing::error!(
                        "cannot write state file {}: {e}; a restarted pgherd may not fence \
                         an old primary on timeline < {}",
                        path.display(),
                        r.timeline
                    ),
                }
            }
        }
        let now = self.clients.now();
        let mut primary_changed = false;
        for mut event in happened {
            match &mut event {
                ClusterEvent::Failover { clients, .. } => {
                    *clients = Outage {
                        held: now.held - self.counted.held,
                        failed: now.failed - self.counted.failed,
                    }
                }
                ClusterEvent::PrimaryChanged { to: Some(_), .. } => primary_changed = true,
                _ => {}
            }
            announce(&out.events, event);
        }
        if primary_changed {
            self.counted = now;
        }
    }
}

/// Reads the manager every `interval` (every `fast_interval` while the
/// cluster is unsettled: a failover's new leader is read at once), forever.
async fn follow_manager(
    cluster: Cluster,
    reader: discovery::Reader,
    (interval, fast_interval): (Duration, Duration),
    status: Arc<Mutex<discovery::DiscoveryStatus>>,
) {
    let manager = reader.source();
    let mut judge = discovery::Judge::default();
    let mut skipped_said: Vec<(String, String)> = Vec::new();
    let mut pause = pgherd_timerfd::Sleeper::new();
    loop {
        let asked = std::time::Instant::now();
        let read = reader.read(&cluster.topology()).await;
        let failing = status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error
            .is_some();
        match read {
            Ok(listing) => {
                for skip in &listing.skipped {
                    if !skipped_said.contains(skip) {
                        tracing::warn!(
                            "{} lists node {}, not used: {}",
                            manager.as_str(),
                            skip.0,
                            skip.1
                        );
                    }
                }
                skipped_said = listing.skipped.clone();
                let authority = listing.authority.then(|| {
                    let leader = listing.leader.as_ref().and_then(|name| {
                        let m = listing.members.iter().find(|m| m.node.name == *name)?;
                        Some(Arc::new(m.node.clone()))
                    });
                    (topology::Authority { manager, leader }, asked)
                });
                cluster.take_reading(manager, listing.members.clone(), authority);
                let found = discovery::disagreements(&cluster.topology(), &listing);
                let events = judge.next(manager, found);
                let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                s.last_read = Some(std::time::SystemTime::now());
                s.last_error = None;
                s.disagreements = judge.reported.values().cloned().collect();
                drop(s);
                if failing {
                    cluster.announce(ClusterEvent::DiscoveryRecovered { manager });
                }
                for event in events {
                    cluster.announce(event);
                }
            }
            Err(reason) => {
                let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                s.failures += 1;
                s.last_error = Some(reason.clone());
                drop(s);
                if !failing {
                    cluster.announce(ClusterEvent::DiscoveryFailed { manager, reason });
                }
            }
        }
        let unsettled = cluster.topology().unsettled();
        pause
            .sleep(if unsettled { fast_interval } else { interval })
            .await;
    }
}

/// Logs `event` (see [`ClusterEvent::is_routine`]) and sends it to every
/// subscriber; none is fine, the event is logged.
fn announce(events: &broadcast::Sender<Event>, event: ClusterEvent) {
    if event.is_routine() {
        tracing::info!("{event}");
    } else {
        tracing::warn!("{event}");
    }
    let _ = events.send(Event::Cluster(event));
}

/// Applies every probe result, in the order they come.
async fn evaluate(
    evaluation: Arc<Mutex<Evaluation>>,
    mut results: mpsc::Receiver<(usize, Result<ProbeSample, String>)>,
) {
    while let Some((node, result)) = results.recv().await {
        let mut evaluation = evaluation.lock().unwrap_or_else(|e| e.into_inner());
        evaluation.take_probe(node, result);
    }
}
