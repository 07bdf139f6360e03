//! Tells people when the cluster changes: a JSON `POST` to each webhook, a
//! message to a Telegram chat and a run of each `exec` program, for every
//! cluster event (`[notify]`).
//!
//! The setups pgherd replaces send these alerts from shell scripts hooked
//! into repmgr or keepalived, which only see what their own host saw.
//! pgherd sees what it routes by: its probes decide which node is the
//! primary, which standbys serve reads and which node is fenced, so its
//! events say what clients actually get.
//!
//! Delivery never holds up the proxy or the probes. The probes publish
//! events on a broadcast channel; one task here reads them and hands each
//! destination its own copy through a bounded queue, and each destination
//! has a task that sends them in order, trying again after 1 s and 5 s when
//! the other end fails (a connection error, a timeout, HTTP 429 or 5xx; any
//! other answer is final), or later when a 429 says how long to wait
//! (`Retry-After`, or Telegram's `retry_after`; at most a minute). A dead or slow destination delays only its own
//! queue; past [`QUEUE`] waiting notifications, new ones for it are
//! dropped and logged.

#![forbid(unsafe_code)]

mod exec;
mod flap;
mod http;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::StatusCode;
use pgherd_cluster::{Event, ProxyEvent};
use pgherd_config::Notify;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_rustls::TlsConnector;

use pgherd_http::Endpoint;

/// Notifications that may wait for one destination.
pub const QUEUE: usize = 64;

/// The waits before the second and third attempt at a delivery.
const RETRY_WAITS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(5)];

/// The longest wait an endpoint's `Retry-After` can ask for: a rate limit
/// that long is not worth holding later notifications for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why notifications could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `setting` names the URL (`webhook_urls[1]`): a webhook's URL is
    /// often a secret, and is not repeated.
    #[error("notify.{setting}: {why}")]
    Url { setting: String, why: String },
    #[error("notify.ca_file: {0}")]
    Tls(#[from] pgherd_tls::TlsError),
}

/// One place notifications go. (No `Debug`: the endpoint's path may hold
/// a secret, Telegram's token always does.)
struct Destination {
    /// For logs and metrics: a webhook's URL without its path (paths often
    /// hold secrets), "telegram", or "exec" and the program.
    label: String,
    channel: Channel,
    counts: Arc<Counts>,
}

/// How a destination is reached.
enum Channel {
    /// The event as JSON, `POST`ed.
    Webhook(Endpoint),
    /// A Bot API `sendMessage` for one chat.
    Telegram { endpoint: Endpoint, chat: String },
    /// A program and its arguments (see [`exec`]).
    Exec(Vec<String>),
}

impl Channel {
    fn endpoint(&self) -> Option<&Endpoint> {
        match self {
            Channel::Webhook(endpoint) | Channel::Telegram { endpoint, .. } => Some(endpoint),
            Channel::Exec(_) => None,
        }
    }
}

/// What became of one destination's notifications so far.
#[derive(Debug, Default)]
pub struct Counts {
    /// Accepted (HTTP 2xx).
    delivered: AtomicU64,
    /// Answered with an error another attempt would not change.
    refused: AtomicU64,
    /// Still failing after the last attempt.
    lost: AtomicU64,
    /// Not queued: [`QUEUE`] were waiting already.
    dropped: AtomicU64,
}

/// The outcomes [`Counts::outcomes`] reports, in its order.
pub const OUTCOMES: [&str; 4] = ["delivered", "refused", "lost", "dropped"];

impl Counts {
    /// Each outcome's count, in [`OUTCOMES`]' order, with its name.
    pub fn outcomes(&self) -> [(&'static str, u64); 4] {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counts = [
            n(&self.delivered),
            n(&self.refused),
            n(&self.lost),
            n(&self.dropped),
        ];
        std::array::from_fn(|i| (OUTCOMES[i], counts[i]))
    }
}

/// The destinations' counters, for `/metrics`, and what is still to be
/// sent, for [`Notifications::finish`].
#[derive(Debug, Clone, Default)]
pub struct Notifications {
    destinations: Arc<Vec<(String, Arc<Counts>)>>,
    pending: Arc<Pending>,
}

/// Notifications queued and not yet delivered, refused or lost, and
/// whether the `stopped` event has been queued.
#[derive(Debug, Default)]
struct Pending {
    queued: AtomicU64,
    stopped: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
}

