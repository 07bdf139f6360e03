//! A rolling restart with `so_reuseport` (pgbouncer's way): a new pgherd
//! starts on the same port (and Unix socket) while the old one runs, the
//! kernel spreads new clients over both, and when the old one is told to
//! stop, every new client reaches the new one — no refused connection.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use pgherd_integration_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pgherd_takes_over_the_port_and_socket_while_the_old_one_drains() {
    let cluster = shared_cluster();
    let dir = tempfile::tempdir().unwrap();
    let mut old = cluster
        .pgherd()
        .general("so_reuseport = true")
        .unix_socket_dir(dir.path())
        .general("pool_mode = \"transaction\"")
        .start()
        .await;
    let port = old.addr.port();
    let same_port = format!("listen_addr = \"127.0.0.1:{port}\"");

    // Without so_reuseport the port is taken.
    let toml = cluster.pgherd().general(&same_port).toml();
    let config = pgherd_config::Config::parse(&toml).unwrap();
    let err = pgherd_proxy::Proxy::bind(config).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");

    let new = cluster
        .pgherd()
        .general("so_reuseport = true")
        .unix_socket_dir(dir.path())
        .general("pool_mode = \"transaction\"")
        .general(&same_port)
        .start()
        .await;
    assert_eq!(new.addr, old.addr);

    // Both take new clients (the kernel hashes each connection to one;
    // 24 all landing on the same one would be a 1-in-8-million chance).
    let mut clients = Vec::new();
    for _ in 0..24 {
        clients.push(old.app().await);
    }
    let (on_old, on_new) = (old.handle.clients().len(), new.handle.clients().len());
    assert_eq!(on_old + on_new, 24);
    assert!(on_old > 0 && on_new > 0, "old {on_old}, new {on_new}");

    // The old one stops listening; from then on every client is the new one's.
    old.begin_shutdown();
    for _ in 0..200 {
        if old.handle.clients().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(old.handle.clients().is_empty(), "the old pgherd drained");
    for _ in 0..10 {
        let client = new.app().await;
        assert_eq!(simple_value(&client, "SELECT 1").await, "1");
    }
    // The Unix socket is the new one's: the old one left it in place.
    let client = connect_unix(dir.path(), port, "app", APP_PASSWORD, "app")
        .await
        .unwrap();
    assert_eq!(simple_value(&client, "SELECT 2").await, "2");
    let through_socket = new.handle.clients().iter().any(|c| c.addr.is_unix());
    assert!(through_socket, "the socket reaches the new pgherd");
    drop(clients);
}
