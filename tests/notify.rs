//! Notifications from a real cluster: a standby going down and coming back
//! reaches a webhook and a Telegram chat (both served on loopback here),
//! a failing webhook is tried again, and a dead one delays nobody.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use pgherd_integration_tests::*;
use tokio::net::TcpListener;

/// A loopback port nothing listens on.
async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_going_down_and_up_reaches_webhooks_and_telegram() {
    let mut cluster = TestCluster::start(1);
    let standby = cluster.pg.node(1).name.clone();
    // The webhook fails once (503): it must be sent again.
    let mut hook = Receiver::start(vec![503]).await;
    let mut telegram = Receiver::start(Vec::new()).await;
    let dead = format!("http://127.0.0.1:{}/hook", dead_port().await);
    let pgherd = cluster
        .pgherd()
        .notify(&format!(
            "webhook_urls = [\"{dead}\", \"{}\"]",
            hook.url("/pgherd?team=db")
        ))
        .notify("telegram_bot_token = \"123:ABC\"")
        .notify("telegram_chat_id = \"-42\"")
        .notify(&format!("telegram_api_url = \"{}\"", telegram.url("")))
        .notify("events = [\"node_down\", \"node_up\"]")
        .notify("instance = \"edge-1\"")
        .notify("timeout = 2")
        .start()
        .await;
    pgherd
        .wait_topology("both nodes up", |t| t.nodes.iter().all(|n| n.up))
        .await;

    // The first notification (whatever it announces) was answered 503:
    // it is sent again before anything else.
    let first = hook.next().await;
    let again = hook.next().await;
    assert_eq!(again.body, first.body);

    cluster.pg.stop(1, StopMode::Fast).unwrap();

    let (down_text, up_text) = (
        format!("node {standby} is down"),
        format!("node {standby} is up"),
    );
    let down = hook.next_with_text(&down_text).await;
    assert_eq!(down.body["event"], "node_down");
    assert_eq!(down.path, "/pgherd?team=db");
    assert_eq!(down.body["instance"], "edge-1");
    let text = down.body["text"].as_str().unwrap().to_owned();
    assert!(
        text.starts_with(&format!("pgherd edge-1: node {standby} is down")),
        "{text}"
    );

    let message = telegram.next_with_text(&down_text).await;
    assert_eq!(message.path, "/bot123:ABC/sendMessage");
    assert_eq!(message.body["chat_id"], "-42");
    assert_eq!(message.body["text"], text.as_str());

    // The dead webhook holds up nobody: clients are served meanwhile.
    let client = pgherd
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap();
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");

    cluster.pg.restart(1).unwrap();
    let up = telegram.next_with_text(&up_text).await;
    assert_eq!(
        up.body["text"],
        format!("pgherd edge-1: node {standby} is up").as_str()
    );
    let up = hook.next_with_text(&up_text).await;
    assert_eq!(up.body["event"], "node_up");
    assert_eq!(up.body["message"], format!("node {standby} is up").as_str());

    // /metrics counts what became of them, per destination; the dead
    // webhook's first notification is lost after its third attempt (~6 s).
    let hook_label = format!("webhook http://{}", hook.addr);
    let dead_label = format!(
        "webhook http://127.0.0.1:{}",
        dead.trim_start_matches("http://127.0.0.1:")
            .trim_end_matches("/hook")
    );
    let count = |text: &str, destination: &str, outcome: &str| -> u64 {
        let line = format!(
            "pgherd_notifications_total{{destination=\"{destination}\",outcome=\"{outcome}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = http_get(&pgherd, "/metrics").await;
        assert_eq!(status, 200);
        let delivered = count(&text, "telegram", "delivered");
        let hook_delivered = count(&text, &hook_label, "delivered");
        let lost = count(&text, &dead_label, "lost");
        if delivered >= 2 && hook_delivered >= 2 && lost >= 1 {
            assert_eq!(count(&text, &hook_label, "lost"), 0, "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "counters did not move: {delivered} {hook_delivered} {lost}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The stats page lists the destinations with the same counts.
    let (status, page) = http_get(&pgherd, "/").await;
    assert_eq!(status, 200);
    let section = &page[page
        .find("<h2>Notifications</h2>")
        .expect("a Notifications section")..];
    // delivered, refused, lost, dropped
    let cells = |label: &str| -> Vec<u64> {
        let start = section
            .find(&format!("<tr><td>{label}</td>"))
            .unwrap_or_else(|| panic!("a row for {label}: {section}"));
        let row = section[start..].split("</tr>").next().unwrap();
        row.split("<td class=n>")
            .skip(1)
            .map(|c| c.trim_end_matches("</td>").parse().unwrap())
            .collect()
    };
    // And /api/v1/notifications, for scripts.
    let (status, api) = http_get(&pgherd, "/api/v1/notifications").await;
    assert_eq!(status, 200);
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    let listed: Vec<&str> = api["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["destination"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [dead_label.as_str(), hook_label.as_str(), "telegram"]
    );
    assert!(api["destinations"][2]["delivered"].as_u64().unwrap() >= 2);
    let dead_row = cells(&dead_label);
    assert_eq!(dead_row[..2], [0, 0], "{dead_row:?}");
    assert!(dead_row[2] >= 1, "{dead_row:?}");
    assert!(cells("telegram")[0] >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_notification_reports_each_destination() {
    let mut works = Receiver::start(Vec::new()).await;
    // Telegram's answer to a wrong token.
    let mut bad_token = Receiver::start(vec![401]).await;
    let dead = format!("http://127.0.0.1:{}/x", dead_port().await);
    let config = pgherd_config::Config::parse(&format!(
        "[pgherd]\nprobe_user = \"p\"\n\n[[nodes]]\nname = \"a\"\nhost = \"127.0.0.1\"\n\n\
         [notify]\nwebhook_urls = [\"{}\", \"{dead}\"]\ntelegram_bot_token = \"1:WRONG\"\n\
         telegram_chat_id = \"7\"\ntelegram_api_url = \"{}\"\ntimeout = 2\n",
        works.url("/hook"),
        bad_token.url("")
    ))
    .unwrap();
    let results = pgherd_notify::send_test(&config.notify, "hello")
        .await
        .unwrap();
    let labels: Vec<&str> = results.iter().map(|(l, _)| l.as_str()).collect();
    let dead_label = format!("webhook {}", dead.trim_end_matches("/x"));
    assert_eq!(
        labels,
        [
            format!("webhook http://{}", works.addr).as_str(),
            dead_label.as_str(),
            "telegram"
        ]
    );
    assert_eq!(results[0].1, Ok(()));
    let dead_err = results[1].1.as_ref().unwrap_err();
    assert!(dead_err.starts_with("failed: connecting"), "{dead_err}");
    let telegram_err = results[2].1.as_ref().unwrap_err();
    assert_eq!(telegram_err, "refused: HTTP 401 Unauthorized");

    let got = works.next().await;
    assert_eq!(got.body["event"], "test");
    assert_eq!(got.body["text"], "pgherd: hello");
    let got = bad_token.next().await;
    assert_eq!(got.path, "/bot1:WRONG/sendMessage");
    assert_eq!(got.body["text"], "pgherd: hello");
}
