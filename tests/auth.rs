//! Client auth types × user sources × server auth, on a real cluster:
//! `md5`, `plain` and `scram-sha-256` clients, users from a pgbouncer
//! auth_file (md5 secrets and SCRAM verifiers), servers storing SCRAM (`app`)
//! or md5 (`md5user`). Failures are 28P01 whether or not the user exists.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use pgherd_integration_tests::*;

/// An auth_file with md5user's md5 secret and app's SCRAM verifier, as a
/// pgbouncer admin would copy them from pg_authid.
fn userlist(cluster: &TestCluster) -> std::path::PathBuf {
    let md5 = cluster
        .pg
        .sql(
            0,
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'md5user'",
        )
        .unwrap();
    assert!(md5.starts_with("md5"), "{md5}");
    let dir = std::env::temp_dir().join(format!("pgherd-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("userlist.txt");
    std::fs::write(
        &path,
        format!(
            "; copied from pg_authid\n\"md5user\" \"{md5}\"\n\"app\" \"{}\"\n",
            cluster.app_verifier
        ),
    )
    .unwrap();
    path
}

async fn pgherd_with(cluster: &TestCluster, auth_type: &str) -> RunningPgherd {
    cluster
        .pgherd()
        .without_users()
        .general(&format!("auth_type = \"{auth_type}\""))
        .general(&format!(
            "auth_file = {:?}",
            userlist(cluster).display().to_string()
        ))
        .start()
        .await
}

async fn login(
    pgherd: &RunningPgherd,
    user: &str,
    password: &str,
    db: &str,
) -> Result<String, String> {
    match pgherd.connect(user, password, db).await {
        Ok(c) => Ok(simple_value(&c, "SELECT current_user").await),
        Err(e) => Err(sqlstate(&e).unwrap_or("none").to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_plain_clients_with_an_auth_file() {
    let cluster = shared_cluster();
    for auth_type in ["md5", "plain"] {
        let pgherd = pgherd_with(cluster, auth_type).await;
        // md5user has an md5 secret: md5 checks the answer, plain the
        // password; the secret (md5) or the password (plain) then logs in to
        // the server, which stores md5 for md5user.
        assert_eq!(
            login(&pgherd, "md5user", MD5_PASSWORD, "postgres").await,
            Ok("md5user".into()),
            "{auth_type}"
        );
        // app has a SCRAM verifier: SCRAM to the client under md5
        // (pgbouncer's rule), checked against the verifier under plain; the
        // server stores SCRAM for app.
        assert_eq!(
            login(&pgherd, "app", APP_PASSWORD, "app").await,
            Ok("app".into()),
            "{auth_type}"
        );
        // Wrong password and unknown user look the same.
        for (user, password) in [("md5user", "wrong"), ("app", "wrong"), ("nobody", "x")] {
            assert_eq!(
                login(&pgherd, user, password, "postgres").await,
                Err("28P01".into()),
                "{auth_type} {user}"
            );
        }
        // psql, too.
        let out = psql(
            &pgherd,
            "md5user",
            MD5_PASSWORD,
            "postgres",
            &["-c", "SELECT 7"],
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "7",
            "{auth_type}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_clients_with_an_auth_file_and_the_limits_of_md5_secrets() {
    let cluster = shared_cluster();
    // scram-sha-256 needs verifiers: an md5 secret in the file is refused
    // when the config is loaded, naming the user.
    let err = pgherd_config::Config::parse(
        &cluster
            .pgherd()
            .without_users()
            .general(&format!(
                "auth_file = {:?}",
                userlist(cluster).display().to_string()
            ))
            .toml(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("md5user") && err.contains("SCRAM"), "{err}");

    // A server that stores SCRAM cannot be logged in to with an md5 secret:
    // a clear error, not a hang.
    let dir = std::env::temp_dir().join(format!("pgherd-auth-md5app-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("userlist.txt");
    let md5 = pgherd_auth::md5::md5_secret("app", APP_PASSWORD);
    std::fs::write(&path, format!("\"app\" \"{md5}\"\n")).unwrap();
    let pgherd = cluster
        .pgherd()
        .without_users()
        .general("auth_type = \"md5\"")
        .general(&format!("auth_file = {:?}", path.display().to_string()))
        .start()
        .await;
    let err = pgherd
        .connect("app", APP_PASSWORD, "app")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("28000"), "{err}");
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("only an md5 secret"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_users_log_in_with_scram_and_md5() {
    let cluster = shared_cluster();
    cluster
        .pg
        .sql(
            0,
            "DROP ROLE IF EXISTS expired_role; \
             CREATE ROLE expired_role LOGIN PASSWORD 'expired-secret' VALID UNTIL '2000-01-01'",
        )
        .unwrap();
    let with_auth_query = |auth_type: &str| {
        cluster
            .pgherd()
            .without_users()
            .user(&format!(
                "postgres = {{ password = \"{}\" }}",
                cluster.pg.superuser_password()
            ))
            .general(&format!("auth_type = \"{auth_type}\""))
            .general("auth_user = \"postgres\"")
    };

    // SCRAM: the verifier comes from pg_authid, the client's proof logs
    // pgherd in to the server (pgbouncer cannot do this with auth_query).
    let scram = with_auth_query("scram-sha-256").start().await;
    assert_eq!(
        login(&scram, "app", APP_PASSWORD, "app").await,
        Ok("app".into())
    );
    let c = scram.connect("app", APP_PASSWORD, "app").await.unwrap();
    assert_eq!(simple_value(&c, "SELECT 40 + 2").await, "42");
    assert_eq!(
        login(&scram, "app", "wrong", "app").await,
        Err("28P01".into())
    );
    assert_eq!(
        login(&scram, "nobody", "x", "app").await,
        Err("28P01".into())
    );
    // An expired role has no password for the default query: 28P01, like a
    // wrong password (PostgreSQL would refuse it too).
    assert_eq!(
        login(&scram, "expired_role", "expired-secret", "postgres").await,
        Err("28P01".into())
    );
    // md5user's secret is md5: no SCRAM possible.
    assert_eq!(
        login(&scram, "md5user", MD5_PASSWORD, "postgres").await,
        Err("28P01".into())
    );

    // md5: md5 secrets from pg_authid log in both ways.
    let md5 = with_auth_query("md5").start().await;
    assert_eq!(
        login(&md5, "md5user", MD5_PASSWORD, "postgres").await,
        Ok("md5user".into())
    );
    assert_eq!(
        login(&md5, "md5user", "wrong", "postgres").await,
        Err("28P01".into())
    );
    // ...and SCRAM users still get SCRAM.
    assert_eq!(
        login(&md5, "app", APP_PASSWORD, "app").await,
        Ok("app".into())
    );

    cluster.pg.sql(0, "DROP ROLE expired_role").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_auth_query_refuses_only_looked_up_users() {
    let cluster = shared_cluster();
    // auth_user's password is wrong: no lookup can succeed.
    let pgherd = cluster
        .pgherd()
        .user("postgres = { password = \"not-the-password\" }")
        .general("auth_user = \"postgres\"")
        .start()
        .await;
    // A user known only to the server gets the ordinary 28P01...
    cluster
        .pg
        .sql(0, "DROP ROLE IF EXISTS lookup_only; CREATE ROLE lookup_only LOGIN PASSWORD 'lookup-secret'")
        .unwrap();
    assert_eq!(
        login(&pgherd, "lookup_only", "lookup-secret", "postgres").await,
        Err("28P01".into())
    );
    // ...and users from the config still log in.
    assert_eq!(
        login(&pgherd, "app", APP_PASSWORD, "app").await,
        Ok("app".into())
    );
    // With the right auth_user password the same user gets in.
    let working = cluster
        .pgherd()
        .user(&format!(
            "postgres = {{ password = \"{}\" }}",
            cluster.pg.superuser_password()
        ))
        .general("auth_user = \"postgres\"")
        .start()
        .await;
    assert_eq!(
        login(&working, "lookup_only", "lookup-secret", "postgres").await,
        Ok("lookup_only".into())
    );
    cluster.pg.sql(0, "DROP ROLE lookup_only").unwrap();
}

/// `server_login_retry`: once the server refused a pool's login, the pool's
/// clients get that error (with a hint) without pgherd trying again, until
/// the retry time has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_server_login_waits_for_server_login_retry() {
    let cluster = shared_cluster();
    // pgherd's password for md5user is not the server's: clients log in to
    // pgherd with it, and the server refuses pgherd.
    let pgherd = cluster
        .pgherd()
        .user("md5user = { password = \"not-the-servers\" }")
        .general("server_login_retry = 1")
        .start()
        .await;
    let hint = |e: &tokio_postgres::Error| {
        e.as_db_error()
            .and_then(|d| d.hint())
            .unwrap_or("")
            .to_owned()
    };
    let first = pgherd
        .connect("md5user", "not-the-servers", "postgres")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&first), Some("28P01"), "{first}");
    assert!(!hint(&first).contains("server_login_retry"), "{first:?}");

    let again = pgherd
        .connect("md5user", "not-the-servers", "postgres")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&again), Some("28P01"), "{again}");
    assert!(hint(&again).contains("server_login_retry"), "{again:?}");

    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let later = pgherd
        .connect("md5user", "not-the-servers", "postgres")
        .await
        .unwrap_err();
    assert!(
        !hint(&later).contains("server_login_retry"),
        "tried again: {later:?}"
    );
    // Other users' pools are not affected.
    let app = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
    assert_eq!(simple_value(&app, "SELECT 1").await, "1");
}

/// A `[users]` entry's own `auth_type` overrides the global one: here the
/// global SCRAM, md5 for one user, trust for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_auth_type_overrides_the_global_one() {
    let cluster = shared_cluster();
    let pgherd = cluster
        .pgherd()
        .user(&format!(
            "md5user = {{ password = \"{MD5_PASSWORD}\", auth_type = \"md5\" }}"
        ))
        .user("trustuser = { auth_type = \"trust\" }")
        .start()
        .await;
    // What pgherd asks each for: SASL (10), MD5 (5), nothing (Ok, 0).
    for (user, expected) in [("app", 10), ("md5user", 5), ("trustuser", 0)] {
        let mut raw = RawClient::connect(&pgherd).await;
        raw.startup(&[("user", user), ("database", "postgres")])
            .await;
        let request = raw.recv().await.unwrap();
        assert_eq!(request.tag, pgherd_wire::backend::AUTHENTICATION, "{user}");
        let code = i32::from_be_bytes(request.body[..4].try_into().unwrap());
        assert_eq!(code, expected, "{user}");
    }
    let md5 = pgherd
        .connect("md5user", MD5_PASSWORD, "postgres")
        .await
        .unwrap();
    assert_eq!(simple_value(&md5, "SELECT current_user").await, "md5user");
    let e = pgherd
        .connect("md5user", "wrong", "postgres")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("28P01"), "{e}");
    let trusted = pgherd.connect("trustuser", "", "postgres").await.unwrap();
    assert_eq!(
        simple_value(&trusted, "SELECT current_user").await,
        "trustuser"
    );
    let app = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
    assert_eq!(simple_value(&app, "SELECT current_user").await, "app");
}

/// `min_pool_size` opens connections through the same `server_login_retry`
/// gate as clients: when the server starts refusing the pool's login (its
/// password changed), the sweeper's failed attempt is what the next client
/// hears, not one more failing login of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_refills_respect_server_login_retry() {
    let cluster = shared_cluster();
    cluster
        .pg
        .sql(0, "CREATE ROLE retry_min LOGIN PASSWORD 'first'")
        .unwrap();
    let pgherd = cluster
        .pgherd()
        .user("retry_min = { password = \"first\" }")
        .general("pool_mode = \"transaction\"")
        .general("min_pool_size = 3")
        .general("server_login_retry = 30")
        .start()
        .await;
    let c = pgherd
        .connect("retry_min", "first", "postgres")
        .await
        .unwrap();
    assert_eq!(simple_value(&c, "SELECT 1").await, "1");
    // The server now refuses pgherd's password, and the pool's
    // connections are gone: the sweeper's refill fails.
    cluster
        .pg
        .sql(
            0,
            "ALTER ROLE retry_min PASSWORD 'second'; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'retry_min'",
        )
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let e = pgherd
        .connect("retry_min", "first", "postgres")
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "28P01", "{e:?}");
    assert!(
        db.hint().unwrap_or("").contains("server_login_retry"),
        "the refill's refusal, not a new attempt: {e:?}"
    );
    cluster.pg.sql(0, "DROP ROLE retry_min").unwrap();
}

/// `auth_type = "hba"` with an `auth_hba_file`: the first matching line
/// chooses the method (SCRAM for one user, md5 for another, trust on the
/// Unix socket), `reject` and a missing line refuse with 28000 as
/// PostgreSQL words it, and a wrong password under a line is still 28P01.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_hba_file_rules_choose_the_method_or_refuse() {
    let cluster = shared_cluster();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("pg_hba.conf");
    std::fs::write(
        &rules,
        "# pgherd's rules\n\
         local      app        app                    trust\n\
         hostnossl  postgres   all       127.0.0.1/32 reject\n\
         host       app        app       127.0.0.0/8  scram-sha-256\n\
         host       all        md5user   all          md5\n",
    )
    .unwrap();
    let sockets = dir.path().join("sockets");
    std::fs::create_dir(&sockets).unwrap();
    let builder = cluster
        .pgherd()
        .general("auth_type = \"hba\"")
        .general(&format!(
            "auth_hba_file = {:?}",
            rules.display().to_string()
        ))
        .unix_socket_dir(&sockets);
    let pgherd = builder.start().await;

    assert_eq!(
        login(&pgherd, "app", APP_PASSWORD, "app").await,
        Ok("app".into())
    );
    assert_eq!(
        login(&pgherd, "app", "wrong", "app").await,
        Err("28P01".into())
    );
    assert_eq!(
        login(&pgherd, "md5user", MD5_PASSWORD, "app").await,
        Ok("md5user".into())
    );
    // Line 3 rejects, naming itself; nothing matches app on database postgres
    // before it either.
    let e = pgherd
        .connect("md5user", MD5_PASSWORD, "postgres")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("28000"), "{e}");
    assert_eq!(
        message(&e),
        "auth_hba_file line 3 rejects connection for host \"127.0.0.1\", user \"md5user\", \
         database \"postgres\", no encryption"
    );
    // No line for app on another database over TCP.
    let e = pgherd
        .connect("app", APP_PASSWORD, "template1")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("28000"), "{e}");
    assert!(
        message(&e).starts_with("no auth_hba_file entry for host \"127.0.0.1\""),
        "{e}"
    );
    // The Unix socket's line: trust, no password asked.
    let local = connect_unix(&sockets, pgherd.addr.port(), "app", "", "app")
        .await
        .unwrap();
    assert_eq!(simple_value(&local, "SELECT current_user").await, "app");

    // RELOAD reads the rules again: md5user is now rejected everywhere; a
    // broken file changes nothing.
    let config = dir.path().join("pgherd.toml");
    std::fs::write(&config, builder.toml()).unwrap();
    pgherd.handle.set_config_file(config);
    std::fs::write(
        &rules,
        "host all md5user all reject\nhost all all all md5\n",
    )
    .unwrap();
    pgherd.handle.reload().unwrap();
    let refused = login(&pgherd, "md5user", MD5_PASSWORD, "app").await;
    assert_eq!(refused, Err("28000".into()));
    std::fs::write(&rules, "host all all example.com md5\n").unwrap();
    let err = pgherd.handle.reload().unwrap_err().to_string();
    assert!(err.contains("line 1"), "{err}");
    let still = login(&pgherd, "md5user", MD5_PASSWORD, "app").await;
    assert_eq!(still, Err("28000".into()));
}
