//! TLS on both sides, on real servers with a CA made at run time
//! ([`TestPki`]): clients that verify pgherd's certificate (tokio-postgres
//! with rustls, and psql/libpq with `sslmode=verify-full`), each
//! `client_tls_sslmode`, client certificates, and each
//! `server_tls_sslmode` against a PostgreSQL that accepts role `app` only
//! over TLS.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pgherd_integration_tests::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres::config::SslMode;

/// A rustls client (not pgherd's code) that trusts `ca`, with an optional
/// client certificate, for tokio-postgres.
fn verifying_client(
    ca: &Path,
    client_cert: Option<(&Path, &Path)>,
) -> tokio_postgres_rustls::MakeRustlsConnect {
    tokio_postgres_rustls::MakeRustlsConnect::new(rustls_client(ca, client_cert))
}

fn rustls_client(ca: &Path, client_cert: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

async fn connect_tls(
    pgherd: &RunningPgherd,
    password: &str,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = pgherd
        .config("app", password, "app")
        .ssl_mode(SslMode::Require)
        .connect(tls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// `client_tls_cert_file` and `client_tls_key_file` for pgherd's certificate.
fn pgherd_certificate(cert: &Path, key: &Path) -> String {
    format!(
        "client_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"",
        cert.display(),
        key.display()
    )
}

fn tls_failures(pgherd: &RunningPgherd) -> u64 {
    pgherd.handle.login_failures().tls.load(Ordering::Relaxed)
}

/// psql (libpq) as `app` on database `app` running `sql`, with `env`
/// choosing its TLS and channel binding.
async fn psql_app(
    pgherd: &RunningPgherd,
    password: &str,
    sql: &str,
    env: &[(&str, &str)],
) -> std::process::Output {
    psql_with_env(pgherd, "app", password, "app", &["-c", sql], env).await
}

/// What a psql run that must have succeeded printed.
fn succeeded(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The error of a psql run that must have failed.
fn failed(out: &std::process::Output) -> String {
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Transactions with results larger than a TLS record and a socket buffer,
/// from several clients sharing two server connections: what the relay
/// writes must be flushed through TLS, under backpressure, every time.
async fn busy_transactions(clients: &[tokio_postgres::Client]) {
    let mut work = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        work.push(async move {
            let big = c
                .prepare(
                    "SELECT length(repeat(md5($1::text), 20000)) AS n, repeat('x', 300000) AS pad",
                )
                .await
                .unwrap();
            for round in 0..15 {
                let row = c.query_one(&big, &[&format!("{i}-{round}")]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), 640_000);
                assert_eq!(row.get::<_, String>(1).len(), 300_000);
                if round % 5 == 0 {
                    // More than the sockets buffer: the relay's writes
                    // block midway, and what TLS holds must still go out.
                    let huge: String = c
                        .query_one("SELECT repeat('y', 8000000)", &[])
                        .await
                        .unwrap()
                        .get(0);
                    assert_eq!(huge.len(), 8_000_000);
                }
                let n: i64 = c
                    .query_one(
                        "SELECT count(*) FROM generate_series(1, $1::int)",
                        &[&round],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(n, i64::from(round));
            }
        });
    }
    futures_util::future::join_all(work).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_get_tls_as_client_tls_sslmode_says() {
    let cluster = shared_cluster();
    let pki = TestPki::new();
    let files = pgherd_certificate(&pki.server_cert, &pki.server_key);
    let pgherd = cluster
        .pgherd()
        .general("client_tls_sslmode = \"require\"")
        .general(&files)
        .general("pool_mode = \"transaction\"")
        .general("default_pool_size = 2")
        .start()
        .await;

    // A client that verifies pgherd's certificate against the CA.
    let mut clients = Vec::new();
    for _ in 0..4 {
        let tls = verifying_client(&pki.ca_cert, None);
        clients.push(connect_tls(&pgherd, APP_PASSWORD, tls).await.unwrap());
    }
    busy_transactions(&clients).await;

    // libpq demanding verify-full: the chain and the name (127.0.0.1).
    let ca = pki.ca_cert.display().to_string();
    let verify_full = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())];
    let out = psql_app(&pgherd, APP_PASSWORD, "SELECT 42", &verify_full).await;
    assert_eq!(succeeded(&out), "42");

    // Auth types work the same inside TLS; a wrong password is still 28P01.
    let e = connect_tls(&pgherd, "wrong", verifying_client(&pki.ca_cert, None))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("28P01"), "{e}");

    // A client that trusts another CA refuses pgherd; pgherd counts it.
    let before = tls_failures(&pgherd);
    let rogue = pki.rogue_ca_cert.display().to_string();
    let untrusting = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", rogue.as_str()),
    ];
    let out = psql_app(&pgherd, APP_PASSWORD, "SELECT 1", &untrusting).await;
    let stderr = failed(&out);
    assert!(stderr.contains("certificate verify failed"), "{stderr}");

    // A plain client is told TLS is required (28000), and counted.
    let e = pgherd
        .connect("app", APP_PASSWORD, "app")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("28000"), "{e}");
    assert!(message(&e).contains("requires TLS"), "{e}");
    assert!(
        tls_failures(&pgherd) >= before + 2,
        "handshake and plain refusal counted"
    );

    // The clients that were connected throughout still work.
    busy_transactions(&clients[..1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_serves_both_and_verify_ca_demands_a_client_certificate() {
    let cluster = shared_cluster();
    let pki = TestPki::new();
    let files = format!(
        "{}\nclient_tls_ca_file = \"{}\"",
        pgherd_certificate(&pki.server_cert, &pki.server_key),
        pki.ca_cert.display()
    );
    let prefer = cluster
        .pgherd()
        .general("client_tls_sslmode = \"prefer\"")
        .general(&files)
        .start()
        .await;
    let plain = prefer.connect("app", APP_PASSWORD, "app").await.unwrap();
    assert_eq!(simple_value(&plain, "SELECT 1").await, "1");
    let tls = connect_tls(&prefer, APP_PASSWORD, verifying_client(&pki.ca_cert, None))
        .await
        .unwrap();
    assert_eq!(simple_value(&tls, "SELECT 2").await, "2");

    let verify = cluster
        .pgherd()
        .general("client_tls_sslmode = \"verify-ca\"")
        .general(&files)
        .start()
        .await;
    let with_cert = verifying_client(&pki.ca_cert, Some((&pki.client_cert, &pki.client_key)));
    let c = connect_tls(&verify, APP_PASSWORD, with_cert).await.unwrap();
    assert_eq!(simple_value(&c, "SELECT 3").await, "3");
    let before = tls_failures(&verify);
    assert!(
        connect_tls(&verify, APP_PASSWORD, verifying_client(&pki.ca_cert, None))
            .await
            .is_err()
    );
    // A certificate from a CA pgherd does not trust is no better.
    let rogue = verifying_client(&pki.ca_cert, Some((&pki.rogue_cert, &pki.rogue_key)));
    assert!(connect_tls(&verify, APP_PASSWORD, rogue).await.is_err());
    assert_eq!(tls_failures(&verify), before + 2);
    assert_eq!(
        simple_value(&c, "SELECT 4").await,
        "4",
        "others keep working"
    );
}

/// `app` may log in to this PostgreSQL only over TLS.
fn tls_only_cluster(pki: &TestPki) -> TestCluster {
    TestCluster::start_with(ClusterSpec {
        standbys: 0,
        ssl: Some(SslFiles {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
        }),
        hba_first: vec![
            "hostssl all app 127.0.0.1/32 scram-sha-256".into(),
            "hostnossl all app 127.0.0.1/32 reject".into(),
        ],
        ..ClusterSpec::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_sslmode_reaches_a_tls_only_postgres() {
    let pki = TestPki::new();
    let cluster = tls_only_cluster(&pki);
    let ca = pki.ca_cert.display().to_string();
    let rogue = pki.rogue_ca_cert.display().to_string();
    let on_server_tls = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

    for (mode, ca_file) in [
        ("allow", None),
        ("prefer", None),
        ("require", None),
        ("verify-ca", Some(&ca)),
        ("verify-full", Some(&ca)),
    ] {
        let mut builder = cluster
            .pgherd()
            .general(&format!("server_tls_sslmode = \"{mode}\""));
        if let Some(ca) = ca_file {
            builder = builder.general(&format!("server_tls_ca_file = \"{ca}\""));
        }
        let pgherd = builder.start().await;
        let c = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
        assert_eq!(simple_value(&c, on_server_tls).await, "t", "{mode}");
        if mode == "require" {
            // The probes use the same settings.
            let probes = "SELECT bool_and(s.ssl) FROM pg_stat_ssl s \
                          JOIN pg_stat_activity a USING (pid) \
                          WHERE a.application_name = 'pgherd probe'";
            assert_eq!(simple_value(&c, probes).await, "t");
        }
    }

    // Without TLS, the server's own refusal reaches the client.
    let plain = cluster.pgherd().start().await;
    let e = plain.connect("app", APP_PASSWORD, "app").await.unwrap_err();
    assert_eq!(sqlstate(&e), Some("28000"), "{e}");
    assert!(message(&e).contains("no encryption"), "{e}");

    // A server certificate pgherd cannot verify: the probes cannot reach
    // the node either, and the client is told why (not left hanging).
    let untrusting = cluster
        .pgherd()
        .general("server_tls_sslmode = \"verify-full\"")
        .general(&format!("server_tls_ca_file = \"{rogue}\""))
        .general("primary_wait_timeout = 2")
        .start()
        .await;
    let e = untrusting
        .connect("app", APP_PASSWORD, "app")
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "57P03", "{e:?}");
    assert!(db.detail().unwrap_or("").contains("certificate"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_sides_relays_transactions() {
    let pki = TestPki::new();
    let cluster = tls_only_cluster(&pki);
    let pgherd = cluster
        .pgherd()
        .general("server_tls_sslmode = \"verify-full\"")
        .general(&format!(
            "server_tls_ca_file = \"{}\"",
            pki.ca_cert.display()
        ))
        .general("client_tls_sslmode = \"require\"")
        .general(&pgherd_certificate(&pki.server_cert, &pki.server_key))
        .general("pool_mode = \"transaction\"")
        .general("default_pool_size = 2")
        .start()
        .await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let tls = verifying_client(&pki.ca_cert, None);
        clients.push(connect_tls(&pgherd, APP_PASSWORD, tls).await.unwrap());
    }
    busy_transactions(&clients).await;
}

/// SCRAM-SHA-256-PLUS: clients that demand channel binding (libpq's
/// `channel_binding=require`, tokio-postgres's `ChannelBinding::Require`)
/// log in over TLS, bound to pgherd's certificate; without TLS there is
/// nothing to bind to, and such a client gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_require_channel_binding_get_it_over_tls() {
    let cluster = shared_cluster();
    let pki = TestPki::new();
    let pgherd = cluster
        .pgherd()
        .general("client_tls_sslmode = \"prefer\"")
        .general(&pgherd_certificate(&pki.server_cert, &pki.server_key))
        .start()
        .await;
    let ca = pki.ca_cert.display().to_string();
    let bound = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", ca.as_str()),
        ("PGCHANNELBINDING", "require"),
    ];
    let out = psql_app(&pgherd, APP_PASSWORD, "SELECT 1", &bound).await;
    assert_eq!(succeeded(&out), "1");
    let out = psql_app(&pgherd, "wrong", "SELECT 1", &bound).await;
    let stderr = failed(&out);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );

    let (client, connection) = pgherd
        .config("app", APP_PASSWORD, "app")
        .ssl_mode(SslMode::Require)
        .channel_binding(tokio_postgres::config::ChannelBinding::Require)
        .connect(verifying_client(&pki.ca_cert, None))
        .await
        .unwrap();
    tokio::spawn(connection);
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");

    let plain = [("PGSSLMODE", "disable"), ("PGCHANNELBINDING", "require")];
    let out = psql_app(&pgherd, APP_PASSWORD, "SELECT 1", &plain).await;
    let stderr = failed(&out);
    assert!(stderr.contains("channel binding"), "{stderr}");
}

/// A certificate signed with Ed25519 defines no channel binding data: pgherd
/// offers plain SCRAM only, so a client that requires binding gives up and
/// one that merely prefers it logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_binding_data_plus_is_not_offered() {
    let cluster = shared_cluster();
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.path().join("ed.crt"), dir.path().join("ed.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let pgherd = cluster
        .pgherd()
        .general("client_tls_sslmode = \"require\"")
        .general(&pgherd_certificate(&cert_file, &key_file))
        .start()
        .await;
    let binding = |b| [("PGSSLMODE", "require"), ("PGCHANNELBINDING", b)];
    let out = psql_app(&pgherd, APP_PASSWORD, "SELECT 1", &binding("require")).await;
    let stderr = failed(&out);
    assert!(stderr.contains("channel binding"), "{stderr}");
    let out = psql_app(&pgherd, APP_PASSWORD, "SELECT 1", &binding("prefer")).await;
    succeeded(&out);
}

/// A client that reads a large result slowly keeps pgherd's socket full:
/// the relay's TLS writes block midway again and again, and every byte and
/// the final ReadyForQuery must still arrive. (Records left in rustls after
/// the last write are flushed by the relay; this test could not make that
/// case happen on loopback — the kernel wakes a writer only with room for a
/// whole relay chunk — so it guards the backpressure path, not the flush.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tls_reader_gets_every_byte() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = shared_cluster();
    let pki = TestPki::new();
    let pgherd = cluster
        .pgherd()
        .general("auth_type = \"trust\"")
        .general("client_tls_sslmode = \"require\"")
        .general(&pgherd_certificate(&pki.server_cert, &pki.server_key))
        .general("pool_mode = \"transaction\"")
        .start()
        .await;

    let mut tcp = tokio::net::TcpStream::connect(pgherd.addr).await.unwrap();
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(rustls_client(&pki.ca_cert, None)));
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();

    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", "trustuser"), ("database", "postgres")],
        &mut out,
    )
    .unwrap();
    tls.write_all(&out).await.unwrap();
    // Ready for query after login: ends with Z, length 5, status I.
    let ready = b"Z\0\0\0\x05I";
    let mut got = Vec::new();
    while !got.ends_with(ready) {
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0, "pgherd closed during login");
        got.extend_from_slice(&chunk[..n]);
    }

    out.clear();
    postgres_protocol::message::frontend::query("SELECT repeat('z', 3000000)", &mut out).unwrap();
    tls.write_all(&out).await.unwrap();
    tls.flush().await.unwrap();
    let slow_read = async {
        let mut total = 0usize;
        let mut tail = Vec::new();
        while !tail.ends_with(ready) {
            let mut chunk = [0u8; 8192];
            let n = tls.read(&mut chunk).await.unwrap();
            assert!(n > 0, "pgherd closed mid-result");
            total += n;
            tail.extend_from_slice(&chunk[..n]);
            let keep = tail.len().saturating_sub(16);
            tail.drain(..keep);
            tokio::time::sleep(std::time::Duration::from_millis(4)).await;
        }
        total
    };
    // A hang guard, not a speed limit: without the flush it never ends.
    let total = tokio::time::timeout(std::time::Duration::from_secs(60), slow_read)
        .await
        .expect("the whole result and ReadyForQuery arrive");
    assert!(total > 3_000_000, "{total}");
}

