//! The admin console (virtual database `pgbouncer`/`pgherd`): pgbouncer's
//! column names checked against a real pgbouncer, PAUSE/RESUME on a real
//! cluster, access rules and errors, KILL_CLIENT and DISABLE.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use pgherd_integration_tests::*;
use tokio_postgres::SimpleQueryMessage;

/// Column names of a console command's result.
async fn columns(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let messages = client.simple_query(sql).await.unwrap();
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::RowDescription(cols) => {
                Some(cols.iter().map(|c| c.name().to_owned()).collect())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no RowDescription"))
}

async fn console(pgherd: &RunningPgherd, user: &str, password: &str) -> tokio_postgres::Client {
    pgherd.connect(user, password, "pgbouncer").await.unwrap()
}

fn with_console(cluster: &TestCluster) -> PgherdBuilder {
    cluster
        .pgherd()
        .general("pool_mode = \"transaction\"")
        .general("admin_users = [\"app\"]")
        .general("stats_users = [\"md5user\"]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_columns_are_pgbouncers() {
    let cluster = shared_cluster();
    let bin = find_pgbouncer().expect("pgbouncer is installed (apt-get install -y pgbouncer)");
    let bouncer = LocalPgbouncer::start(
        &bin,
        &format!(
            "app = host=127.0.0.1 port={} dbname=app",
            cluster.pg.node(0).port
        ),
        "auth_type = trust\nadmin_users = admin",
        "\"admin\" \"x\"\n",
    )
    .unwrap();
    let (reference, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(bouncer.port)
        .user("admin")
        .dbname("pgbouncer")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let pgherd = with_console(cluster).start().await;
    // Something in every list: a client with a server.
    let app = pgherd.app().await;
    app.simple_query("SELECT 1").await.unwrap();
    let ours = console(&pgherd, "app", APP_PASSWORD).await;
    for show in [
        "POOLS",
        "STATS",
        "STATS_TOTALS",
        "STATS_AVERAGES",
        "TOTALS",
        "SERVERS",
        "CLIENTS",
        "DATABASES",
        "USERS",
        "CONFIG",
        "LISTS",
        "VERSION",
    ] {
        let sql = format!("SHOW {show}");
        let theirs = columns(&reference, &sql).await;
        let mine = columns(&ours, &sql).await;
        assert!(
            mine.starts_with(&theirs),
            "SHOW {show}: pgbouncer {theirs:?}, pgherd {mine:?}"
        );
    }
    // SHOW LISTS has pgbouncer's rows, in its order.
    let list_names = |rows: Vec<Vec<Option<String>>>| -> Vec<String> {
        rows.into_iter().map(|r| r[0].clone().unwrap()).collect()
    };
    assert_eq!(
        list_names(simple_rows(&ours, "SHOW LISTS").await.unwrap()),
        list_names(simple_rows(&reference, "SHOW LISTS").await.unwrap())
    );
    // So has SHOW TOTALS.
    assert_eq!(
        list_names(simple_rows(&ours, "SHOW TOTALS").await.unwrap()),
        list_names(simple_rows(&reference, "SHOW TOTALS").await.unwrap())
    );
    // Semicolons and case, as pgbouncer accepts them.
    assert_eq!(
        columns(&ours, "show pools;").await,
        columns(&ours, "SHOW POOLS").await
    );
}

/// The value of `column` in the first row of a console command whose
/// first column is `key`.
async fn cell(client: &tokio_postgres::Client, sql: &str, key: &str, column: &str) -> String {
    let messages = client.simple_query(sql).await.unwrap();
    for m in &messages {
        if let SimpleQueryMessage::Row(r) = m {
            if r.get(0) == Some(key) {
                return r.get(column).unwrap_or("").to_owned();
            }
        }
    }
    panic!("{sql}: no row for {key}: {messages:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_transactions_and_resume_releases_the_waiting() {
    let cluster = shared_cluster();
    let pgherd = with_console(cluster).start().await;
    let admin = console(&pgherd, "app", APP_PASSWORD).await;
    let busy = pgherd.app().await;
    let waiting = pgherd.app().await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();

    // PAUSE returns only once the open transaction is over.
    let pause = tokio::spawn(async move {
        admin.simple_query("PAUSE app").await.unwrap();
        admin
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pause.is_finished(), "PAUSE returned during a transaction");
    busy.batch_execute("COMMIT").await.unwrap();
    let admin = tokio::time::timeout(Duration::from_secs(10), pause)
        .await
        .expect("PAUSE returns after COMMIT")
        .unwrap();
    assert_eq!(cell(&admin, "SHOW DATABASES", "app", "paused").await, "1");

    // New transactions wait, then run after RESUME with no error.
    let query = tokio::spawn(async move { simple_value(&waiting, "SELECT 42").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!query.is_finished(), "a transaction ran while paused");
    let state = cell(&admin, "SHOW CLIENTS", "C", "state").await;
    assert!(
        simple_rows(&admin, "SHOW CLIENTS")
            .await
            .unwrap()
            .iter()
            .any(|r| r[3].as_deref() == Some("waiting")),
        "a waiting client is listed as waiting (first: {state})"
    );
    admin.simple_query("RESUME app").await.unwrap();
    let value = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("RESUME releases the waiting transaction")
        .unwrap();
    assert_eq!(value, "42");
    assert_eq!(cell(&admin, "SHOW DATABASES", "app", "paused").await, "0");

    // PAUSE without a database pauses everything, also databases first
    // used afterwards; RESUME lifts it.
    admin.simple_query("PAUSE").await.unwrap();
    assert_eq!(cell(&admin, "SHOW STATE", "paused", "value").await, "yes");
    let later = tokio::spawn(async move {
        let c = pgherd
            .connect("app", APP_PASSWORD, "postgres")
            .await
            .unwrap();
        simple_value(&c, "SELECT 7").await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !later.is_finished(),
        "a new database's login ran while paused"
    );
    admin.simple_query("RESUME").await.unwrap();
    assert_eq!(later.await.unwrap(), "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_access_and_errors() {
    let cluster = shared_cluster();
    // No `*` entry: only listed databases exist.
    let pgherd = with_console(cluster)
        .without_fallback()
        .database("app = {}")
        .user("nobody = { password = \"nobody-secret\" }")
        .start()
        .await;

    // A stats user may look, not touch.
    let stats = console(&pgherd, "md5user", MD5_PASSWORD).await;
    let nodes = stats.simple_query("SHOW NODES").await.unwrap();
    let sources: Vec<&str> = nodes
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("source"),
            _ => None,
        })
        .collect();
    assert!(!sources.is_empty());
    assert!(sources.iter().all(|s| *s == "config"), "{sources:?}");
    let err = stats.simple_query("PAUSE").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    // ... and the session goes on.
    stats.simple_query("SHOW VERSION").await.unwrap();

    let admin = console(&pgherd, "app", APP_PASSWORD).await;
    for (sql, code) in [
        ("SELECT 1", "42601"),
        ("SHOW NOTHING", "42601"),
        ("PAUSE nosuchdb", "3D000"),
        ("DISABLE", "42601"),
        ("KILL_CLIENT 999999", "42704"),
    ] {
        let err = admin.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&err), Some(code), "{sql}: {err}");
    }
    let help = admin.simple_query("SHOW HELP").await.unwrap();
    assert!(matches!(
        help.last(),
        Some(SimpleQueryMessage::CommandComplete(_))
    ));
    // The extended protocol is refused clearly (as pgbouncer does).
    let err = admin.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("08P01"), "{err}");

    // A user in neither list cannot open the console (under either name).
    let err = pgherd
        .connect("nobody", "nobody-secret", "pgherd")
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_servers_kill_client_and_disable() {
    let cluster = shared_cluster();
    let pgherd = with_console(cluster).start().await;
    let admin = console(&pgherd, "app", APP_PASSWORD).await;
    let victim = pgherd.app_named("victim").await;
    victim.batch_execute("BEGIN").await.unwrap();
    let pid = simple_value(&victim, "SELECT pg_backend_pid()").await;

    // The victim is listed with its application_name, linked to a server
    // whose remote_pid is its backend.
    let clients = simple_rows(&admin, "SHOW CLIENTS").await.unwrap();
    let row = row_with(&clients, 17, "victim").expect("the client is listed");
    let (id, link) = (row[18].clone().unwrap(), row[14].clone().unwrap());
    let servers = simple_rows(&admin, "SHOW SERVERS").await.unwrap();
    let server = row_with(&servers, 13, &link).expect("its server is listed");
    assert_eq!(server[15].as_deref(), Some(pid.as_str()));
    assert_eq!(server[3].as_deref(), Some("active"));

    admin
        .simple_query(&format!("KILL_CLIENT {id}"))
        .await
        .unwrap();
    let err = victim.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        sqlstate(&err) == Some("57P01") || victim.is_closed(),
        "{err}"
    );
    // Its server was not pooled mid-transaction: the backend is gone.
    let direct = pgherd.app().await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while simple_value(
            &direct,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
        )
        .await
            != "0"
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the killed client's backend ends");

    // DISABLE refuses new clients of that database, ENABLE lets them in.
    admin.simple_query("DISABLE app").await.unwrap();
    let err = pgherd
        .connect("app", APP_PASSWORD, "app")
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("57P03"), "{err}");
    assert_eq!(cell(&admin, "SHOW DATABASES", "app", "disabled").await, "1");
    direct.simple_query("SELECT 1").await.unwrap();
    admin.simple_query("ENABLE app").await.unwrap();
    pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_back_in_the_pool_is_idle_and_linked_to_no_client() {
    let cluster = shared_cluster();
    let pgherd = with_console(cluster).start().await;
    let admin = console(&pgherd, "app", APP_PASSWORD).await;
    let client = pgherd.app_named("done").await;
    // One transaction, over: its server goes back to the pool. The client
    // may read the reply a moment before its session has put the server
    // back (it is sent first), so the console is asked until it shows it.
    let pid = simple_value(&client, "SELECT pg_backend_pid()").await;
    let mut server = Vec::new();
    for _ in 0..200 {
        let servers = simple_rows(&admin, "SHOW SERVERS").await.unwrap();
        server = row_with(&servers, 15, &pid)
            .expect("its server is listed")
            .clone();
        if server[3].as_deref() == Some("idle") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(server[3].as_deref(), Some("idle"), "{server:?}");
    assert_eq!(
        server[14].as_deref(),
        Some(""),
        "linked to no client: {server:?}"
    );
    let clients = simple_rows(&admin, "SHOW CLIENTS").await.unwrap();
    let row = row_with(&clients, 17, "done").expect("the client is listed");
    assert_eq!(row[14].as_deref(), Some(""), "linked to no server: {row:?}");
}

/// The first row whose `column` holds `value`.
fn row_with<'a>(
    rows: &'a [Vec<Option<String>>],
    column: usize,
    value: &str,
) -> Option<&'a Vec<Option<String>>> {
    rows.iter().find(|r| r[column].as_deref() == Some(value))
}

/// The console's id of the client with `application_name`.
async fn client_id(admin: &tokio_postgres::Client, application_name: &str) -> String {
    let clients = simple_rows(admin, "SHOW CLIENTS").await.unwrap();
    let row = row_with(&clients, 17, application_name).expect("the client is listed");
    row[18].clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_ends_idle_and_waiting_clients_at_once() {
    let cluster = shared_cluster();
    let pgherd = with_console(cluster)
        .general("query_wait_timeout = 60")
        .database("app = { pool_size = 1 }")
        .start()
        .await;
    let admin = console(&pgherd, "app", APP_PASSWORD).await;
    let connect = |name: &'static str| {
        let config = pgherd.config("app", APP_PASSWORD, "app");
        async move {
            let mut config = config;
            let (client, conn) = config
                .application_name(name)
                .connect(tokio_postgres::NoTls)
                .await
                .unwrap();
            (client, tokio::spawn(conn))
        }
    };
    // Idle between transactions: no server, nothing sent.
    let (idle, idle_conn) = connect("idle-victim").await;
    simple_value(&idle, "SELECT 1").await;
    // Waiting for the pool's one server, which another client holds.
    // (Logged in first: the login needs a server too.)
    let (holder, _holder_conn) = connect("holder").await;
    let (waiter, _waiter_conn) = connect("waiting-victim").await;
    holder.batch_execute("BEGIN").await.unwrap();
    let waiting = tokio::spawn(async move { waiter.simple_query("SELECT 2").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the pool's server is taken");

    let kill = |name: &'static str| {
        let admin = &admin;
        async move {
            let id = client_id(admin, name).await;
            admin
                .simple_query(&format!("KILL_CLIENT {id}"))
                .await
                .unwrap();
        }
    };
    // Hang guards, not timings: without the kill each would wait for
    // the client's next request or the holder's COMMIT.
    kill("idle-victim").await;
    tokio::time::timeout(Duration::from_secs(10), idle_conn)
        .await
        .expect("the idle client's connection is closed")
        .unwrap()
        .expect_err("it ends with an error");
    assert!(idle.is_closed());
    kill("waiting-victim").await;
    let err = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting client is ended")
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("57P01"), "{err}");
    // The holder and the pool carry on.
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(simple_value(&holder, "SELECT 3").await, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_new_settings_and_names_restart_only_ones() {
    let cluster = shared_cluster();
    let first = with_console(cluster);
    let pgherd = first.start().await;
    let dir = std::env::temp_dir().join(format!("pgherd-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgherd.toml");
    std::fs::write(&path, first.toml()).unwrap();
    pgherd.handle.set_config_file(path.clone());
    let admin = console(&pgherd, "app", APP_PASSWORD).await;

    let stats = console(&pgherd, "md5user", MD5_PASSWORD).await;
    let err = stats.simple_query("PAUSE app").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"));

    // md5user becomes an admin, a timeout changes, and so does a setting
    // that needs a restart.
    let second = cluster
        .pgherd()
        .probe_interval(0.5)
        .general("pool_mode = \"transaction\"")
        .general("admin_users = [\"app\", \"md5user\"]")
        .general("query_wait_timeout = 7");
    std::fs::write(&path, second.toml()).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    assert_eq!(
        cell(&admin, "SHOW CONFIG", "query_wait_timeout", "value").await,
        "7"
    );
    assert_eq!(
        cell(&admin, "SHOW CONFIG", "probe_interval", "value").await,
        "0.2",
        "restart-only: the running value stays"
    );
    let promoted = console(&pgherd, "md5user", MD5_PASSWORD).await;
    promoted.simple_query("PAUSE app").await.unwrap();
    promoted.simple_query("RESUME app").await.unwrap();
    let (status, body) = http_request(
        &pgherd,
        "POST",
        "/api/v1/reload",
        Some(("app", APP_PASSWORD)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"not_applied_until_restart\":[\"probe_interval\"]"),
        "{body}"
    );

    // A broken file changes nothing.
    std::fs::write(&path, "[pgherd\nnot toml").unwrap();
    let err = admin.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("F0000"), "{err}");
    assert_eq!(
        cell(&admin, "SHOW CONFIG", "query_wait_timeout", "value").await,
        "7"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_closes_servers_once_released_and_wait_close_waits() {
    let cluster = shared_cluster();
    let pgherd = with_console(cluster).start().await;
    let admin = console(&pgherd, "app", APP_PASSWORD).await;
    // One server held by a transaction, another idle in the pool.
    let busy = pgherd.app().await;
    busy.batch_execute("BEGIN").await.unwrap();
    let busy_pid = simple_value(&busy, "SELECT pg_backend_pid()").await;
    let idle_one = pgherd.app().await;
    let idle_pid = simple_value(&idle_one, "SELECT pg_backend_pid()").await;
    assert_ne!(idle_pid, busy_pid);
    // The client has its answer a moment before its server is back in the
    // pool: wait for that, so RECONNECT finds it idle.
    let idle_in_pool = || {
        let pools = pgherd.handle.pools();
        pools.iter().map(|p| p.status.idle).sum::<usize>()
    };
    for _ in 0..1500 {
        if idle_in_pool() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(idle_in_pool() >= 1, "{:?}", pgherd.handle.pools());

    admin.simple_query("RECONNECT app").await.unwrap();
    let servers = simple_rows(&admin, "SHOW SERVERS").await.unwrap();
    let busy_row = row_with(&servers, 15, &busy_pid).expect("the busy server is listed");
    assert_eq!(busy_row[12].as_deref(), Some("1"), "close_needed");
    assert!(
        !servers
            .iter()
            .any(|r| r[15].as_deref() == Some(idle_pid.as_str())),
        "the idle server was closed at once"
    );

    let wait = tokio::spawn(async move {
        admin.simple_query("WAIT_CLOSE app").await.unwrap();
        admin
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !wait.is_finished(),
        "a marked server is still in a transaction"
    );
    busy.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("WAIT_CLOSE returns once the busy server is released")
        .unwrap();
    // The client carries on, on a fresh server.
    let again = simple_value(&busy, "SELECT pg_backend_pid()").await;
    assert_ne!(again, busy_pid);
    assert_ne!(
        simple_value(&idle_one, "SELECT pg_backend_pid()").await,
        idle_pid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_totals_adds_up_the_databases() {
    let cluster = shared_cluster();
    let pgherd = with_console(cluster)
        .general("stats_period = 0.5")
        .start()
        .await;
    let admin = console(&pgherd, "app", APP_PASSWORD).await;
    let app = pgherd.app().await;
    for _ in 0..30 {
        simple_value(&app, "SELECT 1").await;
    }
    let total = |name: &'static str| {
        let admin = &admin;
        async move {
            cell(admin, "SHOW TOTALS", name, "value")
                .await
                .parse::<u64>()
                .unwrap()
        }
    };
    // Totals: the sum of SHOW STATS's rows. A transaction is counted when
    // its server is back in the pool, a moment after the client has its
    // answer: read both until all 30 are in.
    let mut read = (0, 0);
    for _ in 0..500 {
        let per_database: u64 = simple_rows(&admin, "SHOW STATS")
            .await
            .unwrap()
            .iter()
            .map(|r| r[1].as_deref().unwrap().parse::<u64>().unwrap())
            .sum();
        read = (total("total_xact_count").await, per_database);
        if read.0 >= 30 && read.1 >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (xacts, per_database) = read;
    assert!(xacts >= 30, "{xacts}");
    assert_eq!(xacts, per_database);
    assert!(total("total_client_bytes").await > 0);
    // Averages: once a stats_period with transactions has ended.
    for _ in 0..50 {
        for _ in 0..10 {
            simple_value(&app, "SELECT 1").await;
        }
        if total("avg_xact_count").await > 0 {
            assert!(total("avg_client_bytes").await > 0);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("avg_xact_count stayed 0");
}
