//! pgbench through pgherd: initialisation, then many concurrent clients.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use pgherd_integration_tests::*;

async fn pgbench(pgherd: &RunningPgherd, args: &[&str]) -> String {
    let bins = PgBinaries::find().unwrap();
    let mut cmd = std::process::Command::new(bins.path("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &pgherd.addr.port().to_string()])
        .args(["-U", "app"])
        .args(args)
        .arg("app")
        .env("PGPASSWORD", APP_PASSWORD);
    let out = output(cmd).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pgbench {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// The number after `label` in pgbench's report.
fn figure(report: &str, label: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in:\n{report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_select_only_with_16_clients() {
    let pgherd = shared_cluster().pgherd().start().await;
    pgbench(&pgherd, &["-i", "-s", "1", "-q"]).await;
    for mode in ["simple", "extended", "prepared"] {
        let report = pgbench(
            &pgherd,
            &["-S", "-c", "16", "-j", "2", "-T", "2", "-M", mode],
        )
        .await;
        assert!(figure(&report, "number of transactions actually processed: ") > 0);
        assert_eq!(
            figure(&report, "number of failed transactions: "),
            0,
            "{report}"
        );
    }
    // tpcb-like writes too.
    let report = pgbench(&pgherd, &["-c", "8", "-j", "2", "-T", "2"]).await;
    assert_eq!(
        figure(&report, "number of failed transactions: "),
        0,
        "{report}"
    );
}
