//! Transaction pooling: servers are shared between transactions of many
//! clients, and never between two transactions at once.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use pgherd_integration_tests::*;
use tokio_postgres::types::Type;

async fn transaction_pgherd(pool_size: usize) -> RunningPgherd {
    shared_cluster()
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("query_wait_timeout = 30")
        .database(&format!("app = {{ pool_size = {pool_size} }}"))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_a_small_pool() {
    ten_clients_on_two_servers().await;
}

/// pgherd's default runtime (`worker_threads = 1`): sessions, probes and
/// these clients all on one thread, none waiting on another.
#[tokio::test(flavor = "current_thread")]
async fn many_clients_share_a_small_pool_on_one_thread() {
    ten_clients_on_two_servers().await;
}

async fn ten_clients_on_two_servers() {
    let pgherd = transaction_pgherd(2).await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(pgherd.app().await);
    }
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for j in 0..20 {
                let v = simple_value(&c, &format!("SELECT {i} * 100 + {j}")).await;
                assert_eq!(v, (i * 100 + j).to_string());
                // Extended protocol, unnamed statement: fine across servers.
                let rows = c
                    .query_typed("SELECT $1::int", &[(&(j as i32), Type::INT4)])
                    .await
                    .unwrap();
                assert_eq!(rows[0].get::<_, i32>(0), j as i32);
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let pools = pgherd.handle.pools();
    assert_eq!(pools.len(), 1);
    assert!(pools[0].status.total <= 2, "{:?}", pools[0].status);
    // Ten clients connected, none holding a server between transactions
    // (a server is given back just after its last reply went out).
    for _ in 0..100 {
        if pgherd.handle.pools()[0].status.checked_out == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pgherd.handle.pools()[0].status.checked_out, 0);
    assert_eq!(pgherd.handle.client_count(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_keeps_its_server_and_others_wait() {
    let pgherd = transaction_pgherd(1).await;
    let a = pgherd.app().await;
    let b = pgherd.app().await;
    a.batch_execute("BEGIN").await.unwrap();
    let pid = simple_value(&a, "SELECT pg_backend_pid()").await;
    // b's statement needs the only server, which a holds until COMMIT.
    let waiting = tokio::spawn(async move { simple_value(&b, "SELECT pg_backend_pid()").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "b waits for a's transaction");
    assert_eq!(simple_value(&a, "SELECT pg_backend_pid()").await, pid);
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(waiting.await.unwrap(), pid, "then b gets the same server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_transaction_never_leaks_it() {
    let pgherd = transaction_pgherd(1).await;
    shared_cluster()
        .pg
        .sql(
            0,
            "CREATE TABLE IF NOT EXISTS tx_leak (v text); GRANT ALL ON tx_leak TO app",
        )
        .unwrap();
    let leaver = pgherd
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap();
    leaver
        .batch_execute("BEGIN; INSERT INTO tx_leak VALUES ('uncommitted')")
        .await
        .unwrap();
    drop(leaver);
    let next = pgherd
        .connect("app", APP_PASSWORD, "postgres")
        .await
        .unwrap();
    assert_eq!(
        simple_value(
            &next,
            "SELECT count(*) FROM tx_leak WHERE v = 'uncommitted'"
        )
        .await,
        "0"
    );
    // Not inside someone else's transaction: BEGIN works, no warning state.
    next.batch_execute("BEGIN; COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_statement_tracking_named_statements_pin_the_server() {
    let pgherd = shared_cluster()
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("max_prepared_statements = 0")
        .database("app = { pool_size = 3 }")
        .start()
        .await;
    let client = pgherd.app().await;
    let stmt = client.prepare("SELECT pg_backend_pid()").await.unwrap();
    let first: i32 = client.query_one(&stmt, &[]).await.unwrap().get(0);
    // Other clients come and go; the statement keeps working.
    for _ in 0..5 {
        let other = pgherd.app().await;
        simple_value(&other, "SELECT 1").await;
        let again: i32 = client.query_one(&stmt, &[]).await.unwrap().get(0);
        assert_eq!(again, first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_server_running_the_query() {
    let pgherd = transaction_pgherd(2).await;
    let client = pgherd.app().await;
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await });
    wait_for_sql(
        shared_cluster(),
        0,
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'",
        "1",
    )
    .await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err), Some("57014"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_simple_extended_prepared_with_pool_of_four() {
    let pgherd = transaction_pgherd(4).await;
    let bins = PgBinaries::find().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(bins.path("pgbench"));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &pgherd.addr.port().to_string(),
            "-U",
            "app",
        ])
        .args(args)
        .arg("app")
        .env("PGPASSWORD", APP_PASSWORD);
        cmd
    };
    let init = output(run(&["-i", "-s", "1", "-q"])).await.unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    for mode in ["simple", "extended", "prepared"] {
        let out = output(run(&["-S", "-c", "32", "-j", "2", "-T", "2", "-M", mode]))
            .await
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{report}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            report.contains("number of failed transactions: 0 "),
            "{report}"
        );
    }
    let pools = pgherd.handle.pools();
    assert!(pools.iter().all(|p| p.status.total <= 4), "{pools:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_transactions_finish_then_ends_sessions() {
    let mut pgherd = transaction_pgherd(2).await;
    let in_tx = pgherd.app().await;
    let idle = pgherd.app().await;
    in_tx.batch_execute("BEGIN").await.unwrap();
    simple_value(&in_tx, "SELECT 1").await;

    assert_eq!(http_get(&pgherd, "/health").await.0, 200);
    pgherd.begin_shutdown();
    // While it drains, the health checks send the VIP elsewhere.
    let mut health = 0;
    for _ in 0..100 {
        health = http_get(&pgherd, "/health").await.0;
        if health == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health, 503, "/health while draining");
    let (status, body) = http_get(&pgherd, "/primary").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    // The client inside a transaction finishes it...
    assert_eq!(simple_value(&in_tx, "SELECT 2").await, "2");
    in_tx.batch_execute("COMMIT").await.unwrap();
    // ...and is then told pgherd is going, like the idle one.
    for client in [&in_tx, &idle] {
        let err = client.simple_query("SELECT 3").await.unwrap_err();
        assert!(
            sqlstate(&err) == Some("57P01") || err.is_closed(),
            "{}",
            message(&err)
        );
    }
    // No new clients.
    let mut refused = false;
    for _ in 0..100 {
        if pgherd.connect("app", APP_PASSWORD, "app").await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_caches_of_twenty_clients_on_two_servers() {
    // tokio-postgres prepares every query under its own names (s0, s1, ...),
    // so each client has statements with the same names and other queries.
    let pgherd = transaction_pgherd(2).await;
    let mut tasks = Vec::new();
    for i in 0..20i32 {
        let client = pgherd.app().await;
        tasks.push(tokio::spawn(async move {
            let add = client.prepare("SELECT $1::int + $2::int").await.unwrap();
            let mine = client
                .prepare(&format!("SELECT {i}::int AS owner, $1::text AS word"))
                .await
                .unwrap();
            for j in 0..30i32 {
                let row = client.query_one(&add, &[&i, &j]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i + j);
                let row = client.query_one(&mine, &[&"hello"]).await.unwrap();
                assert_eq!(
                    row.get::<_, i32>(0),
                    i,
                    "each client sees its own statement"
                );
                // Statements made on the fly too (tokio-postgres closes them after use).
                let n: i64 = client
                    .query_one("SELECT count(*) FROM generate_series(1, $1::int)", &[&j])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(n, i64::from(j));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let pools = pgherd.handle.pools();
    assert!(pools[0].status.total <= 2, "{:?}", pools[0].status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_clients_on_one_server_keep_their_own_statements() {
    let pgherd = transaction_pgherd(1).await;
    let a = pgherd.app().await;
    let b = pgherd.app().await;
    // Same statement name (s0) on both, different queries, one server.
    let sa = a.prepare("SELECT 'a'::text").await.unwrap();
    let sb = b.prepare("SELECT 'b'::text, 2").await.unwrap();
    for _ in 0..10 {
        assert_eq!(
            a.query_one(&sa, &[]).await.unwrap().get::<_, String>(0),
            "a"
        );
        assert_eq!(
            b.query_one(&sb, &[]).await.unwrap().get::<_, String>(0),
            "b"
        );
    }
    // Errors in a batch do not confuse which replies are pgherd's.
    let bad = a.prepare("SELECT 1/$1::int").await.unwrap();
    let err = a.query_one(&bad, &[&0i32]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("22012"));
    assert_eq!(
        a.query_one(&sa, &[]).await.unwrap().get::<_, String>(0),
        "a"
    );
    // DISCARD ALL drops the server's statements; pgherd prepares them again.
    a.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(
        b.query_one(&sb, &[]).await.unwrap().get::<_, String>(0),
        "b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_wait_timeout_between_transactions() {
    let pgherd = shared_cluster()
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("query_wait_timeout = 0.5")
        .database("app = { pool_size = 1 }")
        .start()
        .await;
    // Both log in while the only server is free.
    let holder = pgherd.app().await;
    let waiter = pgherd.app().await;
    holder.batch_execute("BEGIN").await.unwrap();
    // The waiter's next transaction finds no free server in time.
    let err = waiter.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("53300"), "{}", message(&err));
    assert!(
        message(&err).contains("query_wait_timeout"),
        "{}",
        message(&err)
    );
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(simple_value(&holder, "SELECT 2").await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_statements_are_prepared_again() {
    // Room for two statements per server, five in use, one server.
    let pgherd = shared_cluster()
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("max_prepared_statements = 2")
        .database("app = { pool_size = 1 }")
        .start()
        .await;
    let client = pgherd.app().await;
    let mut statements = Vec::new();
    for i in 0..5 {
        statements.push(client.prepare(&format!("SELECT {i}::int")).await.unwrap());
    }
    for round in 0..3 {
        for (i, s) in statements.iter().enumerate() {
            let v: i32 = client.query_one(s, &[]).await.unwrap().get(0);
            assert_eq!(v, i as i32, "round {round}");
        }
    }
    let open: i64 = client
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    // pgherd's two plus the one tokio-postgres just prepared for this query.
    assert!(open <= 3, "{open} statements on the server");
}

/// The values a client sees for the tracked parameters, and its backend.
async fn settings(c: &tokio_postgres::Client) -> (String, String, String, String) {
    let row = simple_rows(
        c,
        "SELECT current_setting('application_name'), current_setting('TimeZone'), \
         current_setting('DateStyle'), pg_backend_pid()::text",
    )
    .await
    .unwrap()
    .remove(0);
    let mut v = row.into_iter();
    let mut next = || v.next().unwrap().unwrap();
    (next(), next(), next(), next())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_clients_on_one_server_keep_their_own_parameters() {
    let pgherd = transaction_pgherd(1).await;
    let connect = |name: &'static str| {
        let mut config = pgherd.config("app", APP_PASSWORD, "app");
        config.application_name(name);
        async move {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client
        }
    };
    let a = connect("alpha").await;
    let b = connect("beta").await;
    let (_, default_tz, default_style, _) = settings(&b).await;
    assert_ne!(default_tz, "Asia/Tokyo");
    // A changes its session; the server it ran on is the one B uses next.
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'German, DMY'")
        .await
        .unwrap();
    for _ in 0..5 {
        let (app, tz, style, pid_a) = settings(&a).await;
        assert_eq!(
            (app.as_str(), tz.as_str(), style.as_str()),
            ("alpha", "Asia/Tokyo", "German, DMY")
        );
        let (app, tz, style, pid_b) = settings(&b).await;
        assert_eq!(
            (app.as_str(), tz.as_str(), style.as_str()),
            ("beta", default_tz.as_str(), default_style.as_str())
        );
        assert_eq!(pid_a, pid_b, "one server for both");
    }
    // RESET and DISCARD ALL are followed too.
    a.batch_execute("RESET TimeZone").await.unwrap();
    assert_eq!(settings(&a).await.1, default_tz);
    b.batch_execute("SET TimeZone = 'Europe/Paris'")
        .await
        .unwrap();
    b.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(settings(&b).await.1, default_tz);
    assert_eq!(settings(&a).await.2, "German, DMY");
    // Extended protocol too: the text of a timestamptz follows A's DateStyle.
    let row = a
        .query_one("SELECT '2024-03-01 12:00'::timestamptz::text", &[])
        .await
        .unwrap();
    assert!(row.get::<_, String>(0).starts_with("01.03.2024"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_follow_the_client_to_each_server() {
    let pgherd = transaction_pgherd(1).await;
    // Another client leaves its settings on the pool's one server.
    let other = pgherd.app().await;
    other
        .batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    let out = psql_with_env(
        &pgherd,
        "app",
        APP_PASSWORD,
        "app",
        &[
            "-c",
            "SHOW TimeZone",
            "-c",
            "SHOW DateStyle",
            "-c",
            "SHOW application_name",
        ],
        &[
            ("PGTZ", "America/New_York"),
            ("PGDATESTYLE", "SQL, DMY"),
            ("PGAPPNAME", "psql-tz"),
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "America/New_York\nSQL, DMY\npsql-tz\n"
    );
    assert_eq!(simple_value(&other, "SHOW TimeZone").await, "Asia/Tokyo");
    // A value the server refuses ends the login, as a direct connection would.
    let out = psql_with_env(
        &pgherd,
        "app",
        APP_PASSWORD,
        "app",
        &["-c", "SELECT 1"],
        &[("PGTZ", "No/Such_Zone")],
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value for parameter \"TimeZone\""),
        "{stderr}"
    );
    assert_eq!(simple_value(&other, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_startup_parameters_do_not_reach_the_server() {
    let pgherd = shared_cluster()
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("ignore_startup_parameters = [\"options\"]")
        .start()
        .await;
    let show = |options: &'static str| {
        let pgherd = &pgherd;
        async move {
            let out = psql_with_env(
                pgherd,
                "app",
                APP_PASSWORD,
                "app",
                &["-c", "SHOW work_mem"],
                &[("PGOPTIONS", options)],
            )
            .await;
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
    };
    assert_eq!(show("-c work_mem=77MB").await, "4MB");
    // Both clients shared one server: the option did not split the pool.
    assert_eq!(show("-c work_mem=78MB").await, "4MB");
    assert_eq!(pgherd.handle.pools()[0].status.total, 1);
}

/// pgbouncer's application_name_add_host: the server sees where each
/// client came from, in both pool modes (transaction mode carries it with
/// the client's parameters from server to server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_name_add_host_tells_the_server_where_clients_are() {
    for mode in ["transaction", "session"] {
        let pgherd = shared_cluster()
            .pgherd()
            .general(&format!("pool_mode = \"{mode}\""))
            .general("application_name_add_host = true")
            .start()
            .await;
        let client = pgherd.app_named("billing").await;
        let seen = simple_value(
            &client,
            "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .await;
        let port = seen
            .strip_prefix("billing - 127.0.0.1:")
            .unwrap_or_else(|| panic!("{mode}: {seen}"));
        assert!(port.parse::<u16>().is_ok(), "{mode}: {seen}");
        let listed = pgherd.handle.clients();
        assert_eq!(listed[0].application_name, seen, "{mode}");
        assert_eq!(listed[0].addr.port().to_string(), port, "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_larger_than_a_read_buffer() {
    // Query, Parse and Bind are read whole in transaction mode; one larger
    // than what a read returns must still go through (it once made the
    // session loop without reading the rest). The guard only turns a hang
    // into a failure.
    let pgherd = transaction_pgherd(2).await;
    let c = pgherd.app().await;
    let text = "x".repeat(200_000);
    let work = async {
        let simple = format!("SELECT length('{text}')");
        assert_eq!(simple_value(&c, &simple).await, "200000");
        let prepared = c
            .prepare(&format!("SELECT length('{text}') + $1::int"))
            .await
            .unwrap();
        let n: i32 = c.query_one(&prepared, &[&1i32]).await.unwrap().get(0);
        assert_eq!(n, 200_001);
        let n: i32 = c
            .query_one("SELECT length($1::text)", &[&text])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 200_000);
    };
    tokio::time::timeout(Duration::from_secs(120), work)
        .await
        .expect("large requests went through");
}

/// `server_reset_query_always`: session state a client leaves on a server
/// (a plain `SET`, a temp table) is gone before the next transaction, while
/// the client's own tracked parameters and prepared statements still follow
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reset_query_always_cleans_up_after_each_transaction() {
    let pgherd = shared_cluster()
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("server_reset_query_always = true")
        .database("app = { pool_size = 1 }")
        .start()
        .await;
    let messy = pgherd.app().await;
    let other = pgherd.app().await;
    let default_work_mem = simple_value(&other, "SHOW work_mem").await;
    messy
        .batch_execute("SET application_name = 'messy'; SET work_mem = '7MB'")
        .await
        .unwrap();
    messy
        .batch_execute("CREATE TEMP TABLE leftover (i int)")
        .await
        .unwrap();
    let statement = messy.prepare("SELECT $1::int + 1").await.unwrap();

    // The one server, after messy's transactions: reset.
    assert_eq!(
        simple_value(&other, "SHOW work_mem").await,
        default_work_mem
    );
    let temp = "SELECT count(*) FROM pg_class WHERE relname = 'leftover'";
    assert_eq!(simple_value(&other, temp).await, "0");

    // messy's tracked parameter and statement are back on its next turn.
    assert_eq!(simple_value(&messy, "SHOW application_name").await, "messy");
    assert_eq!(simple_value(&other, "SHOW application_name").await, "");
    let row = messy.query_one(&statement, &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

/// A server whose backend an administrator terminates in the middle of a
/// query says goodbye with the same FATAL 57P01 as one that shuts down; the
/// node still takes logins, so it was a kill: the client gets the error,
/// the query is not run again elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_an_administrator_terminates_is_not_run_again() {
    let pgherd = transaction_pgherd(2).await;
    let client = pgherd.app().await;
    let retries = || pgherd.handle.routing().gone_retries;
    let before = retries();
    let running = tokio::spawn(async move {
        client
            .simple_query("SELECT pg_sleep(30) /* terminate me */")
            .await
    });
    let pid = loop {
        let pid = shared_cluster()
            .pg
            .sql(
                0,
                "SELECT pid FROM pg_stat_activity WHERE query LIKE '%/* terminate me */' \
                 AND pid <> pg_backend_pid()",
            )
            .unwrap();
        if !pid.is_empty() {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    shared_cluster()
        .pg
        .sql(0, &format!("SELECT pg_terminate_backend({pid}, 5000)"))
        .unwrap();
    let err = running.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err), Some("57P01"), "{}", message(&err));
    assert_eq!(retries(), before, "not run again");
}
