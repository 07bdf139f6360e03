//! A real Prometheus (the Debian package) scrapes a running pgherd with
//! the deploy kit's alert rules: every PromQL expression of the Grafana
//! dashboard evaluates to data on what pgherd really serves, and when the
//! primary is stopped the `PgherdNoPrimary` alert fires. Then the standby
//! is promoted: the dashboard's failover annotation sees the new timeline
//! and the alert resolves.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgherd_integration_tests::*;

/// The Prometheus process; stopped by PID when the test ends.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

impl Prometheus {
    /// Scrapes `target` every second with the deploy kit's rules.
    async fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let rules = deploy_dir().join("prometheus/pgherd-rules.yml");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [\"{}\"]\n\
                 scrape_configs:\n  - job_name: pgherd\n    static_configs:\n      \
                 - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("prometheus: {e} (apt-get install -y prometheus)"));
        let prometheus = Prometheus { child, addr, log };
        prometheus
            .wait("ready", || async {
                http_get_at(addr, "/-/ready")
                    .await
                    .is_ok_and(|(s, _)| s == 200)
            })
            .await;
        prometheus
    }

    /// Polls `ok` every 200 ms until it holds (`what` names it; 120 s at most).
    async fn wait<F, Fut>(&self, what: &str, ok: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ok().await {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join("\n");
            assert!(Instant::now() < deadline, "prometheus: not {what}\n{tail}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An instant query's `data.result`.
    async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = http_get_at(self.addr, &path).await.unwrap();
        let answer: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{promql}: HTTP {status}: {e}: {body}"));
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"].as_array().unwrap().clone()
    }

    /// The state of alert `name` (`pending`, `firing`), if it is active.
    async fn alert(&self, name: &str) -> Option<String> {
        let (_, body) = http_get_at(self.addr, "/api/v1/alerts").await.ok()?;
        let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
        answer["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .and_then(|a| a["state"].as_str().map(str::to_owned))
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every PromQL expression of the dashboard (panel targets, then
/// annotations), with Grafana's variables given the values a dashboard
/// showing every instance would use.
fn dashboard_queries() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(deploy_dir().join("grafana/pgherd.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let fill = |e: &str| {
        e.replace("$instance", ".+")
            .replace("$__rate_interval", "1m")
    };
    let panels = dashboard["panels"].as_array().unwrap();
    let mut targets: Vec<String> = panels
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .map(|t| fill(t["expr"].as_str().unwrap()))
        .collect();
    // The instance picker: `label_values(METRIC, instance)`.
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        let q = v["query"]["query"].as_str().unwrap();
        let metric = q
            .strip_prefix("label_values(")
            .and_then(|r| r.split(',').next())
            .unwrap_or_else(|| panic!("a variable from label_values: {q}"));
        targets.push(metric.to_owned());
    }
    let annotations = dashboard["annotations"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| fill(a["expr"].as_str().unwrap()))
        .collect();
    (targets, annotations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_pgherd_the_dashboard_has_data_and_no_primary_fires() {
    let (targets, annotations) = dashboard_queries();
    assert!(targets.len() >= 15, "{targets:?}");

    let mut cluster = TestCluster::start(1);
    let pgherd = cluster
        .pgherd()
        .general("pool_mode = \"transaction\"")
        // A destination, so the notification counters exist (nothing listens).
        .notify("webhook_urls = [\"http://127.0.0.1:9/\"]")
        .start()
        .await;
    pgherd.wait_settled(0).await;
    // Traffic while Prometheus watches, reads and writes.
    let app = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
    app.batch_execute("CREATE TABLE IF NOT EXISTS seen (n int)")
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // Errors are expected once the primary is stopped.
                let _ = app.batch_execute("INSERT INTO seen VALUES (1)").await;
                let _ = app.simple_query("SELECT count(*) FROM seen").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(dir.path(), pgherd.admin_addr.unwrap()).await;
    prometheus
        .wait("scraping pgherd", || async {
            let up = prometheus.query("up{job=\"pgherd\"} == 1").await;
            !up.is_empty()
        })
        .await;
    // Rates need two samples in their range.
    let tps = &targets
        .iter()
        .find(|t| t.contains("sql_transactions_pooled_total"))
        .unwrap()
        .clone();
    prometheus
        .wait("seeing transactions", || async {
            let r = prometheus.query(tps).await;
            r.iter()
                .any(|s| s["value"][1].as_str().is_some_and(|v| v != "0"))
        })
        .await;
    for q in &targets {
        let result = prometheus.query(q).await;
        assert!(!result.is_empty(), "no data for the dashboard's {q}");
    }
    for q in &annotations {
        assert!(prometheus.query(q).await.is_empty(), "no failover yet: {q}");
    }
    assert_eq!(prometheus.alert("PgherdNoPrimary").await, None);

    // The primary stops: after the rule's `for: 30s`, the alert fires.
    cluster.pg.stop(0, StopMode::Fast).unwrap();
    prometheus
        .wait("firing PgherdNoPrimary", || async {
            prometheus.alert("PgherdNoPrimary").await.as_deref() == Some("firing")
        })
        .await;

    // A promotion: the annotation marks it, the alert resolves.
    cluster.pg.promote(1).unwrap();
    prometheus
        .wait("annotating the failover", || async {
            let mut marked = true;
            for q in &annotations {
                marked &= !prometheus.query(q).await.is_empty();
            }
            marked
        })
        .await;
    prometheus
        .wait("resolving PgherdNoPrimary", || async {
            prometheus.alert("PgherdNoPrimary").await.is_none()
        })
        .await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
}