/// RELOAD reads the certificate files again (renewal without a restart);
/// a certificate that does not load changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_picks_up_a_renewed_certificate() {
    let cluster = shared_cluster();
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (cert, key) = (dir.join("pgherd.crt"), dir.join("pgherd.key"));
    std::fs::copy(&pki.server_cert, &cert).unwrap();
    std::fs::copy(&pki.server_key, &key).unwrap();
    let builder = cluster
        .pgherd()
        .general("client_tls_sslmode = \"require\"")
        .general(&pgherd_certificate(&cert, &key));
    let pgherd = builder.start().await;
    let config = dir.join("pgherd.toml");
    std::fs::write(&config, builder.toml()).unwrap();
    pgherd.handle.set_config_file(config);

    let trusted = || verifying_client(&pki.ca_cert, None);
    let rogue_trusting = || verifying_client(&pki.rogue_ca_cert, None);
    assert!(connect_tls(&pgherd, APP_PASSWORD, trusted()).await.is_ok());
    assert!(connect_tls(&pgherd, APP_PASSWORD, rogue_trusting())
        .await
        .is_err());

    // "Renewed" with a certificate from the other CA.
    std::fs::copy(&pki.rogue_cert, &cert).unwrap();
    std::fs::copy(&pki.rogue_key, &key).unwrap();
    pgherd.handle.reload().unwrap();
    assert!(connect_tls(&pgherd, APP_PASSWORD, rogue_trusting())
        .await
        .is_ok());
    assert!(connect_tls(&pgherd, APP_PASSWORD, trusted()).await.is_err());

    // A broken file: the reload fails and the running certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    assert!(pgherd.handle.reload().is_err());
    assert!(connect_tls(&pgherd, APP_PASSWORD, rogue_trusting())
        .await
        .is_ok());
}

