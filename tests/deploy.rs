//! The deploy kit is checked like code: the Prometheus alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`),
//! and every metric they use is one a running pgherd serves.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use pgherd_integration_tests::*;

fn prometheus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool: {e} (it comes with Prometheus: apt-get install -y prometheus)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_their_tests_pass() {
    let checked = promtool(&["check", "rules", "pgherd-rules.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "pgherd-rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The metric names a text mentions (`pgherd_*`, `pgbouncer_*`).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("pgherd_") || word.starts_with("pgbouncer_") {
            names.insert(word.to_owned());
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_use_is_served() {
    // A notification destination, so its counters exist (nothing listens).
    let pgherd = shared_cluster()
        .pgherd()
        .notify("webhook_urls = [\"http://127.0.0.1:9/\"]")
        .start()
        .await;
    pgherd.wait_settled(0).await;
    // A client, so its pool's series exist.
    let app = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
    app.simple_query("SELECT 1").await.unwrap();
    let (status, served) = http_get(&pgherd, "/metrics").await;
    assert_eq!(status, 200);
    let served: BTreeSet<String> = served
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let rules = std::fs::read_to_string(prometheus_dir().join("pgherd-rules.yml")).unwrap();
    let used = metric_names(&rules);
    assert!(!used.is_empty());
    let missing: Vec<&String> = used.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "used by the rules, not served: {missing:?}"
    );
}