impl Pending {
    fn add(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    fn done(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    fn saw_stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    fn settled(&self) -> bool {
        self.stopped.load(Ordering::Acquire) && self.queued.load(Ordering::Acquire) == 0
    }
}

impl Notifications {
    /// Each destination's label (as in the logs) and counters.
    pub fn destinations(&self) -> impl Iterator<Item = (&str, &Counts)> {
        self.destinations
            .iter()
            .map(|(label, counts)| (label.as_str(), &**counts))
    }

    /// Waits, at most `within`, until the `stopped` event has been queued
    /// and everything queued is delivered or given up: so that pgherd's
    /// last words reach people before the process ends.
    pub async fn finish(&self, within: Duration) {
        if self.destinations.is_empty() {
            return;
        }
        let settled = async {
            loop {
                let changed = self.pending.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.pending.settled() {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(within, settled).await.is_err() {
            let left = self.pending.queued.load(Ordering::Relaxed);
            tracing::warn!("stopping with {left} notifications not sent");
        }
    }
}

impl Destination {
    /// The request body announcing `message`, an event of type `kind`.
    fn body(
        &self,
        kind: &str,
        node: Option<&str>,
        message: &str,
        instance: &str,
        at: u64,
    ) -> Bytes {
        let text = if instance.is_empty() {
            format!("pgherd: {message}")
        } else {
            format!("pgherd {instance}: {message}")
        };
        let json = match &self.channel {
            Channel::Telegram { chat, .. } => serde_json::json!({
                "chat_id": chat,
                "text": text,
                "disable_web_page_preview": true,
            }),
            // `text`: what Slack, Mattermost and Rocket.Chat incoming
            // webhooks show as it is.
            Channel::Webhook(_) | Channel::Exec(_) => serde_json::json!({
                "text": text,
                "source": "pgherd",
                "instance": instance,
                "event": kind,
                "node": node,
                "message": message,
                "time": at,
            }),
        };
        Bytes::from(json.to_string())
    }
}

/// The destinations `settings` names.
fn destinations(settings: &Notify) -> Result<Vec<Destination>, NotifyError> {
    let parse = |url: &str, setting: String| {
        Endpoint::parse(url).map_err(|why| NotifyError::Url { setting, why })
    };
    let mut all = Vec::new();
    for (i, url) in settings.webhook_urls.iter().enumerate() {
        let endpoint = parse(url, format!("webhook_urls[{i}]"))?;
        all.push(Destination {
            label: format!("webhook {}", endpoint.origin()),
            channel: Channel::Webhook(endpoint),
            counts: Arc::default(),
        });
    }
    if let Some(t) = &settings.telegram {
        let url = format!("{}/bot{}/sendMessage", t.api_url, t.bot_token);
        let endpoint = parse(&url, "telegram_api_url".into())?;
        all.push(Destination {
            label: "telegram".into(),
            channel: Channel::Telegram {
                endpoint,
                chat: t.chat_id.clone(),
            },
            counts: Arc::default(),
        });
    }
    for argv in &settings.exec {
        all.push(Destination {
            // The program only: arguments may hold secrets.
            label: format!("exec {}", argv.first().map_or("", String::as_str)),
            channel: Channel::Exec(argv.clone()),
            counts: Arc::default(),
        });
    }
    Ok(all)
}

/// Starts announcing `events` as `settings` says, on the current runtime,
/// and returns the destinations' counters (none: nothing was started). The
/// tasks end when the events' sender is dropped.
pub fn start(
    settings: &Notify,
    events: broadcast::Receiver<Event>,
) -> Result<Notifications, NotifyError> {
    let (destinations, tls) = prepare(settings)?;
    let counters = Notifications {
        destinations: Arc::new(
            destinations
                .iter()
                .map(|d| (d.label.clone(), Arc::clone(&d.counts)))
                .collect(),
        ),
        pending: Arc::default(),
    };
    if destinations.is_empty() {
        return Ok(counters);
    }
    let mut queues = Vec::with_capacity(destinations.len());
    for destination in destinations {
        let destination = Arc::new(destination);
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(
            Arc::clone(&destination),
            rx,
            (tls.clone(), settings.timeout),
            Arc::clone(&counters.pending),
        ));
        queues.push((destination, tx));
    }
    let announcer = Announcer {
        wanted: settings.events.clone(),
        instance: settings.instance.clone(),
        queues,
        pending: Arc::clone(&counters.pending),
    };
    tokio::spawn(dispatch(events, announcer));
    Ok(counters)
}

/// Sends `message` once to every destination of `settings`, as a `test`
/// event (`pgherd notify-test`), and says for each, by its label, whether
/// it was delivered. No retries: the point is to see what fails.
pub async fn send_test(
    settings: &Notify,
    message: &str,
) -> Result<Vec<(String, Result<(), String>)>, NotifyError> {
    let (destinations, tls) = prepare(settings)?;
    let mut results = Vec::with_capacity(destinations.len());
    for d in destinations {
        let body = d.body("test", None, message, &settings.instance, unix_now());
        let result = match attempt(&d, body, tls.as_ref(), settings.timeout).await {
            Outcome::Delivered => Ok(()),
            Outcome::Refused(why) => Err(format!("refused: {why}")),
            Outcome::Failed(why, _) => Err(format!("failed: {why}")),
        };
        results.push((d.label, result));
    }
    Ok(results)
}

/// Checks `settings` as [`start`] reads them (URLs, the CA file) without
/// starting anything (`pgherd check`); the number of destinations.
pub fn check(settings: &Notify) -> Result<usize, NotifyError> {
    Ok(prepare(settings)?.0.len())
}

/// The destinations and, when one is `https://`, the TLS connector.
fn prepare(settings: &Notify) -> Result<(Vec<Destination>, Option<TlsConnector>), NotifyError> {
    let destinations = destinations(settings)?;
    let tls = connector(settings, &destinations)?;
    Ok((destinations, tls))
}

/// The TLS connector, when a destination is `https://`.
fn connector(
    settings: &Notify,
    destinations: &[Destination],
) -> Result<Option<TlsConnector>, NotifyError> {
    let https = |d: &Destination| d.channel.endpoint().is_some_and(|e| e.https);
    Ok(match destinations.iter().any(https) {
        true => Some(pgherd_tls::https_connector(&settings.ca_file)?),
        false => None,
    })
}

/// One delivery attempt, within `timeout` (connecting included).
async fn attempt(
    destination: &Destination,
    body: Bytes,
    tls: Option<&TlsConnector>,
    timeout: Duration,
) -> Outcome {
    let endpoint = match &destination.channel {
        Channel::Exec(argv) => return exec::run(&destination.label, argv, &body, timeout).await,
        Channel::Webhook(endpoint) | Channel::Telegram { endpoint, .. } => endpoint,
    };
    let sent = tokio::time::timeout(timeout, http::post(endpoint, body, tls)).await;
    outcome(sent, timeout)
}

/// Where [`dispatch`] puts notifications.
struct Announcer {
    /// Event kinds announced; empty: all.
    wanted: Vec<String>,
    instance: String,
    queues: Vec<(Arc<Destination>, mpsc::Sender<Bytes>)>,
    pending: Arc<Pending>,
}

impl Announcer {
    fn wants(&self, event: &Event) -> bool {
        self.wanted.is_empty() || self.wanted.iter().any(|w| w == event.kind())
    }

    /// Queues `message` for every destination.
    fn queue(&self, kind: &str, node: Option<&str>, message: &str) {
        let at = unix_now();
        for (destination, queue) in &self.queues {
            let body = destination.body(kind, node, message, &self.instance, at);
            self.pending.add();
            if queue.try_send(body).is_err() {
                self.pending.done();
                destination.counts.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "{}: notification dropped, {QUEUE} are waiting: {message}",
                    destination.label
                );
            }
        }
    }
}

/// Reads the events, queues the wanted ones for every destination, and
/// summarises flapping nodes (see [`flap`]).
async fn dispatch(mut events: broadcast::Receiver<Event>, out: Announcer) {
    let mut flaps = flap::Flaps::default();
    loop {
        let steady_check = flaps.next_check();
        let received = tokio::select! {
            received = events.recv() => received,
            () = sleep_until(steady_check) => {
                for s in flaps.steady(tokio::time::Instant::now()) {
                    out.queue(s.kind, Some(&s.node), &s.message);
                }
                continue;
            }
        };
        let event = match received {
            Ok(event) => event,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!("{n} events were not notified (too many at once)");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if out.wants(&event) {
            match flaps.admit(&event, tokio::time::Instant::now()) {
                flap::Verdict::Pass => out.queue(event.kind(), event.node(), &event.to_string()),
                flap::Verdict::Summarise(s) => out.queue(s.kind, Some(&s.node), &s.message),
                flap::Verdict::Hold => {}
            }
        }
        if matches!(event, Event::Proxy(ProxyEvent::Stopped { .. })) {
            out.pending.saw_stop();
        }
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends one destination's notifications in order.
async fn deliver(
    destination: Arc<Destination>,
    mut queue: mpsc::Receiver<Bytes>,
    (tls, timeout): (Option<TlsConnector>, Duration),
    pending: Arc<Pending>,
) {
    while let Some(body) = queue.recv().await {
        send(&destination, body, tls.as_ref(), timeout).await;
        pending.done();
    }
}

/// Sends one notification, up to three times.
async fn send(
    destination: &Destination,
    body: Bytes,
    tls: Option<&TlsConnector>,
    timeout: Duration,
) {
    let label = &destination.label;
    let counts = &destination.counts;
    let mut waits = RETRY_WAITS.iter();
    loop {
        let sent = attempt(destination, body.clone(), tls, timeout).await;
        let (failure, asked) = match sent {
            Outcome::Delivered => {
                counts.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("{label}: notification delivered");
                break;
            }
            Outcome::Refused(why) => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("{label}: notification refused ({why}), not sent again");
                break;
            }
            Outcome::Failed(why, asked) => (why, asked),
        };
        match waits.next() {
            Some(&planned) => {
                let wait = next_wait(planned, asked);
                tracing::info!(
                    "{label}: notification failed ({failure}), trying again in {wait:?}"
                );
                tokio::time::sleep(wait).await;
            }
            None => {
                counts.lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "{label}: notification lost after {} attempts: {failure}",
                    RETRY_WAITS.len() + 1
                );
                break;
            }
        }
    }
}

/// What became of one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// An answer that another attempt would not change (a bad token, a
    /// chat that does not exist, a URL that is not found).
    Refused(String),
    /// Worth another attempt: no answer, HTTP 429 or a server error; with
    /// how long the endpoint asked to wait, if it did.
    Failed(String, Option<Duration>),
}

fn outcome(
    sent: Result<Result<http::Answer, pgherd_http::HttpError>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> Outcome {
    match sent {
        Ok(Ok(a)) if a.status.is_success() => Outcome::Delivered,
        Ok(Ok(a)) if a.status == StatusCode::TOO_MANY_REQUESTS || a.status.is_server_error() => {
            Outcome::Failed(format!("HTTP {}", a.status), a.retry_after)
        }
        Ok(Ok(a)) => Outcome::Refused(format!("HTTP {}", a.status)),
        Ok(Err(e)) => Outcome::Failed(e.to_string(), None),
        Err(_) => Outcome::Failed(format!("no answer within {timeout:?}"), None),
    }
}

/// The wait before the next attempt: the planned one, or longer when the
/// endpoint asked (up to [`MAX_RETRY_AFTER`]).
fn next_wait(planned: Duration, asked: Option<Duration>) -> Duration {
    asked.map_or(planned, |a| planned.max(a.min(MAX_RETRY_AFTER)))
}

/// When an event was seen: seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgherd_cluster::ClusterEvent;
    use pgherd_config::Telegram;

    fn settings() -> Notify {
        Notify {
            webhook_urls: vec!["https://hooks.example.com/services/SECRET".into()],
            exec: Vec::new(),
            telegram: Some(Telegram {
                bot_token: "123:TOKEN".into(),
                chat_id: "-100200".into(),
                api_url: "http://127.0.0.1:8081".into(),
            }),
            events: Vec::new(),
            instance: String::new(),
            ca_file: "/nonexistent".into(),
            timeout: Duration::from_secs(1),
            pool_saturated_after: None,
            login_failure_burst: 0,
        }
    }

    fn failover() -> ClusterEvent {
        ClusterEvent::PrimaryChanged {
            from: Some("pg0".into()),
            to: Some("pg1".into()),
        }
    }

    fn announcer(
        wanted: Vec<String>,
        instance: &str,
        queues: Vec<(Arc<Destination>, mpsc::Sender<Bytes>)>,
    ) -> Announcer {
        Announcer {
            wanted,
            instance: instance.into(),
            queues,
            pending: Arc::default(),
        }
    }

    fn json(b: &Bytes) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn labels_keep_secrets_out_of_logs() {
        let d = destinations(&settings()).unwrap();
        assert_eq!(d[0].label, "webhook https://hooks.example.com:443");
        assert_eq!(d[1].label, "telegram");
        let mut v6 = settings();
        v6.webhook_urls = vec!["http://[::1]:9000/SECRET".into()];
        assert_eq!(
            destinations(&v6).unwrap()[0].label,
            "webhook http://[::1]:9000"
        );
        assert_eq!(
            format!("{:?}", settings().telegram),
            "Some(Telegram { chat_id: \"-100200\", api_url: \"http://127.0.0.1:8081\", .. })"
        );
    }

    #[test]
    fn a_webhook_gets_the_event_as_json_with_a_chat_friendly_text() {
        let d = destinations(&settings()).unwrap();
        let body = json(&d[0].body(
            "primary_changed",
            Some("pg1"),
            &failover().to_string(),
            "",
            1_700_000_000,
        ));
        assert_eq!(body["text"], "pgherd: primary changed: pg0 -> pg1");
        assert_eq!(body["event"], "primary_changed");
        assert_eq!(body["node"], "pg1", "the new primary");
        assert_eq!(body["message"], "primary changed: pg0 -> pg1");
        assert_eq!(body["source"], "pgherd");
        assert_eq!(body["instance"], "");
        assert_eq!(body["time"], 1_700_000_000);
        let named = json(&d[0].body(
            "primary_changed",
            Some("pg1"),
            &failover().to_string(),
            "edge-1",
            0,
        ));
        assert_eq!(named["text"], "pgherd edge-1: primary changed: pg0 -> pg1");
    }

    #[test]
    fn telegram_gets_send_message_for_its_chat() {
        let d = destinations(&settings()).unwrap();
        assert_eq!(
            d[1].channel.endpoint(),
            Some(&Endpoint::parse("http://127.0.0.1:8081/bot123:TOKEN/sendMessage").unwrap())
        );
        let body = json(&d[1].body(
            "primary_changed",
            Some("pg1"),
            &failover().to_string(),
            "",
            0,
        ));
        assert_eq!(body["chat_id"], "-100200");
        assert_eq!(body["text"], "pgherd: primary changed: pg0 -> pg1");
    }

    #[test]
    fn a_bad_url_or_missing_roots_stop_the_start() {
        let mut s = settings();
        s.webhook_urls = vec!["https://h.example/ok".into(), "http://".into()];
        let (_tx, rx) = broadcast::channel(4);
        let err = start(&s, rx).unwrap_err().to_string();
        assert!(err.starts_with("notify.webhook_urls[1]: "), "{err}");
        assert!(!err.contains("h.example"), "{err}");

        // An https:// URL needs the CA bundle.
        let (_tx, rx) = broadcast::channel(4);
        let err = start(&settings(), rx).unwrap_err().to_string();
        assert!(
            err.contains("notify.ca_file") && err.contains("/nonexistent"),
            "{err}"
        );
    }

    #[test]
    fn only_429_and_server_errors_are_tried_again() {
        let t = Duration::from_secs(1);
        let answer = |status, retry_after| {
            Ok(Ok(http::Answer {
                status,
                retry_after,
            }))
        };
        assert_eq!(outcome(answer(StatusCode::OK, None), t), Outcome::Delivered);
        assert_eq!(
            outcome(answer(StatusCode::NO_CONTENT, None), t),
            Outcome::Delivered
        );
        let asked = Some(Duration::from_secs(3));
        assert_eq!(
            outcome(answer(StatusCode::TOO_MANY_REQUESTS, asked), t),
            Outcome::Failed("HTTP 429 Too Many Requests".into(), asked)
        );
        assert!(matches!(
            outcome(answer(StatusCode::BAD_GATEWAY, None), t),
            Outcome::Failed(_, None)
        ));
        assert!(matches!(
            outcome(answer(StatusCode::NOT_FOUND, None), t),
            Outcome::Refused(_)
        ));
        assert!(matches!(
            outcome(answer(StatusCode::UNAUTHORIZED, None), t),
            Outcome::Refused(_)
        ));
    }

    #[tokio::test]
    async fn an_endpoint_that_never_answers_is_a_failure_worth_retrying() {
        // Accepts the connection, reads nothing, answers nothing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });
        let mut s = settings();
        s.webhook_urls = vec![format!("http://127.0.0.1:{port}/hook")];
        s.telegram = None;
        let d = destinations(&s).unwrap().remove(0);
        let timeout = Duration::from_millis(200);
        let sent = attempt(&d, Bytes::from_static(b"{}"), None, timeout).await;
        assert_eq!(sent, Outcome::Failed("no answer within 200ms".into(), None));
        held.abort();
    }

    #[test]
    fn a_retry_waits_as_long_as_asked_within_reason() {
        let s = Duration::from_secs;
        assert_eq!(next_wait(s(1), None), s(1));
        assert_eq!(next_wait(s(1), Some(s(4))), s(4));
        assert_eq!(next_wait(s(5), Some(s(2))), s(5));
        assert_eq!(next_wait(s(1), Some(s(3600))), MAX_RETRY_AFTER);
    }

    #[tokio::test]
    async fn dispatch_queues_the_wanted_events_for_every_destination() {
        let mut s = settings();
        s.webhook_urls = vec!["http://127.0.0.1:1/a".into(), "http://127.0.0.1:1/b".into()];
        s.telegram = None;
        let ds = destinations(&s).unwrap();
        let (events_tx, events_rx) = broadcast::channel(16);
        let mut rxs = Vec::new();
        let mut queues = Vec::new();
        for d in ds {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.push((Arc::new(d), tx));
            rxs.push(rx);
        }
        let wanted = vec!["primary_changed".to_owned()];
        let task = tokio::spawn(dispatch(events_rx, announcer(wanted, "x", queues)));
        events_tx
            .send(Event::Cluster(ClusterEvent::NodeUp { node: "pg2".into() }))
            .unwrap();
        events_tx.send(Event::Cluster(failover())).unwrap();
        drop(events_tx);
        task.await.unwrap();
        for rx in &mut rxs {
            let body = json(&rx.recv().await.unwrap());
            assert_eq!(body["event"], "primary_changed");
            assert_eq!(body["node"], "pg1", "the new primary");
            // node_up was not wanted, and nothing else came.
            assert!(rx.recv().await.is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_node_is_summarised_and_its_end_announced_once_it_keeps_still() {
        let mut s = settings();
        s.webhook_urls = vec!["http://127.0.0.1:1/a".into()];
        s.telegram = None;
        let d = Arc::new(destinations(&s).unwrap().remove(0));
        let (events_tx, events_rx) = broadcast::channel(64);
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(dispatch(
            events_rx,
            announcer(Vec::new(), "", vec![(d, tx)]),
        ));
        for i in 0..8 {
            let node = "pg1".to_owned();
            let event = match i % 2 {
                0 => ClusterEvent::NodeDown {
                    node,
                    reason: "refused".into(),
                },
                _ => ClusterEvent::NodeUp { node },
            };
            events_tx.send(Event::Cluster(event)).unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let mut kinds = Vec::new();
        for _ in 0..flap::LIMIT + 1 {
            kinds.push(json(&rx.recv().await.unwrap())["event"].clone());
        }
        assert_eq!(
            kinds[..flap::LIMIT],
            ["node_down", "node_up", "node_down", "node_up"]
        );
        assert_eq!(kinds[flap::LIMIT], "flapping");
        // Nothing more while it flaps, then the end, once it has kept still.
        tokio::time::sleep(flap::WINDOW - Duration::from_secs(20)).await;
        assert!(rx.try_recv().is_err(), "held back");
        tokio::time::sleep(Duration::from_secs(20)).await;
        let ended = json(&rx.recv().await.unwrap());
        assert_eq!(ended["event"], "flapping_ended");
        assert_eq!(ended["node"], "pg1");
        assert!(
            ended["message"]
                .as_str()
                .unwrap()
                .contains("3 changes held back"),
            "{ended}"
        );
        drop(events_tx);
        task.await.unwrap();
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let mut s = settings();
        s.webhook_urls = vec!["http://127.0.0.1:1/a".into()];
        s.telegram = None;
        let d = Arc::new(destinations(&s).unwrap().remove(0));
        let counts = Arc::clone(&d.counts);
        let (events_tx, events_rx) = broadcast::channel(16);
        // Room for one, and nobody delivering.
        let (tx, mut rx) = mpsc::channel(1);
        let task = tokio::spawn(dispatch(
            events_rx,
            announcer(Vec::new(), "", vec![(d, tx)]),
        ));
        events_tx.send(Event::Cluster(failover())).unwrap();
        events_tx
            .send(Event::Cluster(ClusterEvent::SplitBrainResolved))
            .unwrap();
        drop(events_tx);
        task.await.unwrap();
        assert_eq!(json(&rx.recv().await.unwrap())["event"], "primary_changed");
        assert_eq!(counts.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn every_event_kind_can_be_named_in_the_config() {
        let events = [
            ClusterEvent::NodeUp { node: "a".into() },
            ClusterEvent::NodeDown {
                node: "a".into(),
                reason: "r".into(),
            },
            ClusterEvent::RoleChanged {
                node: "a".into(),
                from: pgherd_cluster::Role::Primary,
                to: pgherd_cluster::Role::Standby,
            },
            failover(),
            ClusterEvent::Fenced {
                node: "a".into(),
                reason: "r".into(),
            },
            ClusterEvent::Unfenced { node: "a".into() },
            ClusterEvent::SplitBrainDetected {
                primaries: vec!["a".into(), "b".into()],
            },
            ClusterEvent::SplitBrainResolved,
            ClusterEvent::LagOverThreshold { node: "a".into() },
            ClusterEvent::LagUnderThreshold { node: "a".into() },
            ClusterEvent::Orphaned { node: "a".into() },
            ClusterEvent::OrphanEnded {
                node: "a".into(),
                serves_reads: false,
            },
            ClusterEvent::Failover {
                from: "a".into(),
                to: "b".into(),
                without_primary: std::time::Duration::from_secs(3),
                clients: pgherd_cluster::Outage::default(),
            },
            ClusterEvent::NoPrimary {
                without_primary: std::time::Duration::from_secs(10),
            },
            ClusterEvent::Switchover {
                node: "a".into(),
                primary: "b".into(),
            },
            ClusterEvent::NodeAdded {
                node: "a".into(),
                source: pgherd_cluster::Source::Repmgr,
            },
            ClusterEvent::NodeRemoved {
                node: "a".into(),
                source: pgherd_cluster::Source::Config,
            },
            ClusterEvent::ManagerDisagrees {
                node: "a".into(),
                manager: pgherd_cluster::Source::Repmgr,
                manager_says: pgherd_cluster::Role::Primary,
                probes_say: pgherd_cluster::Role::Standby,
            },
            ClusterEvent::ManagerAgrees {
                node: "a".into(),
                manager: pgherd_cluster::Source::Repmgr,
            },
            ClusterEvent::DiscoveryFailed {
                manager: pgherd_cluster::Source::Patroni,
                reason: "r".into(),
            },
            ClusterEvent::DiscoveryRecovered {
                manager: pgherd_cluster::Source::Patroni,
            },
        ];
        let proxy = [
            ProxyEvent::Started {
                listeners: vec!["127.0.0.1:5432".into()],
            },
            ProxyEvent::Draining { clients: 1 },
            ProxyEvent::Stopped { cut_off: 0 },
            ProxyEvent::ConfigReloaded {
                applied: Vec::new(),
                kept: Vec::new(),
            },
            ProxyEvent::PoolSaturated {
                pool: "db/u@pg0".into(),
                waiting: 1,
                size: 1,
                waited: Duration::from_secs(1),
            },
            ProxyEvent::PoolRecovered {
                pool: "db/u@pg0".into(),
                saturated: Duration::from_secs(1),
            },
            ProxyEvent::ClientLimitReached { limit: 1 },
            ProxyEvent::LoginFailureBurst {
                failures: 1,
                window: Duration::from_secs(60),
            },
        ];
        let kinds: Vec<&str> = (events.into_iter().map(Event::Cluster))
            .chain(proxy.into_iter().map(Event::Proxy))
            .map(|e| e.kind())
            .collect();
        assert_eq!(kinds, pgherd_config::NOTIFY_EVENTS);
    }

    /// Settings whose only destination runs `script` (a shell script
    /// written to a temporary directory, kept alive by the returned guard).
    fn exec_settings(script: &str, args: &str) -> (Notify, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        let mut s = settings();
        s.webhook_urls.clear();
        s.telegram = None;
        s.exec = vec![std::iter::once(path.display().to_string())
            .chain(args.split_whitespace().map(str::to_owned))
            .map(|a| a.replace("DIR", &dir.path().display().to_string()))
            .collect()];
        s.exec[0].insert(0, "/bin/sh".into());
        (s, dir)
    }

    #[tokio::test]
    async fn a_hook_gets_the_event_as_json_environment_and_placeholders() {
        let script = "cat > \"$1\"/stdin.json; \
                      echo \"$PGHERD_EVENT $PGHERD_NODE $2 $3\" > \"$1\"/said; echo done";
        let (mut s, dir) = exec_settings(script, "DIR %e %n");
        s.instance = "edge".into();
        let (events_tx, events_rx) = broadcast::channel(4);
        let counters = start(&s, events_rx).unwrap();
        events_tx.send(Event::Cluster(failover())).unwrap();
        let said = dir.path().join("said");
        for _ in 0..500 {
            if std::fs::read_to_string(&said).is_ok_and(|t| t.ends_with('\n')) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let said = std::fs::read_to_string(&said).unwrap();
        assert_eq!(said, "primary_changed pg1 primary_changed pg1\n");
        let stdin = std::fs::read(dir.path().join("stdin.json")).unwrap();
        let body = json(&Bytes::from(stdin));
        assert_eq!(body["instance"], "edge");
        assert_eq!(body["message"], "primary changed: pg0 -> pg1");
        let (label, counts) = counters.destinations().next().unwrap();
        assert!(label.starts_with("exec "), "{label}");
        for _ in 0..500 {
            if counts.outcomes()[0].1 == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(counts.outcomes()[0], ("delivered", 1));
    }

    #[tokio::test]
    async fn a_hook_that_fails_is_refused_and_one_that_hangs_is_cut_off() {
        let (s, _dir) = exec_settings("echo oops >&2; exit 3", "");
        let tried = send_test(&s, "hello").await.unwrap();
        let outcome = tried[0].1.as_ref().unwrap_err();
        assert!(
            outcome.starts_with("refused") && outcome.contains('3'),
            "{outcome}"
        );

        // Cut off at the timeout, with the sleep it started.
        let (mut s, _dir) = exec_settings("sleep 600", "");
        s.timeout = Duration::from_millis(300);
        let tried = send_test(&s, "hello").await.unwrap();
        let outcome = tried[0].1.as_ref().unwrap_err();
        assert!(
            outcome.starts_with("failed") && outcome.contains("still ran"),
            "{outcome}"
        );

        let mut s = settings();
        s.webhook_urls.clear();
        s.telegram = None;
        s.exec = vec![vec!["/nonexistent/hook".into()]];
        let tried = send_test(&s, "hello").await.unwrap();
        assert!(tried[0].1.as_ref().unwrap_err().starts_with("refused"));
    }

    #[tokio::test]
    async fn finish_waits_for_the_stopped_event_to_be_delivered() {
        // A slow hook: finish must wait for it, not return at once.
        let (s, dir) = exec_settings("sleep 0.3; cat >> \"$1\"", "DIR/said");
        let (events_tx, events_rx) = broadcast::channel(16);
        let notifications = start(&s, events_rx).unwrap();
        let stopped = ProxyEvent::Stopped { cut_off: 0 };
        events_tx.send(Event::Proxy(stopped)).unwrap();
        notifications.finish(Duration::from_secs(60)).await;
        let said = std::fs::read_to_string(dir.path().join("said")).unwrap();
        let body: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
        assert_eq!(body["event"], "stopped");
        // Nothing was configured: nothing to wait for.
        let mut none = settings();
        (none.webhook_urls, none.telegram) = (Vec::new(), None);
        let (_tx, rx) = broadcast::channel(1);
        let idle = start(&none, rx).unwrap();
        tokio::time::timeout(
            Duration::from_secs(60),
            idle.finish(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    }
}
