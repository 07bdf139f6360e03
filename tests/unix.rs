//! Unix-domain sockets (`unix_socket_dir`, pgbouncer's names): clients
//! reach pgherd through `DIR/.s.PGSQL.PORT` with libpq and tokio-postgres,
//! one socket per listener with that listener's default target, shown as
//! pgbouncer shows them; `auth_type = "peer"` logs in the operating system
//! user of the same name and nobody else; the file goes with pgherd.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use pgherd_integration_tests::*;

/// psql (libpq) through the Unix socket in `dir` of listener `port`.
async fn psql_unix(dir: &Path, port: u16, user: &str, db: &str, sql: &str) -> std::process::Output {
    let bins = PgBinaries::find().expect("PostgreSQL binaries");
    let mut cmd = std::process::Command::new(bins.path("psql"));
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &dir.display().to_string(), "-p", &port.to_string()])
        .args(["-U", user, "-d", db, "-c", sql])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10");
    output(cmd).await.expect("run psql")
}

/// The operating system user this test runs as.
fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .expect("the test's user has a name")
        .name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connect_through_the_unix_socket_of_each_listener() {
    let cluster = shared_cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut pgherd = cluster
        .pgherd()
        .unix_socket_dir(dir.path())
        .general("unix_socket_mode = \"0770\"")
        .general("pool_mode = \"transaction\"")
        .listener("replica")
        .start()
        .await;
    pgherd.wait_standbys_readable().await;
    let (main, replica) = (pgherd.listeners[0].port(), pgherd.listeners[1].port());
    let socket = dir.path().join(format!(".s.PGSQL.{main}"));
    assert_eq!(std::fs::metadata(&socket).unwrap().mode() & 0o777, 0o770);

    // tokio-postgres on the main listener's socket: the primary.
    let client = connect_unix(dir.path(), main, "app", APP_PASSWORD, "app")
        .await
        .unwrap();
    let row = client
        .query_one("SELECT pg_is_in_recovery()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "false");
    // Shown as pgbouncer shows it: `unix`, the socket's port, our PID.
    let me = pgherd
        .handle
        .clients()
        .into_iter()
        .find(|c| c.addr.is_unix())
        .expect("the Unix-socket client is listed");
    assert_eq!((me.addr.host(), me.addr.port()), ("unix".into(), main));
    assert_eq!(
        me.addr.to_string(),
        format!("unix({}):{main}", std::process::id())
    );
    assert_eq!(me.local_addr, None);

    // psql on the `replica` listener's socket: a standby.
    let out = psql_unix(
        dir.path(),
        replica,
        "app",
        "app",
        "SELECT pg_is_in_recovery()",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "t");

    // Logins are checked as over TCP.
    let e = connect_unix(dir.path(), main, "app", "wrong", "app")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("28P01"), "{e}");

    // Shutdown: the socket files go with the listeners.
    drop(client);
    pgherd.begin_shutdown();
    for _ in 0..200 {
        if std::fs::read_dir(dir.path()).unwrap().next().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("socket files left after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_authentication_admits_only_the_same_os_user_on_the_unix_socket() {
    let cluster = shared_cluster();
    let dir = tempfile::tempdir().unwrap();
    let me = os_user();
    // Peer users log in to PostgreSQL as `app`, with its password.
    let pgherd = cluster
        .pgherd()
        .unix_socket_dir(dir.path())
        .database(&format!(
            "peerdb = {{ dbname = \"app\", user = \"app\", password = \"{APP_PASSWORD}\" }}"
        ))
        .user(&format!("\"{me}\" = {{ auth_type = \"peer\" }}"))
        .user("app = { auth_type = \"peer\" }")
        .start()
        .await;
    let port = pgherd.addr.port();

    // The process runs as `me`: admitted without a password.
    let client = connect_unix(dir.path(), port, &me, "", "peerdb")
        .await
        .unwrap();
    assert_eq!(simple_value(&client, "SELECT current_user").await, "app");
    let out = psql_unix(dir.path(), port, &me, "peerdb", "SELECT 7").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");

    // Another name than the process's user: refused, as PostgreSQL does.
    let e = connect_unix(dir.path(), port, "app", APP_PASSWORD, "peerdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("28000"), "{e}");
    assert_eq!(
        message(&e),
        "peer authentication failed for user \"app\"",
        "{e}"
    );
    // The right name over TCP: refused (no peer to ask).
    let e = pgherd.connect(&me, "", "peerdb").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("28000"), "{e}");

    // The admitted client still works.
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_file_in_use_is_not_taken_over() {
    let cluster = shared_cluster();
    let dir = tempfile::tempdir().unwrap();
    let first = cluster.pgherd().unix_socket_dir(dir.path()).start().await;
    // A second pgherd on the same port number (another address) would
    // take the same file name: refused, and the first one keeps serving.
    let port = first.addr.port();
    let toml = cluster
        .pgherd()
        .unix_socket_dir(dir.path())
        .general(&format!("listen_addr = \"127.0.0.2:{port}\""))
        .toml();
    let config = pgherd_config::Config::parse(&toml).unwrap();
    let err = pgherd_proxy::Proxy::bind(config).await.unwrap_err();
    assert!(err.to_string().contains("another process listens"), "{err}");
    let client = connect_unix(dir.path(), port, "app", APP_PASSWORD, "app")
        .await
        .unwrap();
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");
}

/// pgbouncer's rule: user `pgbouncer` on the console database, from a
/// process of pgherd's own operating system user on the Unix socket, is an
/// admin without a password (here the test and pgherd are one process).
/// Over TCP, or for another database, `pgbouncer` is nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgherds_own_os_user_gets_the_console_as_pgbouncer_on_the_unix_socket() {
    let cluster = shared_cluster();
    let dir = tempfile::tempdir().unwrap();
    let pgherd = cluster.pgherd().unix_socket_dir(dir.path()).start().await;
    let port = pgherd.addr.port();
    let admin = connect_unix(dir.path(), port, "pgbouncer", "", "pgbouncer")
        .await
        .unwrap();
    // An admin command, not only SHOW.
    admin.simple_query("PAUSE").await.unwrap();
    admin.simple_query("RESUME").await.unwrap();
    let rows = simple_rows(&admin, "SHOW VERSION").await.unwrap();
    assert!(!rows.is_empty());

    let e = pgherd
        .connect("pgbouncer", "", "pgbouncer")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("28P01"), "over TCP: {e}");
    let e = connect_unix(dir.path(), port, "pgbouncer", "", "app")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("28P01"), "another database: {e}");
}
