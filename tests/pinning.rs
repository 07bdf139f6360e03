//! Transaction mode with session state: a client that creates a temporary
//! table, LISTENs, takes a session advisory lock, opens a WITH HOLD cursor
//! or PREPAREs a statement keeps its server until the state is gone (it is
//! pinned), so it sees what a direct connection would and no other client
//! sees its state; a SET outside a transaction is replayed instead. Small
//! pools (1-2 servers) and more clients than servers, real clients
//! (tokio-postgres, psql), a real cluster.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use pgherd_integration_tests::*;

/// pgherd in transaction mode with `pool_size` servers per pool.
async fn pgherd_with_pool(pool_size: usize, extra: &[&str]) -> RunningPgherd {
    let mut builder = shared_cluster()
        .pgherd()
        .nodes(&[0])
        .general("pool_mode = \"transaction\"")
        .general("admin_users = [\"app\"]")
        .general(&format!("default_pool_size = {pool_size}"));
    for line in extra {
        builder = builder.general(line);
    }
    builder.start().await
}

/// Servers held by pinned clients, over every pool.
fn pinned(pgherd: &RunningPgherd) -> usize {
    pgherd.handle.pools().iter().map(|p| p.pinned).sum()
}

/// Waits (30 s at most) until `pinned` says `n`.
async fn wait_pinned(pgherd: &RunningPgherd, n: usize) {
    for _ in 0..1500 {
        if pinned(pgherd) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("pinned servers: {}, not {n}", pinned(pgherd));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_tables_live_across_transactions_and_stay_their_creators() {
    let pgherd = pgherd_with_pool(2, &[]).await;
    // 12 clients on 2 servers: each creates its table, uses it over several
    // transactions, and leaves; a server then goes to the next one, reset.
    let mut tasks = Vec::new();
    for c in 0..12i32 {
        let client = pgherd.app().await;
        tasks.push(tokio::spawn(async move {
            client
                .batch_execute("CREATE TEMP TABLE mine (owner int, n int)")
                .await
                .unwrap();
            for n in 1..=5i32 {
                client
                    .execute("INSERT INTO mine VALUES ($1, $2)", &[&c, &n])
                    .await
                    .unwrap();
                let rows = client
                    .query("SELECT DISTINCT owner FROM mine", &[])
                    .await
                    .unwrap();
                let owners: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
                assert_eq!(owners, [c], "client {c} sees only its own rows");
                let count: i64 = client
                    .query_one("SELECT count(*) FROM mine", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(count, i64::from(n), "client {c}");
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("every client got a server in turn")
            .unwrap();
    }
    wait_pinned(&pgherd, 0).await;
    // The servers were reset: a new client finds no table of anyone's.
    let after = pgherd.app().await;
    let e = after.batch_execute("SELECT * FROM mine").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("42P01"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_across_transactions_and_unlisten_releases_the_server() {
    let pgherd = pgherd_with_pool(2, &[]).await;
    let (listener, mut notes) = connect_listening(&pgherd).await;
    listener.batch_execute("LISTEN pin_jobs").await.unwrap();
    wait_pinned(&pgherd, 1).await;
    // Other transactions of the listener, then a notification from another
    // client between them: it arrives.
    for _ in 0..3 {
        assert_eq!(simple_value(&listener, "SELECT 1").await, "1");
    }
    let notifier = pgherd.app().await;
    for payload in ["one", "two"] {
        notifier
            .batch_execute(&format!("NOTIFY pin_jobs, '{payload}'"))
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(10), notes.recv())
            .await
            .expect("the notification arrives")
            .unwrap();
        assert_eq!((n.channel(), n.payload()), ("pin_jobs", payload));
        assert_eq!(simple_value(&listener, "SELECT 2").await, "2");
    }
    // SHOW CLIENTS names what pins it.
    let console = pgherd
        .connect("app", APP_PASSWORD, "pgbouncer")
        .await
        .unwrap();
    let rows = simple_rows(&console, "SHOW CLIENTS").await.unwrap();
    let pinned_column: Vec<Option<String>> =
        rows.iter().map(|r| r.last().cloned().flatten()).collect();
    assert!(
        pinned_column.iter().any(|v| v.as_deref() == Some("LISTEN")),
        "{pinned_column:?}"
    );
    listener.batch_execute("UNLISTEN *").await.unwrap();
    wait_pinned(&pgherd, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_advisory_locks_stay_with_their_holder() {
    let pgherd = pgherd_with_pool(2, &[]).await;
    let holder = pgherd.app().await;
    let other = pgherd.app().await;
    assert_eq!(
        simple_value(&holder, "SELECT pg_advisory_lock(4242)::text").await,
        ""
    );
    for _ in 0..3 {
        // The holder's later transactions still hold it; the other client
        // cannot take it, whichever server it lands on.
        assert_eq!(simple_value(&holder, "SELECT 1").await, "1");
        assert_eq!(
            simple_value(&other, "SELECT pg_try_advisory_lock(4242)").await,
            "f"
        );
    }
    assert_eq!(
        simple_value(&holder, "SELECT pg_advisory_unlock_all()::text").await,
        ""
    );
    // pgherd cannot tell a failed try from a taken lock: the other client
    // is pinned too, by its tries, and sees the lock free now.
    wait_pinned(&pgherd, 1).await;
    assert_eq!(
        simple_value(&other, "SELECT pg_try_advisory_lock(4242)").await,
        "t"
    );
    assert_eq!(
        simple_value(&other, "SELECT pg_advisory_unlock_all()::text").await,
        ""
    );
    wait_pinned(&pgherd, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_cursors_and_sql_prepared_statements_live_across_transactions() {
    let pgherd = pgherd_with_pool(1, &[]).await;
    let client = pgherd.app().await;
    client
        .batch_execute("DECLARE c CURSOR WITH HOLD FOR SELECT generate_series(1, 9)")
        .await
        .unwrap();
    assert_eq!(simple_value(&client, "FETCH 3 FROM c").await, "1");
    assert_eq!(simple_value(&client, "FETCH 1 FROM c").await, "4");
    client
        .batch_execute("PREPARE twice (int) AS SELECT $1 * 2")
        .await
        .unwrap();
    for (n, want) in [(21, "42"), (5, "10")] {
        assert_eq!(
            simple_value(&client, &format!("EXECUTE twice({n})")).await,
            want
        );
    }
    client.batch_execute("CLOSE ALL").await.unwrap();
    assert_eq!(pinned(&pgherd), 1, "the prepared statement still pins");
    client.batch_execute("DEALLOCATE ALL").await.unwrap();
    wait_pinned(&pgherd, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_is_released_by_discard_all_and_by_the_client_leaving() {
    // One server: while it is pinned, another client waits for it.
    let pgherd = pgherd_with_pool(1, &[]).await;
    let pinner = pgherd.app().await;
    pinner.batch_execute("LISTEN logins_go_on").await.unwrap();
    wait_pinned(&pgherd, 1).await;
    // With the one server pinned, a new client still logs in (welcomed as
    // the server welcomed others); its first transaction is what waits.
    let waiter = tokio::time::timeout(Duration::from_secs(60), pgherd.app())
        .await
        .expect("a login does not wait for a server");
    pinner.batch_execute("UNLISTEN *").await.unwrap();
    wait_pinned(&pgherd, 0).await;
    pinner
        .batch_execute("CREATE TEMP TABLE t (a int); SET search_path = pg_temp, public")
        .await
        .unwrap();
    wait_pinned(&pgherd, 1).await;
    let waited = tokio::spawn(async move {
        let v = simple_value(&waiter, "SELECT 7").await;
        (waiter, v)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waited.is_finished(), "the one server is pinned");
    pinner.batch_execute("DISCARD ALL").await.unwrap();
    let (waiter, v) = tokio::time::timeout(Duration::from_secs(30), waited)
        .await
        .expect("DISCARD ALL gave the server back")
        .unwrap();
    assert_eq!(v, "7");
    wait_pinned(&pgherd, 0).await;

    // Pinned again, then the client leaves: the server is reset and serves
    // the waiting client, which sees none of the state.
    pinner
        .batch_execute("CREATE TEMP TABLE t2 (a int); SET work_mem = '7MB'")
        .await
        .unwrap();
    wait_pinned(&pgherd, 1).await;
    let waited = tokio::spawn(async move {
        let shown = simple_value(&waiter, "SHOW work_mem").await;
        let table = waiter.batch_execute("SELECT * FROM t2").await;
        (
            shown,
            table.err().and_then(|e| sqlstate(&e).map(str::to_owned)),
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waited.is_finished(), "the one server is pinned");
    drop(pinner);
    let (shown, table) = tokio::time::timeout(Duration::from_secs(30), waited)
        .await
        .expect("the pinned client's leaving gave the server back")
        .unwrap();
    assert_eq!(shown, "4MB", "the default, not the pinned client's SET");
    assert_eq!(table.as_deref(), Some("42P01"));
    wait_pinned(&pgherd, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_sees_its_temporary_table_across_autocommit_statements() {
    // Two servers. Between psql's statements another psql (run by the
    // first with \!) makes a table of the same name: unpinned, it would
    // land on the first one's server and find the table there, and the
    // first would then run on either server.
    let pgherd = pgherd_with_pool(2, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let inner_out = dir.path().join("inner.out");
    let bins = pgherd_testkit::PgBinaries::find().unwrap();
    let inner = format!(
        "{} -X -A -t -v ON_ERROR_STOP=1 -h {} -p {} -U app app \
         -c 'CREATE TEMP TABLE p (a int)' -c 'INSERT INTO p VALUES (9)' \
         -c 'SELECT count(*) FROM p' > {} 2>&1",
        bins.path("psql").display(),
        pgherd.addr.ip(),
        pgherd.addr.port(),
        inner_out.display()
    );
    let script = dir.path().join("outer.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE TEMP TABLE p (a int);\nINSERT INTO p VALUES (1), (2);\n\\! {inner}\n\
             SELECT count(*) FROM p;\n"
        ),
    )
    .unwrap();
    let out = psql(
        &pgherd,
        "app",
        APP_PASSWORD,
        "app",
        &["-f", &script.display().to_string()],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().last(), Some("2"), "{stdout}");
    let inner = std::fs::read_to_string(&inner_out).unwrap();
    assert_eq!(
        inner.lines().last(),
        Some("1"),
        "the other psql's own table: {inner}"
    );
    wait_pinned(&pgherd, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_pinned_percent_the_client_is_told_and_the_server_reset() {
    // Two servers, at most one pinned.
    let pgherd = pgherd_with_pool(2, &["max_pinned_percent = 50"]).await;
    let first = pgherd.app().await;
    first.batch_execute("LISTEN a").await.unwrap();
    wait_pinned(&pgherd, 1).await;
    // A second client's LISTEN runs; at the end of its transaction the
    // state cannot be kept: the client is ended with the reason.
    let mut second = RawClient::connect(&pgherd).await;
    second.login_app().await;
    let mut query = bytes::BytesMut::new();
    pgherd_wire::frontend::query(&mut query, "LISTEN b");
    second.send(&query).await;
    let fatal = second.expect_error().await;
    assert_eq!(
        (fatal.severity.as_str(), fatal.code.as_str()),
        ("FATAL", "53400")
    );
    assert!(
        fatal.message.contains("LISTEN") && fatal.message.contains("max_pinned_percent"),
        "{}",
        fatal.message
    );
    assert!(second.closed().await);
    assert_eq!(pinned(&pgherd), 1);
    // The first is still served, pinned.
    assert_eq!(simple_value(&first, "SELECT 1").await, "1");
    // Others too, on the free server.
    let third = pgherd.app().await;
    assert_eq!(simple_value(&third, "SELECT 3").await, "3");
}

/// `pin_limit_action = "reset"`: past the cap the state is reset and the
/// client goes on without it (pgbouncer's behaviour for it), and the next
/// client of that server sees none of it. `LOAD` closes its server when
/// the client leaves: nothing unloads a library.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_pinned_percent_reset_drops_the_state_and_goes_on() {
    let pgherd = pgherd_with_pool(
        2,
        &["max_pinned_percent = 50", "pin_limit_action = \"reset\""],
    )
    .await;
    let first = pgherd.app().await;
    first.batch_execute("LISTEN a").await.unwrap();
    wait_pinned(&pgherd, 1).await;
    let second = pgherd.app().await;
    second
        .batch_execute("CREATE TEMP TABLE mine (a int)")
        .await
        .unwrap();
    assert_eq!(pinned(&pgherd), 1, "the cap held");
    let err = second
        .batch_execute("SELECT * FROM mine")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42P01"), "reset: the table is gone");
    assert_eq!(simple_value(&second, "SELECT 2").await, "2");
    first.batch_execute("UNLISTEN *").await.unwrap();
    wait_pinned(&pgherd, 0).await;

    // LOAD pins (refused here to a role that is not a superuser, but pgherd
    // does not read results: it pins all the same); when its client
    // leaves, its server is closed, not pooled.
    let loader = pgherd.app().await;
    let refused = loader
        .batch_execute("LOAD 'auto_explain'")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&refused), Some("42501"));
    wait_pinned(&pgherd, 1).await;
    let (pid, _) = on_server(&loader, "1").await;
    drop(loader);
    wait_pinned(&pgherd, 0).await;
    let gone = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
    wait_for_sql(shared_cluster(), 0, &gone, "0").await;
}

/// The pid of the server a client's next statement runs on, with `sql`'s
/// one value beside it.
async fn on_server(client: &tokio_postgres::Client, sql: &str) -> (String, String) {
    let rows = simple_rows(
        client,
        &format!("SELECT pg_backend_pid()::text, ({sql})::text"),
    )
    .await
    .unwrap();
    (
        rows[0][0].clone().unwrap(),
        rows[0][1].clone().unwrap_or_default(),
    )
}

/// `SET` outside a transaction is replayed, not pinned: the client's
/// settings (unreported ones: `work_mem`, a list-valued `search_path`, a
/// custom `app.*`) follow it to the other server, the server it set them on
/// has them reset for the next client, a failed `SET` changes nothing, and
/// `RESET`/`RESET ALL` are honoured. A `SET` inside a transaction still pins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_the_client_to_other_servers() {
    let pgherd = pgherd_with_pool(2, &[]).await;
    let (a, b, c) = (pgherd.app().await, pgherd.app().await, pgherd.app().await);
    // b holds one server; a's settings are made on the other.
    b.batch_execute("BEGIN").await.unwrap();
    let (b_server, _) = on_server(&b, "1").await;
    for set in [
        "SET work_mem = '77MB'",
        "SET search_path TO \"Odd Schema\", public;",
        "set app.user_id to 42",
    ] {
        a.batch_execute(set).await.unwrap();
    }
    // A bad value fails and changes nothing.
    let err = a.batch_execute("SET work_mem = 'lots'").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("22023"));
    assert_eq!(pinned(&pgherd), 0, "settings are replayed, not pinned");
    // c takes the server a set them on and sees none of them.
    c.batch_execute("BEGIN").await.unwrap();
    let (c_server, c_work_mem) = on_server(&c, "current_setting('work_mem')").await;
    assert_ne!(c_server, b_server);
    assert_eq!(c_work_mem, "4MB");
    let (_, custom) = on_server(&c, "current_setting('app.user_id', true)").await;
    assert_eq!(custom, "");
    b.batch_execute("COMMIT").await.unwrap();
    // a lands on b's old server, with its settings.
    let (a_server, work_mem) = on_server(&a, "current_setting('work_mem')").await;
    assert_eq!(a_server, b_server, "the only free server");
    assert_eq!(work_mem, "77MB");
    let (_, path) = on_server(&a, "current_setting('search_path')").await;
    assert_eq!(path, "\"Odd Schema\", public");
    let (_, user_id) = on_server(&a, "current_setting('app.user_id')").await;
    assert_eq!(user_id, "42");
    c.batch_execute("COMMIT").await.unwrap();

    // RESET one, then RESET ALL; every server then shows the defaults.
    a.batch_execute("RESET work_mem").await.unwrap();
    b.batch_execute("BEGIN").await.unwrap();
    let (_, work_mem) = on_server(&a, "current_setting('work_mem')").await;
    assert_eq!(work_mem, "4MB");
    let (_, user_id) = on_server(&a, "current_setting('app.user_id')").await;
    assert_eq!(user_id, "42");
    b.batch_execute("COMMIT").await.unwrap();
    a.batch_execute("RESET ALL").await.unwrap();
    // Both servers at once.
    for client in [&a, &b] {
        client.batch_execute("BEGIN").await.unwrap();
    }
    for client in [&a, &b] {
        let (_, user_id) = on_server(client, "current_setting('app.user_id', true)").await;
        assert_eq!(user_id, "");
        let (_, path) = on_server(client, "current_setting('search_path')").await;
        assert_eq!(path, "\"$user\", public");
    }
    for client in [&a, &b] {
        client.batch_execute("COMMIT").await.unwrap();
    }
    assert_eq!(pinned(&pgherd), 0);

    // Inside a transaction a SET's fate is the transaction's: it pins.
    a.batch_execute("BEGIN; SET work_mem = '9MB'; COMMIT")
        .await
        .unwrap();
    wait_pinned(&pgherd, 1).await;
    a.batch_execute("RESET ALL").await.unwrap();
    wait_pinned(&pgherd, 0).await;
}

/// The next notification, or a failed test (a hang guard, not a timing).
async fn next_note(
    notes: &mut tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) -> tokio_postgres::Notification {
    tokio::time::timeout(Duration::from_secs(60), notes.recv())
        .await
        .expect("a notification arrives")
        .expect("the connection is open")
}

/// `listen_fanout`: 100 clients LISTEN on a pool of 2 without pinning it;
/// pgherd's one listening connection fans each NOTIFY out, every listener
/// gets it exactly once with the sender's real PID, between their own
/// transactions; UNLISTEN (one channel, or `*`) and leaving stop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_fanout_serves_a_hundred_listeners_from_one_connection() {
    // Channel names of this test's own: a NOTIFY reaches every listener of
    // the database, other tests' included.
    let pgherd = pgherd_with_pool(2, &["listen_fanout = true", "max_client_conn = 200"]).await;
    let mut listeners = Vec::new();
    for _ in 0..100 {
        let (client, notes) = connect_listening(&pgherd).await;
        client.batch_execute("LISTEN fan_jobs").await.unwrap();
        client.batch_execute("listen \"Fan Other\";").await.unwrap();
        listeners.push((client, notes));
    }
    assert_eq!(pinned(&pgherd), 0, "nobody is pinned");
    let pooled: usize = pgherd.handle.pools().iter().map(|p| p.status.total).sum();
    assert!(pooled <= 2, "{pooled} pooled servers");
    // Listeners run transactions as usual; a second LISTEN of a channel
    // changes nothing (notifications still come once).
    for (client, _) in listeners.iter().take(10) {
        assert_eq!(simple_value(client, "SELECT 1").await, "1");
        client.batch_execute("LISTEN fan_jobs").await.unwrap();
    }
    let notifier = pgherd.app().await;
    let notify = |sql: &'static str| {
        let notifier = &notifier;
        async move {
            let rows = simple_rows(
                notifier,
                &format!("BEGIN; {sql}; SELECT pg_backend_pid(); COMMIT"),
            )
            .await
            .unwrap();
            rows[0][0].clone().unwrap()
        }
    };
    let sender = notify("NOTIFY fan_jobs, 'hello'").await;
    let second = notify("NOTIFY fan_jobs, 'again'").await;
    for (_, notes) in &mut listeners {
        let n = next_note(notes).await;
        assert_eq!((n.channel(), n.payload()), ("fan_jobs", "hello"));
        assert_eq!(n.process_id().to_string(), sender, "the sender's real PID");
        // Once: the next one is the second NOTIFY.
        let n = next_note(notes).await;
        assert_eq!((n.channel(), n.payload()), ("fan_jobs", "again"));
        assert_eq!(n.process_id().to_string(), second);
    }
    // One connection, two channels, 200 listeners; each NOTIFY written 100 times.
    let hubs = pgherd.handle.listen_fanout();
    assert_eq!(hubs.len(), 1, "{hubs:?}");
    let hub = &hubs[0];
    assert_eq!(
        (
            hub.channels,
            hub.listeners,
            hub.connected,
            hub.received,
            hub.delivered
        ),
        (2, 200, true, 2, 200),
        "{hub:?}"
    );
    let (_, metrics) = http_get(&pgherd, "/metrics").await;
    assert!(
        metrics.contains("pgherd_listen_fanout_listeners{database=\"app\",user=\"app\"} 200"),
        "{metrics}"
    );
    // Half stop listening on fan_jobs (one by UNLISTEN fan_jobs, one by UNLISTEN *
    // then LISTEN "Other" again), ten leave.
    for (i, (client, _)) in listeners.iter().enumerate().take(50) {
        let sql = match i % 2 {
            0 => "UNLISTEN fan_jobs",
            _ => "UNLISTEN *; ",
        };
        client.batch_execute(sql).await.unwrap();
        if i % 2 == 1 {
            client.batch_execute("LISTEN \"Fan Other\"").await.unwrap();
        }
    }
    listeners.truncate(90);
    notify("NOTIFY fan_jobs, 'third'").await;
    notify("NOTIFY \"Fan Other\", 'fourth'").await;
    for (i, (_, notes)) in listeners.iter_mut().enumerate() {
        let mut n = next_note(notes).await;
        if i >= 50 {
            assert_eq!(
                (n.channel(), n.payload()),
                ("fan_jobs", "third"),
                "listener {i}"
            );
            n = next_note(notes).await;
        }
        assert_eq!(
            (n.channel(), n.payload()),
            ("Fan Other", "fourth"),
            "listener {i}"
        );
    }
    assert_eq!(pinned(&pgherd), 0);
    // DISCARD ALL ends a client's listening too (PostgreSQL's includes
    // UNLISTEN *): it hears only what it listens to afterwards.
    let (client, mut notes) = connect_listening(&pgherd).await;
    client.batch_execute("LISTEN fan_jobs").await.unwrap();
    client.batch_execute("DISCARD ALL").await.unwrap();
    client
        .batch_execute("LISTEN fan_after_discard")
        .await
        .unwrap();
    notify("NOTIFY fan_jobs, 'fifth'").await;
    notify("NOTIFY fan_after_discard, 'sixth'").await;
    assert_eq!(next_note(&mut notes).await.payload(), "sixth");
    drop(client);
    // A LISTEN inside a transaction goes to the server and pins, as before.
    let (client, mut notes) = connect_listening(&pgherd).await;
    client
        .batch_execute("BEGIN; LISTEN fan_pinned; COMMIT")
        .await
        .unwrap();
    wait_pinned(&pgherd, 1).await;
    notifier.batch_execute("NOTIFY fan_pinned").await.unwrap();
    assert_eq!(next_note(&mut notes).await.channel(), "fan_pinned");
}

/// A parameter listed in `track_extra_parameters` that the server does not
/// report (`search_path`): a later `SET` of it follows the client too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_of_an_unreported_tracked_parameter_follows_the_client() {
    let pgherd = pgherd_with_pool(2, &["track_extra_parameters = [\"search_path\"]"]).await;
    let (a, b, c) = (pgherd.app().await, pgherd.app().await, pgherd.app().await);
    // b holds one server, so a's SET runs on the other, which c then holds.
    b.batch_execute("BEGIN").await.unwrap();
    let (b_server, _) = on_server(&b, "1").await;
    a.batch_execute("SET search_path TO app_one, public")
        .await
        .unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    let (server, path) = on_server(&a, "current_setting('search_path')").await;
    assert_eq!(server, b_server, "the only free server");
    assert_eq!(path, "app_one, public");
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(pinned(&pgherd), 0);
}

/// A bad tracked value in the startup packet while the pool is full: the
/// client is welcomed with the cached welcome, so its first transaction,
/// not its login, is where the server refuses the value (FATAL 22023, as
/// a direct connection's login would say). Everyone else goes on; the
/// server the refusal happened on is closed (pgherd had already taken the
/// value as the server's) and its place in the pool is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_time_zone_after_a_cached_welcome_fails_its_first_transaction() {
    let pgherd = pgherd_with_pool(1, &[]).await;
    let holder = pgherd.app().await;
    let (pid, _) = on_server(&holder, "1").await;
    holder.batch_execute("BEGIN").await.unwrap();
    let mut bad = RawClient::connect(&pgherd).await;
    let welcome = bad.login_app_with(&[("TimeZone", "No/Such_Zone")]).await;
    assert_eq!(
        welcome.last().map(|f| f.tag),
        Some(pgherd_wire::backend::READY_FOR_QUERY),
        "welcomed while the one server is busy"
    );
    let mut query = bytes::BytesMut::new();
    pgherd_wire::frontend::query(&mut query, "SELECT 1");
    bad.send(&query).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let fatal = bad.expect_error().await;
    assert_eq!(
        (fatal.severity.as_str(), fatal.code.as_str()),
        ("FATAL", "22023")
    );
    assert!(fatal.message.contains("TimeZone"), "{}", fatal.message);
    assert!(bad.closed().await);
    let (again, _) = on_server(&holder, "1").await;
    assert_ne!(again, pid, "a fresh server in its place");
    let other = pgherd.app().await;
    assert_eq!(simple_value(&other, "SELECT 2").await, "2");
    let gone = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
    wait_for_sql(shared_cluster(), 0, &gone, "0").await;
    let total: usize = pgherd.handle.pools().iter().map(|p| p.status.total).sum();
    assert_eq!(total, 1, "the pool of one holds one server");
}

/// A server reset by `server_reset_query = "RESET ALL"` (a client left
/// mid-transaction) has none of the replayed settings any more: a client
/// with the same setting as the one that left gets it set again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_server_forgets_the_settings_replayed_on_it() {
    let pgherd = pgherd_with_pool(1, &["server_reset_query = \"RESET ALL\""]).await;
    let keeper = pgherd.app().await;
    keeper.batch_execute("SET work_mem = '77MB'").await.unwrap();
    let leaver = pgherd.app().await;
    leaver.batch_execute("SET work_mem = '77MB'").await.unwrap();
    leaver.batch_execute("BEGIN").await.unwrap();
    // Leaves inside its transaction: ROLLBACK and RESET ALL on the server.
    drop(leaver);
    let (_, work_mem) = on_server(&keeper, "current_setting('work_mem')").await;
    assert_eq!(work_mem, "77MB");
}

/// `listen_fanout` while there is no primary to listen on: the LISTEN gets
/// an error naming the cause (08006, not FATAL), and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_fanout_without_a_primary_fails_the_listen_only() {
    let pgherd = shared_cluster()
        .pgherd()
        .nodes(&[1])
        .general("pool_mode = \"transaction\"")
        .general("listen_fanout = true")
        .general("primary_wait_timeout = 1")
        .database("ro = { dbname = \"app\", target = \"replica\" }")
        .start()
        .await;
    pgherd
        .wait_topology("pg1 readable", |t| t.nodes[0].serves_reads())
        .await;
    let client = pgherd.connect("app", APP_PASSWORD, "ro").await.unwrap();
    let err = client.batch_execute("LISTEN jobs").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("08006"), "{err}");
    assert!(message(&err).contains("LISTEN failed"), "{}", message(&err));
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");
    let hubs = pgherd.handle.listen_fanout();
    assert_eq!((hubs[0].channels, hubs[0].connected), (0, false));
}