/// Clients that break the TLS handshake: one goes silent after pgherd
/// said yes to TLS, one sends plain text instead of a ClientHello. Each is
/// closed (the silent one at `client_login_timeout`) and counted; a proper
/// client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_tls_handshakes_are_closed_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = shared_cluster();
    let pki = TestPki::new();
    let pgherd = cluster
        .pgherd()
        .general("client_tls_sslmode = \"require\"")
        .general(&pgherd_certificate(&pki.server_cert, &pki.server_key))
        // Long enough for the proper client's whole login on a loaded
        // machine; the silent one is closed at it (the hang guard is 10 s).
        .general("client_login_timeout = 3")
        .start()
        .await;
    let ssl_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let said_yes = || async {
        let mut tcp = tokio::net::TcpStream::connect(pgherd.addr).await.unwrap();
        tcp.write_all(&ssl_request).await.unwrap();
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"S");
        tcp
    };
    // Closed by pgherd: end of stream (or a reset), within a hang guard.
    let closed = |mut tcp: tokio::net::TcpStream| async move {
        let mut rest = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tcp.read_to_end(&mut rest),
        )
        .await
        .expect("pgherd closes the connection")
        .ok();
    };
    let handle = &pgherd.handle;
    let timeouts = || handle.login_failures().timeout.load(Ordering::Relaxed);
    let (timeouts_before, tls_before) = (timeouts(), tls_failures(&pgherd));

    let silent = said_yes().await;
    let mut garbage = said_yes().await;
    garbage
        .write_all(b"\0\0\0\x08\0\x03\0\0 not a TLS ClientHello")
        .await
        .unwrap();
    let served = connect_tls(&pgherd, APP_PASSWORD, verifying_client(&pki.ca_cert, None))
        .await
        .unwrap();
    assert_eq!(simple_value(&served, "SELECT 1").await, "1");
    closed(garbage).await;
    closed(silent).await;
    assert_eq!(tls_failures(&pgherd), tls_before + 1, "the bad handshake");
    assert_eq!(timeouts(), timeouts_before + 1, "the silent client");
    assert_eq!(simple_value(&served, "SELECT 2").await, "2");
}

