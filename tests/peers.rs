//! Several pgherd instances in front of one cluster (`peer_id`, `[peers]`,
//! pgbouncer's names): a cancel request that reaches another instance than
//! the one holding the query is sent on to it, as behind a load balancer
//! that spreads a driver's cancel connection elsewhere.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use pgherd_integration_tests::*;
use tokio_postgres::NoTls;

/// Two instances, peers 1 and 2, that know each other.
async fn two_peers(mode: &str) -> (RunningPgherd, RunningPgherd) {
    let (port_a, port_b) = (free_port(), free_port());
    let instance = |id: u16, port: u16| {
        shared_cluster()
            .pgherd()
            .general(&format!("listen_addr = \"127.0.0.1:{port}\""))
            .general(&format!("peer_id = {id}"))
            .general(&format!("pool_mode = \"{mode}\""))
            .peer(1, port_a)
            .peer(2, port_b)
    };
    let a = instance(1, port_a).start().await;
    let b = instance(2, port_b).start().await;
    (a, b)
}

/// A query through instance A, its cancel request sent to instance B: B
/// sends it on to A, and the query ends with 57014, in both pool modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_the_wrong_instance_reaches_the_query() {
    for mode in ["session", "transaction"] {
        let (a, b) = two_peers(mode).await;
        let client = a.app().await;
        let token = client.cancel_token();
        let sleep = format!("SELECT pg_sleep(60) /* {mode} */");
        let running = {
            let sleep = sleep.clone();
            tokio::spawn(async move {
                let result = client.simple_query(&sleep).await;
                (client, result)
            })
        };
        wait_for_sql(
            shared_cluster(),
            0,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE query = '{sleep}' AND state = 'active'"
            ),
            "1",
        )
        .await;
        // The key is A's; the request goes to B.
        let to_b = tokio::net::TcpStream::connect(b.addr).await.unwrap();
        token.cancel_query_raw(to_b, NoTls).await.unwrap();
        let (client, result) = running.await.unwrap();
        let err = result.unwrap_err();
        assert_eq!(sqlstate(&err), Some("57014"), "{mode}: {err}");
        assert_eq!(simple_value(&client, "SELECT 1").await, "1", "{mode}");
    }
}

/// The console's SHOW PEERS lists `[peers]` with pgbouncer's columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_peers_lists_the_peers() {
    let ports = [free_port(), free_port()];
    let pgherd = shared_cluster()
        .pgherd()
        .general("admin_users = [\"app\"]")
        .general("peer_id = 1")
        .peer(1, ports[0])
        .peer(2, ports[1])
        .start()
        .await;
    let admin = pgherd
        .connect("app", APP_PASSWORD, "pgbouncer")
        .await
        .unwrap();
    let rows = simple_rows(&admin, "SHOW PEERS").await.unwrap();
    let ports = ports.map(|p| p.to_string());
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0].as_deref(), Some((i + 1).to_string().as_str()));
        assert_eq!(row[1].as_deref(), Some("127.0.0.1"));
        assert_eq!(row[2].as_deref(), Some(ports[i].as_str()));
        assert_eq!(row[3], None);
    }
}

/// A cancel request whose key names a peer `[peers]` does not list is
/// dropped (the connection closed without a reply, as for any cancel
/// request), and the instance goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_for_an_unknown_peer_is_dropped() {
    use tokio::io::AsyncWriteExt;
    let (a, _b) = two_peers("transaction").await;
    let client = a.app().await;
    // CancelRequest: length 16, code 80877102, a PID, a secret naming peer 3.
    let mut request = Vec::new();
    request.extend_from_slice(&16u32.to_be_bytes());
    request.extend_from_slice(&80_877_102u32.to_be_bytes());
    request.extend_from_slice(&4242i32.to_be_bytes());
    request.extend_from_slice(&[0, 3, 1, 1]);
    let mut stream = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest);
    let closed = tokio::time::timeout(std::time::Duration::from_secs(30), read).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "closed without a reply: {closed:?}"
    );
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");
}
