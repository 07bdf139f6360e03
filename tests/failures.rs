//! Failure paths: every bad input gets a clear ErrorResponse with the right
//! SQLSTATE, and pgherd keeps serving everyone else.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use futures_util::StreamExt;
use pgherd_integration_tests::*;
use pgherd_wire::backend::ErrorFields;

async fn connect_err(
    pgherd: &RunningPgherd,
    user: &str,
    password: &str,
    db: &str,
) -> tokio_postgres::Error {
    match pgherd.connect(user, password, db).await {
        Ok(_) => panic!("connection as {user} to {db} should fail"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database() {
    let strict = shared_cluster().pgherd().without_fallback().start().await;
    let e = connect_err(&strict, "app", APP_PASSWORD, "nope").await;
    assert_eq!(sqlstate(&e), Some("3D000"));
    assert!(
        message(&e).contains("\"nope\" does not exist"),
        "{}",
        message(&e)
    );

    // With a `*` entry the server itself says so, and pgherd names the node.
    let open = shared_cluster().pgherd().start().await;
    let e = connect_err(&open, "app", APP_PASSWORD, "nope").await;
    assert_eq!(sqlstate(&e), Some("3D000"));
    let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or_default();
    assert!(detail.contains("pg0"), "{detail}");
    // And the proxy goes on serving.
    let client = open.app().await;
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_passwords_and_unknown_users_look_the_same() {
    let pgherd = shared_cluster().pgherd().start().await;
    let wrong = connect_err(&pgherd, "app", "not-the-password", "app").await;
    let unknown = connect_err(&pgherd, "nobody", "whatever", "app").await;
    assert_eq!(sqlstate(&wrong), Some("28P01"));
    assert_eq!(sqlstate(&unknown), Some("28P01"));
    let msg = |e: &tokio_postgres::Error| e.as_db_error().map(|d| d.message().to_owned());
    assert_eq!(
        msg(&wrong).unwrap(),
        "password authentication failed for user \"app\""
    );
    assert_eq!(
        msg(&unknown).unwrap(),
        "password authentication failed for user \"nobody\""
    );
    // md5-stored role: pgherd logs in to the server with md5 and its plaintext password.
    let client = pgherd
        .connect("md5user", MD5_PASSWORD, "postgres")
        .await
        .unwrap();
    assert_eq!(
        simple_value(&client, "SELECT current_user").await,
        "md5user"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn() {
    let pgherd = shared_cluster()
        .pgherd()
        .general("max_client_conn = 2")
        .start()
        .await;
    let a = pgherd.app().await;
    let b = pgherd.app().await;
    let e = connect_err(&pgherd, "app", APP_PASSWORD, "app").await;
    assert_eq!(sqlstate(&e), Some("53300"));
    assert!(message(&e).contains("max_client_conn"), "{}", message(&e));
    assert_eq!(simple_value(&a, "SELECT 1").await, "1");
    drop(b);
    // The slot frees once the client is gone.
    let mut c = None;
    for _ in 0..100 {
        if let Ok(client) = pgherd.connect("app", APP_PASSWORD, "app").await {
            c = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = c.expect("a client connects after another left");
    assert_eq!(simple_value(&c, "SELECT 2").await, "2");
}

async fn expect_protocol_violation(raw: &mut RawClient) -> ErrorFields {
    let e = raw.expect_error().await;
    assert_eq!(e.code, "08P01", "{e}");
    assert_eq!(e.severity, "FATAL");
    assert!(raw.closed().await);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_startup_packets() {
    let pgherd = shared_cluster().pgherd().start().await;
    let cases: [&[u8]; 5] = [
        &[0, 0, 0, 3, 0, 0, 0, 0],             // length below the minimum
        &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0], // 2 GB startup packet
        &[0, 0, 0, 9, 0, 3, 0, 0, b'u'],       // parameters without terminator
        &[0, 0, 0, 8, 0, 2, 0, 0],             // protocol 2.0
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  // not PostgreSQL at all
    ];
    for bytes in cases {
        let mut raw = RawClient::connect(&pgherd).await;
        raw.send(bytes).await;
        expect_protocol_violation(&mut raw).await;
    }
    let client = pgherd.app().await;
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_login_and_oversized_messages() {
    let pgherd = shared_cluster()
        .pgherd()
        .general("max_packet_size = 4096")
        .start()
        .await;
    // A message whose length field is impossible.
    let mut raw = RawClient::connect(&pgherd).await;
    raw.login_app().await;
    raw.send(&[pgherd_wire::frontend::QUERY, 0, 0, 0, 2]).await;
    expect_protocol_violation(&mut raw).await;

    // A message over max_packet_size is refused before it is read.
    let mut raw = RawClient::connect(&pgherd).await;
    raw.login_app().await;
    let mut q = bytes::BytesMut::new();
    pgherd_wire::frontend::query(&mut q, &format!("SELECT '{}'", "x".repeat(10_000)));
    raw.send(&q).await;
    let e = expect_protocol_violation(&mut raw).await;
    assert!(e.message.contains("over the limit"), "{e}");

    // Something other than a password during authentication.
    let mut raw = RawClient::connect(&pgherd).await;
    raw.startup(&[("user", "app"), ("database", "app")]).await;
    let f = raw.recv().await.unwrap();
    assert_eq!(f.tag, pgherd_wire::backend::AUTHENTICATION);
    let mut q = bytes::BytesMut::new();
    pgherd_wire::frontend::query(&mut q, "SELECT 1");
    raw.send(&q).await;
    expect_protocol_violation(&mut raw).await;

    // The pool is intact: a normal client gets a clean server.
    let client = pgherd.app().await;
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_standby_nodes_are_named() {
    // Only a dead node and a standby: no primary. A session that gets its
    // server at login is refused at login.
    let no_primary = || {
        shared_cluster()
            .pgherd()
            .nodes(&[1])
            .dead_node("dead", 0)
            .general("primary_wait_timeout = 0.5")
    };
    let pgherd = no_primary()
        .general("session_server_at = \"login\"")
        .start()
        .await;
    let e = connect_err(&pgherd, "app", APP_PASSWORD, "app").await;
    assert_eq!(sqlstate(&e), Some("57P03"));
    let detail = e
        .as_db_error()
        .and_then(|d| d.detail())
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("dead: down ("), "{detail}");
    assert!(detail.contains("Connection refused"), "{detail}");
    assert!(detail.contains("pg1: standby"), "{detail}");

    // With the default (`first_query`), once the probes have answered the
    // login is welcomed by the standby and the first query is refused, with
    // the same reasons.
    let pgherd = no_primary().start().await;
    pgherd
        .wait_topology("pg1 probed", |t| t.nodes.iter().any(|n| n.serves_reads()))
        .await;
    let client = pgherd.app().await;
    let e = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("57P03"), "{e}");
    let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or_default();
    assert!(detail.contains("pg1: standby"), "{detail}");

    // A dead node in front of the primary is passed over.
    let pgherd = shared_cluster().pgherd().dead_node("dead", 0).start().await;
    let client = pgherd.app().await;
    assert_eq!(
        simple_value(&client, "SELECT pg_is_in_recovery()").await,
        "f"
    );
}

/// Polls `sql` on the primary until it returns `expected` (bounded: 30 s).
async fn wait_for(sql: &str, expected: &str) {
    wait_for_sql(shared_cluster(), 0, sql, expected).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_mid_query_does_not_poison_the_pool() {
    let pgherd = shared_cluster()
        .pgherd()
        .database("app = { pool_size = 1 }")
        .general("query_wait_timeout = 20")
        .start()
        .await;
    let (client, connection) = pgherd
        .config("app", APP_PASSWORD, "app")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn_task = tokio::spawn(connection);
    let pid = simple_value(&client, "SELECT pg_backend_pid()").await;
    let query =
        tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30) -- leaver").await });
    wait_for(
        &format!("SELECT state FROM pg_stat_activity WHERE pid = {pid}"),
        "active",
    )
    .await;
    // The client vanishes without a Terminate.
    conn_task.abort();
    query.abort();
    // The abandoned query is cancelled and its server closed, not pooled.
    wait_for(
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
        "0",
    )
    .await;
    let next = pgherd.app().await;
    assert_ne!(simple_value(&next, "SELECT pg_backend_pid()").await, pid);
    assert_eq!(simple_value(&next, "SELECT 1").await, "1");
}

/// Transaction mode: a pooled server the server ended while it sat idle
/// (a restart, `idle_session_timeout`, an administrator) is noticed when a
/// transaction would take it; the client gets a new one, and no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_the_server_ended_is_replaced_before_the_next_transaction() {
    let pgherd = shared_cluster()
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .database("app = { pool_size = 1 }")
        .start()
        .await;
    let client = pgherd.app().await;
    let pid = simple_value(&client, "SELECT pg_backend_pid()").await;
    shared_cluster()
        .pg
        .sql(0, &format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    wait_for(
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
        "0",
    )
    .await;
    let next = simple_value(&client, "SELECT pg_backend_pid()").await;
    assert_ne!(next, pid);
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dying_mid_query_gives_an_error_and_the_pool_recovers() {
    let pgherd = shared_cluster()
        .pgherd()
        .database("app = { pool_size = 1 }")
        .general("query_wait_timeout = 20")
        .start()
        .await;
    let victim = pgherd.app().await;
    let pid = simple_value(&victim, "SELECT pg_backend_pid()").await;
    let query =
        tokio::spawn(async move { victim.simple_query("SELECT pg_sleep(30) -- victim").await });
    wait_for(
        &format!("SELECT state FROM pg_stat_activity WHERE pid = {pid}"),
        "active",
    )
    .await;
    shared_cluster()
        .pg
        .sql(0, &format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    let err = query.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err), Some("57P01"), "{err}");
    let next = pgherd.app().await;
    assert_eq!(simple_value(&next, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_when_the_pool_is_exhausted() {
    let pgherd = shared_cluster()
        .pgherd()
        .database("app = { pool_size = 1 }")
        .general("query_wait_timeout = 0.5")
        .start()
        .await;
    let holder = pgherd.app().await;
    assert_eq!(simple_value(&holder, "SELECT 1").await, "1");
    // Logged in (session_server_at = "first_query"); the first query waits.
    let waiter = pgherd.app().await;
    let e = waiter.simple_query("SELECT 1").await.unwrap_err();
    assert_is_query_wait_timeout(&e);
    assert_eq!(simple_value(&holder, "SELECT 1").await, "1");

    // With "login", the login itself waits.
    let pgherd = shared_cluster()
        .pgherd()
        .database("app = { pool_size = 1 }")
        .general("query_wait_timeout = 0.5")
        .general("session_server_at = \"login\"")
        .start()
        .await;
    let holder = pgherd.app().await;
    let e = connect_err(&pgherd, "app", APP_PASSWORD, "app").await;
    assert_is_query_wait_timeout(&e);
    assert_eq!(simple_value(&holder, "SELECT 1").await, "1");
}

fn assert_is_query_wait_timeout(e: &tokio_postgres::Error) {
    assert_eq!(sqlstate(e), Some("53300"));
    assert!(message(e).contains("query_wait_timeout"), "{}", message(e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_dropped_at_login_timeout() {
    let pgherd = shared_cluster()
        .pgherd()
        .general("client_login_timeout = 0.3")
        .start()
        .await;
    let mut raw = RawClient::connect(&pgherd).await;
    let e = raw.expect_error().await;
    assert_eq!(e.code, "08P01");
    assert!(e.message.contains("client_login_timeout"), "{e}");
    assert!(raw.closed().await);
    assert_eq!(pgherd.handle.client_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_client_does_not_disturb_a_streaming_one() {
    let pgherd = shared_cluster().pgherd().start().await;
    let good = pgherd.app().await;
    let stream = good
        .query_raw::<_, i32, _>(
            "SELECT g, repeat('y', 100) FROM generate_series(1, 50000) g",
            std::iter::empty(),
        )
        .await
        .unwrap();
    let mut stream = std::pin::pin!(stream);
    let mut seen = 0;
    while let Some(row) = stream.next().await {
        row.unwrap();
        seen += 1;
        if seen % 10_000 == 0 {
            let mut bad = RawClient::connect(&pgherd).await;
            bad.login_app().await;
            bad.send(&[
                pgherd_wire::frontend::QUERY,
                0xff,
                0xff,
                0xff,
                0xf0,
                1,
                2,
                3,
            ])
            .await;
            expect_protocol_violation(&mut bad).await;
        }
    }
    assert_eq!(seen, 50_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_down_then_back() {
    // A cluster of its own: this test stops its primary.
    let mut cluster = TestCluster::start(0);
    let pgherd = cluster
        .pgherd()
        .general("primary_wait_timeout = 1")
        .start()
        .await;
    let client = pgherd.app().await;
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");

    cluster.pg.stop(0, StopMode::Immediate).unwrap();
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert!(err.is_closed() || sqlstate(&err).is_some(), "{err}");
    let e = connect_err(&pgherd, "app", APP_PASSWORD, "app").await;
    assert_eq!(sqlstate(&e), Some("57P03"), "{e}");

    cluster.pg.restart(0).unwrap();
    let client = pgherd.app().await;
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reset_closes_the_server_instead_of_reusing_it() {
    let pgherd = shared_cluster()
        .pgherd()
        .general("server_reset_query = \"SELECT 1/0\"")
        .database("app = { pool_size = 1 }")
        .start()
        .await;
    let first = pgherd.app().await;
    let pid = simple_value(&first, "SELECT pg_backend_pid()").await;
    drop(first);
    // The reset failed: that server is gone, the next client gets a new one.
    wait_for(
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
        "0",
    )
    .await;
    let second = pgherd.app().await;
    assert_ne!(simple_value(&second, "SELECT pg_backend_pid()").await, pid);
}