/// As pgbouncer: `client_tls_sslmode = "require"` is for TCP. On the Unix
/// socket an SSLRequest is answered `N` (as PostgreSQL answers there) and
/// the plain client logs in; over TCP the plain client is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_does_not_apply_on_the_unix_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = shared_cluster();
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let pgherd = cluster
        .pgherd()
        .general("client_tls_sslmode = \"require\"")
        .general(&pgherd_certificate(&pki.server_cert, &pki.server_key))
        .unix_socket_dir(dir.path())
        .start()
        .await;
    let port = pgherd.addr.port();

    let mut raw = tokio::net::UnixStream::connect(dir.path().join(format!(".s.PGSQL.{port}")))
        .await
        .unwrap();
    raw.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N", "no TLS on a Unix socket");

    let client = connect_unix(dir.path(), port, "app", APP_PASSWORD, "app")
        .await
        .unwrap();
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");

    let e = pgherd
        .connect("app", APP_PASSWORD, "app")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), Some("28000"), "{e}");
}

/// `GET path` over HTTPS (a rustls client trusting `ca`): status and body.
async fn https_get(addr: std::net::SocketAddr, ca: &Path, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(Arc::new(rustls_client(ca, None)));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // rustls reports the peer closing without close_notify as an error:
    // what was read before it is the answer.
    let _ = tls.read_to_end(&mut raw).await;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_speaks_https_only_with_admin_tls_files() {
    let pki = TestPki::new();
    let pgherd = shared_cluster()
        .pgherd()
        .general(&format!(
            "admin_tls_key_file = \"{}\"",
            pki.server_key.display()
        ))
        .general(&format!(
            "admin_tls_cert_file = \"{}\"",
            pki.server_cert.display()
        ))
        .start()
        .await;
    pgherd.wait_settled(0).await;
    let admin = pgherd.admin_addr.unwrap();
    let (status, body) = https_get(admin, &pki.ca_cert, "/health").await;
    assert_eq!((status, body.trim()), (200, "OK: pgherd is serving"));
    let (status, metrics) = https_get(admin, &pki.ca_cert, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("pgherd_primary_known 1"), "{metrics}");
    // Plain HTTP gets no answer: the port speaks TLS only.
    let plain = http_get_at(admin, "/health").await;
    assert!(
        !matches!(plain, Ok((200, _))),
        "plain HTTP was answered: {plain:?}"
    );
    // A client that trusts another CA does not get through.
    let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let rogue = tokio_rustls::TlsConnector::from(Arc::new(rustls_client(&pki.rogue_ca_cert, None)));
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    assert!(rogue.connect(name, tcp).await.is_err());
    // Clients are still served.
    let app = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
    assert_eq!(simple_value(&app, "SELECT 1").await, "1");
}
