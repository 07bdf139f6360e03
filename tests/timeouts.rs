//! pgbouncer's server and client timeouts on a real cluster, with short real
//! timeouts (half a second): server_idle_timeout, server_lifetime,
//! server_check_query/delay, client_idle_timeout, idle_transaction_timeout.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use pgherd_integration_tests::*;

/// Polls until `done` holds (bounded: 10 s, then the test fails).
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

fn backend_alive(cluster: &TestCluster, pid: &str) -> bool {
    cluster
        .pg
        .sql(
            0,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
        )
        .unwrap()
        == "1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_servers_are_closed_after_server_idle_timeout() {
    let cluster = shared_cluster();
    let pgherd = cluster
        .pgherd()
        .general("server_idle_timeout = 0.5")
        .start()
        .await;
    let client = pgherd.app().await;
    let pid = simple_value(&client, "SELECT pg_backend_pid()").await;
    drop(client);
    // Released to the pool, then closed by the sweeper.
    eventually("the idle server is closed", async || {
        pgherd.handle.servers().is_empty()
    })
    .await;
    eventually("its backend exits", async || !backend_alive(cluster, &pid)).await;
    // The pool opens a new one for the next client.
    let again = pgherd.app().await;
    assert_ne!(simple_value(&again, "SELECT pg_backend_pid()").await, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_older_than_server_lifetime_are_replaced() {
    let cluster = shared_cluster();
    let pgherd = cluster
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("server_lifetime = 0.5")
        .start()
        .await;
    let client = pgherd.app().await;
    let first = simple_value(&client, "SELECT pg_backend_pid()").await;
    assert_eq!(
        simple_value(&client, "SELECT pg_backend_pid()").await,
        first
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let later = simple_value(&client, "SELECT pg_backend_pid()").await;
    assert_ne!(later, first, "a fresh server after the lifetime");
    eventually("the old backend exits", async || {
        !backend_alive(cluster, &first)
    })
    .await;
}

/// In transaction mode the check runs when a transaction takes an idle
/// server (the common path that takes one without waiting included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_check_query_runs_before_transactions_on_idle_servers() {
    let cluster = shared_cluster();
    let checked = "SELECT coalesce(current_setting('pgherd.checked', true), '')";
    for (delay, expected) in [("0", "yes"), ("30", "")] {
        let pgherd = cluster
            .pgherd()
            .general("pool_mode = \"transaction\"")
            .general(&format!("server_check_delay = {delay}"))
            .general("server_check_query = \"SELECT set_config('pgherd.checked', 'yes', false)\"")
            .database("app = { pool_size = 1 }")
            .start()
            .await;
        // The login opened the server (unchecked) and gave it back; this
        // transaction takes it from the pool.
        let client = pgherd.app().await;
        assert_eq!(
            simple_value(&client, checked).await,
            expected,
            "server_check_delay = {delay}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_check_query_runs_on_servers_that_sat_idle() {
    let cluster = shared_cluster();
    // At login: the first session's server is the brand new one.
    let pgherd = cluster
        .pgherd()
        .general("session_server_at = \"login\"")
        .general("server_check_delay = 0")
        .general("server_check_query = \"SELECT set_config('pgherd.checked', 'yes', false)\"")
        .start()
        .await;
    let first = pgherd.app().await;
    let pid = simple_value(&first, "SELECT pg_backend_pid()").await;
    assert_eq!(
        simple_value(
            &first,
            "SELECT coalesce(current_setting('pgherd.checked', true), '')"
        )
        .await,
        "",
        "a brand new server is not checked"
    );
    drop(first);
    eventually("the server is idle", async || {
        pgherd.handle.pools().iter().any(|p| p.status.idle == 1)
    })
    .await;
    let second = pgherd.app().await;
    assert_eq!(simple_value(&second, "SELECT pg_backend_pid()").await, pid);
    assert_eq!(
        simple_value(
            &second,
            "SELECT coalesce(current_setting('pgherd.checked', true), '')"
        )
        .await,
        "yes",
        "checked when it left the pool"
    );

    // A check that fails: the server is replaced, the client never notices.
    let broken = cluster
        .pgherd()
        .general("server_check_delay = 0")
        .general("server_check_query = \"SELECT no_such_function()\"")
        .start()
        .await;
    let c = broken.app().await;
    let pid = simple_value(&c, "SELECT pg_backend_pid()").await;
    drop(c);
    eventually("the server is idle", async || {
        broken.handle.pools().iter().any(|p| p.status.idle == 1)
    })
    .await;
    let c = broken.app().await;
    assert_ne!(simple_value(&c, "SELECT pg_backend_pid()").await, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_disconnects_idle_clients_in_both_modes() {
    let cluster = shared_cluster();
    for mode in ["session", "transaction"] {
        let pgherd = cluster
            .pgherd()
            .general(&format!("pool_mode = \"{mode}\""))
            .general("client_idle_timeout = 0.5")
            .start()
            .await;
        let idle = pgherd.app().await;
        let busy = pgherd.app().await;
        // A query longer than the limit is not idleness.
        simple_value(&busy, "SELECT pg_sleep(0.8)::text").await;
        eventually("the idle client is disconnected", async || idle.is_closed()).await;
        assert!(idle.simple_query("SELECT 1").await.is_err(), "{mode}");
        assert!(!busy.is_closed(), "{mode}: the busy client stays");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_ends_idle_transactions_and_frees_the_server() {
    let cluster = shared_cluster();
    let pgherd = cluster
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("idle_transaction_timeout = 0.5")
        .database("app = { pool_size = 1 }")
        .start()
        .await;
    let stuck = pgherd.app().await;
    stuck.batch_execute("BEGIN").await.unwrap();
    // A long statement inside the transaction is not idle.
    simple_value(&stuck, "SELECT pg_sleep(0.8)::text").await;
    assert!(!stuck.is_closed());
    eventually("the idle transaction is ended", async || stuck.is_closed()).await;
    // The pool's only server was rolled back or closed, not lost: another
    // client gets one.
    let other = pgherd.app().await;
    assert_eq!(simple_value(&other, "SELECT 1").await, "1");
}

/// pgbouncer's query_timeout, in both pool modes: a query still running
/// `query_timeout` after it was sent is cancelled on the server and its
/// client is told (57014); quicker ones, and other clients, are not
/// touched; the pool's server is not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_long_queries_and_ends_their_clients() {
    let cluster = shared_cluster();
    for mode in ["transaction", "session"] {
        let pgherd = cluster
            .pgherd()
            .general(&format!("pool_mode = \"{mode}\""))
            .general("query_timeout = 1")
            .database("app = { pool_size = 1 }")
            .start()
            .await;
        let slow = pgherd.app_named("slow").await;
        // Under the limit, spread over a longer time: not cut.
        for _ in 0..3 {
            simple_value(&slow, "SELECT pg_sleep(0.4)::text").await;
        }
        let e = slow.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
        assert_eq!(sqlstate(&e), Some("57014"), "{mode}: {e}");
        assert!(message(&e).contains("query_timeout (1s)"), "{mode}: {e}");
        eventually("the client's connection is closed", async || {
            slow.is_closed()
        })
        .await;
        // The backend stopped working on it (cancelled, then closed).
        eventually("the long query is gone from the server", async || {
            cluster
                .pg
                .sql(
                    0,
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'",
                )
                .unwrap()
                == "0"
        })
        .await;
        // The pool's only server slot is free for the next client.
        let other = pgherd.app().await;
        assert_eq!(simple_value(&other, "SELECT 1").await, "1", "{mode}");
    }
}

/// query_timeout against a server that stops answering altogether (its
/// backend process stopped with SIGSTOP, as a hung host would look): the
/// client is told (57014) instead of waiting forever, and the pool's only
/// slot serves the next client on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_frees_clients_of_a_server_that_stopped_answering() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let cluster = shared_cluster();
    let pgherd = cluster
        .pgherd()
        .general("pool_mode = \"session\"")
        .general("query_timeout = 1")
        .database("app = { pool_size = 1 }")
        .start()
        .await;
    let hung = pgherd.app().await;
    let pid: i32 = simple_value(&hung, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap();
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(30), hung.simple_query("SELECT 1")).await;
    // Let the backend go on (it then sees the cancel and its closed client).
    kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap();
    let e = answer
        .expect("pgherd answers within query_timeout")
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("57014"), "{e}");
    let next = pgherd.app().await;
    let other: i32 = simple_value(&next, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap();
    assert_ne!(other, pid, "a fresh server, not the hung one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_pool_serves_clients_that_waited_reserve_pool_timeout() {
    let cluster = shared_cluster();
    let pgherd = cluster
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("reserve_pool_timeout = 0.3")
        // pgbouncer's per-database name (reserve_pool_size is the default).
        .database("app = { pool_size = 1, reserve_pool = 1 }")
        .start()
        .await;
    let slow = pgherd.app().await;
    slow.batch_execute("BEGIN").await.unwrap();
    let held = simple_value(&slow, "SELECT pg_backend_pid()").await;
    // The pool's one server is in a transaction: after reserve_pool_timeout
    // the next client gets a reserve server instead of waiting for it.
    let waiting = pgherd.app().await;
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        simple_value(&waiting, "SELECT pg_backend_pid()"),
    )
    .await
    .expect("served from the reserve, not after the transaction");
    assert_ne!(got, held);
    let status = pgherd.handle.pools()[0].status;
    assert_eq!((status.max_size, status.total), (1, 2));
    slow.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_and_user_connections_cap_servers_over_all_pools() {
    let cluster = shared_cluster();
    // Per database: two servers to `app` at most, whatever the pool size.
    let pgherd = cluster
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("max_db_connections = 2")
        .start()
        .await;
    let a = pgherd.app().await;
    let b = pgherd.app().await;
    let c = pgherd.app().await;
    a.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    let query = tokio::spawn(async move { simple_value(&c, "SELECT 3").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!query.is_finished(), "a third server was opened");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(query.await.unwrap(), "3");
    assert!(pgherd.handle.servers().len() <= 2);

    // Per user, over two databases: the idle server of one pool is closed
    // to make room for the other.
    let pgherd = cluster
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("max_user_connections = 1")
        .start()
        .await;
    let on_app = pgherd.app().await;
    let first = simple_value(&on_app, "SELECT pg_backend_pid()").await;
    let on_postgres = pgherd
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap();
    assert_eq!(
        simple_value(&on_postgres, "SELECT current_database()").await,
        "postgres"
    );
    let servers = pgherd.handle.servers();
    assert_eq!(servers.len(), 1, "one server for the user: {servers:?}");
    assert_ne!(servers[0].pid.to_string(), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_keeps_servers_ready() {
    let cluster = shared_cluster();
    let pgherd = cluster.pgherd().general("min_pool_size = 3").start().await;
    // The first client makes the pool (and shows how to open its servers).
    let c = pgherd.app().await;
    simple_value(&c, "SELECT 1").await;
    drop(c);
    eventually("the pool is topped up to 3 idle servers", async || {
        pgherd
            .handle
            .pools()
            .iter()
            .any(|p| p.status.total == 3 && p.status.idle == 3)
    })
    .await;
    // They are real, working connections.
    let c = pgherd.app().await;
    assert_eq!(simple_value(&c, "SELECT current_user").await, "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_limit_that_never_frees_ends_in_53300() {
    let cluster = shared_cluster();
    let pgherd = cluster
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("max_db_connections = 1")
        .general("query_wait_timeout = 0.5")
        .start()
        .await;
    let holder = pgherd.app().await;
    let waiter = pgherd.app().await;
    holder.batch_execute("BEGIN").await.unwrap();
    let err = waiter.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("53300"), "{err}");
    // The holder is unaffected and the server is not lost.
    holder.batch_execute("COMMIT").await.unwrap();
    let again = pgherd.app().await;
    assert_eq!(simple_value(&again, "SELECT 1").await, "1");
}

/// pgbouncer's per-database `min_pool_size` and `max_db_connections` and
/// per-user `max_user_connections` override the global ones for their
/// pools only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_and_user_entries_override_the_limits() {
    let cluster = shared_cluster();
    let pgherd = cluster
        .pgherd()
        .user(&format!(
            "md5user = {{ password = \"{MD5_PASSWORD}\", max_user_connections = 1 }}"
        ))
        .general("pool_mode = \"transaction\"")
        .database("app = { min_pool_size = 2, max_db_connections = 1 }")
        .start()
        .await;

    // app's database: at most one server; the others are not capped.
    let a = pgherd.app().await;
    let b = pgherd.app().await;
    a.batch_execute("BEGIN").await.unwrap();
    let blocked = tokio::spawn(async move { simple_value(&b, "SELECT 2").await });
    let free = pgherd
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap();
    let free2 = pgherd
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap();
    free.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        simple_value(&free2, "SELECT 3").await,
        "3",
        "postgres: no cap"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!blocked.is_finished(), "a second server to app was opened");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(blocked.await.unwrap(), "2");
    free.batch_execute("COMMIT").await.unwrap();

    // md5user: one server over all its pools.
    let m1 = pgherd
        .connect("md5user", MD5_PASSWORD, "postgres")
        .await
        .unwrap();
    let m2 = pgherd
        .connect("md5user", MD5_PASSWORD, "postgres")
        .await
        .unwrap();
    m1.batch_execute("BEGIN").await.unwrap();
    let waiting = tokio::spawn(async move { simple_value(&m2, "SELECT 4").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a second server for md5user was opened"
    );
    m1.batch_execute("COMMIT").await.unwrap();
    assert_eq!(waiting.await.unwrap(), "4");

    // min_pool_size for app's database only.
    let pgherd = cluster
        .pgherd()
        .database("app = { min_pool_size = 2 }")
        .start()
        .await;
    let on_app = pgherd.app().await;
    let on_postgres = pgherd
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap();
    simple_value(&on_app, "SELECT 1").await;
    simple_value(&on_postgres, "SELECT 1").await;
    drop((on_app, on_postgres));
    eventually("app's pool is topped up to 2", async || {
        let pools = pgherd.handle.pools();
        pools
            .iter()
            .any(|p| p.database == "app" && p.status.total == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pools = pgherd.handle.pools();
    let postgres = pools.iter().find(|p| p.database == "postgres").unwrap();
    assert_eq!(postgres.status.total, 1, "no minimum there: {pools:?}");
}

/// The keepalive timer `ss` shows on the established socket whose local
/// port is `port`, in seconds: what remains before the first probe. (While
/// sent data awaits its ACK the socket shows the retransmission timer
/// instead: looked at again for up to 5 s.)
async fn keepalive_timer(port: u16) -> f64 {
    let mut text = String::new();
    for _ in 0..50 {
        let mut ss = std::process::Command::new("ss");
        ss.args(["-tnoH", "state", "established"])
            .arg(format!("( sport = :{port} )"));
        let out = output(ss).await.expect("ss (iproute2) runs");
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("timer:(keepalive,") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let timer = text
        .split("timer:(keepalive,")
        .nth(1)
        .unwrap_or_else(|| panic!("no keepalive timer on port {port}: {text:?}"));
    let value = timer.split(',').next().unwrap_or("");
    let number = |unit: &str| value.strip_suffix(unit).and_then(|v| v.parse::<f64>().ok());
    number("sec")
        .or_else(|| number("ms").map(|ms| ms / 1000.0))
        .or_else(|| number("min").map(|m| m * 60.0))
        .unwrap_or_else(|| panic!("unreadable timer {value:?}"))
}

/// `tcp_keepidle` and friends reach the socket pgherd accepted from its
/// client and the one it opened to the server (the system's default would
/// wait two hours before the first probe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_keepalive_settings_reach_client_and_server_sockets() {
    let cluster = shared_cluster();
    let pgherd = cluster
        .pgherd()
        .general("tcp_keepidle = 7")
        .general("tcp_keepintvl = 3")
        .general("tcp_keepcnt = 2")
        .general("tcp_user_timeout = 11")
        .start()
        .await;
    let client = pgherd.app().await;
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");
    let server_port = pgherd
        .handle
        .servers()
        .iter()
        .find_map(|s| s.local_addr)
        .expect("a server connection with its local address")
        .port();
    for (side, port) in [("client", pgherd.addr.port()), ("server", server_port)] {
        let left = keepalive_timer(port).await;
        assert!(left <= 7.0, "{side} side: first probe in {left} s");
    }
}
