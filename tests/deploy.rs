//! The deploy kit is checked like code: the Prometheus alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`),
//! and every metric they use is one a running pgherd serves; the compose
//! file parses and names files that exist, its pgherd configuration passes
//! pgherd's own checks, its Prometheus configuration promtool's, its shell
//! scripts `bash -n`, and the Dockerfile builds in two stages, runs as a
//! user of its own and checks `/health`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use pgherd_integration_tests::*;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn prometheus_dir() -> PathBuf {
    deploy_dir().join("prometheus")
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

#[test]
fn the_compose_file_parses_and_every_file_it_mounts_exists() {
    let text = std::fs::read_to_string(deploy_dir().join("compose.yaml")).unwrap();
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    for name in ["primary", "standby1", "standby2", "pgherd", "prometheus"] {
        assert!(services.contains_key(name), "service {name}");
    }
    // pgherd's ports: read-write, read-only, admin.
    let ports: Vec<&str> = compose["services"]["pgherd"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(ports, ["5432:5432", "5433:5433", "9930:9930"]);
    let dockerfile = compose["services"]["pgherd"]["build"]["dockerfile"]
        .as_str()
        .unwrap();
    assert!(deploy_dir().join("..").join(dockerfile).is_file());
    // Every bind mount's host side (relative to deploy/) exists.
    let mut mounts = 0;
    for service in services.values() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(deploy_dir().join(host).exists(), "{host}");
            mounts += 1;
        }
    }
    assert!(mounts >= 5, "{mounts}");
}

#[test]
fn the_compose_configurations_pass_their_checks() {
    let config = deploy_dir().join("docker/pgherd.toml");
    let config = pgherd_config::Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["primary", "standby1", "standby2"]);
    assert_eq!(config.listeners.len(), 1, "the read-only port");
    let checked = promtool(&["check", "config", "prometheus.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    for script in ["docker/primary-init.sh", "docker/standby.sh"] {
        let ok = Command::new("bash")
            .arg("-n")
            .arg(deploy_dir().join(script))
            .status()
            .unwrap();
        assert!(ok.success(), "{script}");
    }
}

#[test]
fn the_dockerfile_builds_in_two_stages_and_runs_unprivileged() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    // Instructions, with continuation lines joined.
    let joined = text.replace("\\\n", " ");
    let instructions: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let starting = |word: &'static str| -> Vec<&str> {
        instructions
            .iter()
            .copied()
            .filter(|l| l.starts_with(word))
            .collect()
    };
    assert_eq!(
        starting("FROM ").len(),
        2,
        "a build stage and a runtime stage"
    );
    assert_eq!(starting("COPY --from=build").len(), 1);
    let users = starting("USER ");
    let user = users.last().unwrap();
    assert!(!user.ends_with("root") && !user.ends_with(" 0"), "{user}");
    let health = starting("HEALTHCHECK");
    assert!(
        health[0].contains("http://127.0.0.1:9930/health"),
        "{health:?}"
    );
    assert_eq!(starting("EXPOSE 5432 5433 9930").len(), 1);
}
