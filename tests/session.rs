//! Session pooling against a real cluster: what a client sees through pgherd
//! is what it would see connected directly.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pgherd_integration_tests::*;
use tokio_postgres::{AsyncMessage, NoTls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries() {
    let pgherd = shared_cluster().pgherd().start().await;
    let client = pgherd.app().await;
    assert_eq!(simple_value(&client, "SELECT 1 AS one").await, "1");
    let row = client
        .query_one("SELECT $1::int + 1, current_user", &[&41i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "app");
    // A prepared statement lives as long as the session.
    let stmt = client.prepare("SELECT $1::text || '!'").await.unwrap();
    for word in ["a", "b", "c"] {
        let row = client.query_one(&stmt, &[&word]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("{word}!"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_inside_a_transaction() {
    let pgherd = shared_cluster().pgherd().start().await;
    let client = pgherd.app().await;
    client.batch_execute("BEGIN").await.unwrap();
    let err = client.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("22012"));
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("25P02"), "transaction is aborted");
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(simple_value(&client, "SELECT 2").await, "2");
    // Extended protocol error, then the session goes on.
    let err = client
        .query_one("SELECT $1::int / 0", &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("22012"));
    assert_eq!(simple_value(&client, "SELECT 3").await, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    let pgherd = shared_cluster().pgherd().start().await;
    let client = pgherd.app().await;
    client
        .batch_execute("CREATE TEMP TABLE copied (id int, name text)")
        .await
        .unwrap();
    let sink = client
        .copy_in::<_, bytes::Bytes>("COPY copied FROM STDIN")
        .await
        .unwrap();
    let mut sink = std::pin::pin!(sink);
    let mut data = String::new();
    for i in 0..10_000 {
        data.push_str(&format!("{i}\tname {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 10_000);

    let stream = client
        .copy_out("COPY (SELECT * FROM copied ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.map(|c| c.unwrap()).collect().await;
    let out: Vec<u8> = chunks.concat();
    assert_eq!(String::from_utf8(out).unwrap(), data);

    // A failed COPY leaves the session usable.
    let err = client
        .simple_query("COPY copied FROM STDIN WITH (FORMAT nonsense)")
        .await
        .unwrap_err();
    assert!(sqlstate(&err).is_some());
    assert_eq!(
        simple_value(&client, "SELECT count(*) FROM copied").await,
        "10000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_with_consistent_backend_pids() {
    let pgherd = shared_cluster().pgherd().start().await;
    let (listener, mut notes) = connect_listening(&pgherd).await;
    let notifier = pgherd.app().await;
    listener.batch_execute("LISTEN pgherd_test").await.unwrap();
    let notifier_pid = simple_value(&notifier, "SELECT pg_backend_pid()").await;
    notifier
        .batch_execute("NOTIFY pgherd_test, 'hello'")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.channel(), "pgherd_test");
    assert_eq!(n.payload(), "hello");
    // The PID in the notification is the notifier's real backend.
    assert_eq!(n.process_id().to_string(), notifier_pid);
}

/// With `session_server_at = "login"` the client is told its server's PID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_key_data_pid_is_the_servers() {
    let pgherd = shared_cluster()
        .pgherd()
        .general("session_server_at = \"login\"")
        .start()
        .await;
    let mut raw = RawClient::connect(&pgherd).await;
    let welcome = raw.login_app().await;
    let key = welcome
        .iter()
        .find(|f| f.tag == pgherd_wire::backend::BACKEND_KEY_DATA)
        .expect("BackendKeyData");
    let pid = i32::from_be_bytes(key.body[..4].try_into().unwrap());
    let mut q = bytes::BytesMut::new();
    pgherd_wire::frontend::query(&mut q, "SELECT pg_backend_pid()");
    raw.send(&q).await;
    let row = loop {
        let f = raw.recv().await.unwrap();
        if f.tag == pgherd_wire::backend::DATA_ROW {
            break f;
        }
    };
    let value = std::str::from_utf8(&row.body[6..]).unwrap();
    assert_eq!(value, pid.to_string());
    // ParameterStatus values are the server's own.
    let version = welcome
        .iter()
        .filter(|f| f.tag == pgherd_wire::backend::PARAMETER_STATUS)
        .filter_map(|f| pgherd_wire::backend::parameter_status_view(&f.body))
        .find(|(k, _)| *k == "server_version")
        .map(|(_, v)| v.to_owned())
        .expect("server_version reported");
    let direct = shared_cluster().pg.sql(0, "SHOW server_version").unwrap();
    assert_eq!(version, direct);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_reach_the_server() {
    let pgherd = shared_cluster().pgherd().start().await;
    let mut config = pgherd.config("app", APP_PASSWORD, "app");
    config
        .application_name("pgherd-test-app")
        .options("-c search_path=custom_path -c work_mem=3MB");
    let (client, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    assert_eq!(
        simple_value(&client, "SHOW search_path").await,
        "custom_path"
    );
    assert_eq!(simple_value(&client, "SHOW work_mem").await, "3MB");
    assert_eq!(
        simple_value(
            &client,
            "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
        .await,
        "pgherd-test-app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_reset_and_reused() {
    let pgherd = shared_cluster()
        .pgherd()
        .database("app = { pool_size = 1 }")
        .start()
        .await;
    let first = pgherd.app().await;
    let pid = simple_value(&first, "SELECT pg_backend_pid()").await;
    first
        .batch_execute("SET work_mem = '77MB'; CREATE TEMP TABLE leftover (x int); BEGIN; SELECT 1")
        .await
        .unwrap();
    drop(first); // leaves inside a transaction
                 // The same server comes back, rolled back and reset.
    let second = pgherd.app().await;
    assert_eq!(simple_value(&second, "SELECT pg_backend_pid()").await, pid);
    assert_ne!(simple_value(&second, "SHOW work_mem").await, "77MB");
    assert_eq!(
        simple_value(
            &second,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'leftover'"
        )
        .await,
        "0"
    );
    let status = pgherd.handle.pools();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].status.total, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_right_backend() {
    let pgherd = shared_cluster().pgherd().start().await;
    let client = pgherd.app().await;
    let bystander = pgherd.app().await;
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await });
    // Wait until the sleep is running on the server.
    wait_for_sql(
        shared_cluster(),
        0,
        "SELECT count(*) FROM pg_stat_activity \
         WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'",
        "1",
    )
    .await;
    token.cancel_query(NoTls).await.unwrap();
    // 57014 (query_canceled): the sleep was interrupted, not finished.
    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err), Some("57014"));
    // Other sessions are untouched.
    assert_eq!(simple_value(&bystander, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_stream_with_bounded_memory() {
    let pgherd = shared_cluster().pgherd().start().await;
    let client = pgherd.app().await;
    let before = peak_rss_kib();
    // 200,000 rows of 1,000 bytes: 200 MB through the proxy.
    let rows = client
        .query_raw::<_, i32, _>(
            "SELECT repeat('x', 1000) FROM generate_series(1, 200000)",
            std::iter::empty(),
        )
        .await
        .unwrap();
    let mut rows = std::pin::pin!(rows);
    let (mut count, mut bytes) = (0usize, 0usize);
    while let Some(row) = rows.next().await {
        let row = row.unwrap();
        bytes += row.get::<_, &str>(0).len();
        count += 1;
        if count % 20_000 == 0 {
            // A slow reader: the proxy must wait, not buffer.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!((count, bytes), (200_000, 200_000_000));
    let grown = peak_rss_kib().saturating_sub(before);
    // Both pgherd and the client live in this process; neither may hold the result.
    assert!(
        grown < 64 * 1024,
        "peak RSS grew by {grown} KiB while streaming 200 MB"
    );
}

fn peak_rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_queries_and_copy() {
    let pgherd = shared_cluster().pgherd().start().await;
    let out = psql(
        &pgherd,
        "app",
        APP_PASSWORD,
        "app",
        &["-c", "SELECT 40 + 2", "-c", "SELECT current_database()"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\napp\n");

    let script = "CREATE TEMP TABLE t (v int);\n\
                  COPY t FROM STDIN;\n1\n2\n3\n\\.\n\
                  SELECT sum(v) FROM t;\n";
    let dir = tempfile_path("psql-script.sql");
    std::fs::write(&dir, script).unwrap();
    let out = psql(
        &pgherd,
        "app",
        APP_PASSWORD,
        "app",
        &["-q", "-f", dir.to_str().unwrap()],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "6");
    let _ = std::fs::remove_file(dir);
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pgherd-{}-{name}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_connections_pass_through() {
    let pgherd = shared_cluster().pgherd().start().await;
    for mode in ["database", "true"] {
        let bins = PgBinaries::find().unwrap();
        let conninfo = format!(
            "host=127.0.0.1 port={} user=app dbname=app replication={mode}",
            pgherd.addr.port()
        );
        let mut cmd = std::process::Command::new(bins.path("psql"));
        cmd.args(["-X", "-A", "-t", "-d", &conninfo, "-c", "IDENTIFY_SYSTEM"])
            .env("PGPASSWORD", APP_PASSWORD);
        let out = output(cmd).await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let direct = shared_cluster()
            .pg
            .sql(0, "SELECT system_identifier FROM pg_control_system()")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with(&direct), "{stdout} vs {direct}");
    }
    assert!(
        pgherd.handle.pools().is_empty(),
        "replication is not pooled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_auth_and_trusted_server_login() {
    // No passwords anywhere: pgherd trusts clients, the server trusts pgherd.
    let pgherd = shared_cluster()
        .pgherd()
        .general("auth_type = \"trust\"")
        .start()
        .await;
    let client = pgherd.connect("trustuser", "", "postgres").await.unwrap();
    assert_eq!(
        simple_value(&client, "SELECT current_user").await,
        "trustuser"
    );
    // A user the server does not trust: pgherd has no password to offer.
    let err = pgherd.connect("app", "", "app").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("28000"), "{}", message(&err));
    assert!(message(&err).contains("pg0"), "{}", message(&err));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_reach_the_client() {
    let pgherd = shared_cluster().pgherd().start().await;
    let (client, mut connection) = pgherd
        .config("app", APP_PASSWORD, "app")
        .connect(NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notice(n) = m {
                let _ = tx.send(n.message().to_owned());
            }
        }
    });
    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        .await
        .unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(notice, "hello from plpgsql");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_protocol_versions_are_negotiated_down() {
    let pgherd = shared_cluster()
        .pgherd()
        .general("auth_type = \"trust\"")
        .start()
        .await;
    let mut raw = RawClient::connect(&pgherd).await;
    // SSLRequest first: answered 'N', then protocol 3.2 with a protocol option.
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await;
    let mut n = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut n)
        .await
        .unwrap();
    assert_eq!(&n, b"N");
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 3, 0, 2]);
    for s in [
        "user",
        "trustuser",
        "database",
        "postgres",
        "_pq_.future",
        "1",
    ] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    raw.send(&packet).await;
    let v = raw.recv().await.unwrap();
    assert_eq!(
        v.tag,
        pgherd_wire::backend::NEGOTIATE_PROTOCOL_VERSION,
        "NegotiateProtocolVersion first"
    );
    assert_eq!(&v.body[..8], &[0, 3, 0, 0, 0, 0, 0, 1]);
    assert_eq!(&v.body[8..], b"_pq_.future\0");
    let ok = raw.recv().await.unwrap();
    assert_eq!(
        (ok.tag, &ok.body[..]),
        (pgherd_wire::backend::AUTHENTICATION, &[0u8, 0, 0, 0][..])
    );
    while raw.recv().await.unwrap().tag != pgherd_wire::backend::READY_FOR_QUERY {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_and_query_times_are_counted_in_session_mode() {
    let pgherd = shared_cluster()
        .pgherd()
        .general("admin_users = [\"app\"]")
        .start()
        .await;
    let client = pgherd.app().await;
    // One transaction of several requests, ~0.3 s from BEGIN to COMMIT.
    client.simple_query("BEGIN").await.unwrap();
    client.simple_query("SELECT pg_sleep(0.2)").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.simple_query("COMMIT").await.unwrap();
    let console = pgherd
        .connect("app", APP_PASSWORD, "pgbouncer")
        .await
        .unwrap();
    let rows = simple_rows(&console, "SHOW STATS").await.unwrap();
    let app = rows
        .iter()
        .find(|r| r[0].as_deref() == Some("app"))
        .expect("a SHOW STATS row for app");
    // total_xact_count, total_query_count, total_xact_time and
    // total_query_time (µs) are the 2nd, 3rd, 6th and 7th columns.
    let number = |i: usize| app[i].as_deref().unwrap().parse::<u64>().unwrap();
    assert_eq!(number(1), 1, "BEGIN..COMMIT is one transaction");
    assert_eq!(number(2), 3, "of three queries");
    let xact = number(5);
    assert!(
        (300_000..30_000_000).contains(&xact),
        "total_xact_time {xact} µs for a 0.3 s transaction"
    );
    // The queries: pg_sleep's 0.2 s and two quick ones; not the pause
    // between them, when the server owed nothing.
    let query = number(6);
    assert!(
        (200_000..xact - 50_000).contains(&query),
        "total_query_time {query} µs, total_xact_time {xact} µs"
    );
}

/// PostgreSQL's notice for an application_name past 63 bytes (NAMEDATALEN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_notices_reach_the_client_in_both_modes() {
    let long = "a".repeat(70);
    for mode in ["session", "transaction"] {
        let pgherd = shared_cluster()
            .pgherd()
            .general(&format!("pool_mode = \"{mode}\""))
            .start()
            .await;
        let mut raw = RawClient::connect(&pgherd).await;
        let welcome = raw.login_app_with(&[("application_name", &long)]).await;
        let notices: Vec<_> = welcome
            .iter()
            .filter(|f| f.tag == pgherd_wire::backend::NOTICE_RESPONSE)
            .map(|f| pgherd_wire::backend::ErrorFields::parse(&f.body).unwrap())
            .collect();
        assert_eq!(notices.len(), 1, "{mode}: {notices:?}");
        assert_eq!(notices[0].code, "42622", "{mode}: name_too_long");
        assert!(
            notices[0].message.contains("will be truncated to"),
            "{mode}: {}",
            notices[0].message
        );
        let client = pgherd.app_named(&long).await;
        let shown = simple_value(&client, "SHOW application_name").await;
        assert_eq!(shown, "a".repeat(63), "{mode}");
    }
}

/// A message type no client may send once logged in: PostgreSQL's FATAL
/// 08P01, in both modes (in session mode the server itself says it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_message_type_after_login_is_a_protocol_violation() {
    for mode in ["session", "transaction"] {
        let pgherd = shared_cluster()
            .pgherd()
            .general(&format!("pool_mode = \"{mode}\""))
            .start()
            .await;
        let mut raw = RawClient::connect(&pgherd).await;
        raw.login_app().await;
        raw.send(&[b'Y', 0, 0, 0, 4]).await;
        let fatal = raw.expect_error().await;
        assert_eq!(
            (fatal.severity.as_str(), fatal.code.as_str()),
            ("FATAL", "08P01"),
            "{mode}"
        );
        assert_eq!(fatal.message, "invalid frontend message type 89", "{mode}");
        assert!(raw.closed().await);
        // Everyone else is served.
        let other = pgherd.app().await;
        assert_eq!(simple_value(&other, "SELECT 1").await, "1");
    }
}

/// Session mode's default (`session_server_at = "first_query"`), pgbouncer's:
/// a client gets its server at its first request, so idle connections hold
/// none. 50 clients log in to a pool of 5, then 5 of them hold a
/// transaction each at once, with no one waiting, and the sixth waits for a
/// server. With `"login"`, the sixth login already waits, and fails at
/// query_wait_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_clients_hold_no_server() {
    let pool = |at: &str| {
        shared_cluster()
            .pgherd()
            .nodes(&[0])
            .general("default_pool_size = 5")
            .general("max_client_conn = 200")
            .general("query_wait_timeout = 2")
            .general(&format!("session_server_at = \"{at}\""))
    };
    let status = |pgherd: &RunningPgherd| {
        let pools = pgherd.handle.pools();
        assert_eq!(pools.len(), 1);
        pools[0].status
    };

    let pgherd = pool("first_query").start().await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(pgherd.app().await);
    }
    assert_eq!(
        status(&pgherd).checked_out,
        0,
        "idle clients hold no server"
    );
    let mut busy = clients.split_off(45);
    let mut pids = std::collections::HashSet::new();
    for client in &busy {
        client.batch_execute("BEGIN").await.unwrap();
        pids.insert(simple_value(client, "SELECT pg_backend_pid()").await);
    }
    assert_eq!(pids.len(), 5, "five transactions on five servers");
    let now = status(&pgherd);
    assert_eq!((now.total, now.checked_out, now.waiting), (5, 5, 0));
    // The pool is full: a sixth client's first query waits for a server,
    // and gets the one a client leaves.
    let sixth = &clients[0];
    let query = sixth.simple_query("SELECT pg_backend_pid()");
    let leaving = async {
        for _ in 0..1500 {
            if status(&pgherd).waiting == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(status(&pgherd).waiting, 1, "the sixth waits");
        busy.pop();
    };
    let (rows, ()) = tokio::join!(query, leaving);
    let rows = rows.unwrap();
    let pid = match &rows[1] {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).unwrap().to_owned(),
        other => panic!("a row expected: {other:?}"),
    };
    assert!(
        pids.contains(&pid),
        "the sixth got the server a client left"
    );
    drop((busy, clients));
    drop(pgherd);

    // At login: the sixth login waits for a server and is refused.
    let pgherd = pool("login").start().await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(pgherd.app().await);
    }
    let sixth = pgherd
        .config("app", APP_PASSWORD, "app")
        .connect(NoTls)
        .await;
    let err = sixth.err().expect("the sixth login fails");
    assert_eq!(sqlstate(&err), Some("53300"), "{err}");
    assert_eq!(status(&pgherd).checked_out, 5);
}
