//! Protocol edge cases a real server cannot be made to produce, from a
//! scripted server in front of a real node (testkit's `ScriptedServer`):
//! the client whose server broke gets a clear error, and pgherd keeps
//! serving everyone else with no server connection left behind. And the
//! probes of older PostgreSQL releases, from a scripted server that gives
//! the answers such a server gives.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use pgherd_integration_tests::*;
use pgherd_wire::backend;
use pgherd_wire::frame::put_message;

/// pgherd in transaction mode whose one node is a scripted server in front
/// of the shared cluster's primary.
async fn behind_scripts(scripts: Vec<Script>) -> (ScriptedServer, RunningPgherd) {
    let cluster = shared_cluster();
    let server = ScriptedServer::start(cluster.pg.node(0).port, scripts).await;
    let pgherd = cluster
        .pgherd()
        .nodes(&[0])
        .node_port(0, server.port)
        .general("pool_mode = \"transaction\"")
        .start()
        .await;
    pgherd.wait_settled(0).await;
    (server, pgherd)
}

/// Everyone else is served, and no server connection is left in use.
async fn still_serving(pgherd: &RunningPgherd) {
    let other = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
    assert_eq!(simple_value(&other, "SELECT 41 + 1").await, "42");
    drop(other);
    // The last client's server goes back as its Terminate is read.
    let checked_out = || -> usize {
        let pools = pgherd.handle.pools();
        pools.iter().map(|p| p.status.checked_out).sum()
    };
    for _ in 0..1500 {
        if checked_out() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("a server is still checked out: {:?}", pgherd.handle.pools());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_breaks_the_protocol_fails_only_its_client() {
    // A DataRow whose length (1) is below the length field's own size.
    let broken = Script {
        trigger: "-- broken frame",
        reply: vec![backend::DATA_ROW, 0, 0, 0, 1],
        then_close: false,
    };
    let (_server, pgherd) = behind_scripts(vec![broken]).await;
    let victim = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
    let err = victim
        .simple_query("-- broken frame\nSELECT 1")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("08P01"), "{err}");
    assert!(message(&err).contains("broke the protocol"), "{err}");
    still_serving(&pgherd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_in_the_middle_of_a_result_fails_only_its_client() {
    // A RowDescription, then half a DataRow, then the connection closes.
    let mut reply = bytes::BytesMut::new();
    backend::row_description(&mut reply, &[("n", backend::oid::INT4)]);
    put_message(&mut reply, backend::DATA_ROW, &[&[0, 1, 0, 0, 0, 1], b"4"]);
    let cut = reply.len() - 1;
    let gone = Script {
        trigger: "-- cut",
        reply: reply[..cut].to_vec(),
        then_close: true,
    };
    let (_server, pgherd) = behind_scripts(vec![gone]).await;
    let victim = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
    let err = victim.simple_query("-- cut\nSELECT 4").await.unwrap_err();
    // Half a message reached the client: pgherd can only close.
    assert!(victim.is_closed() || err.is_closed(), "{err}");
    still_serving(&pgherd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_between_messages_gets_its_client_08006() {
    let mut reply = bytes::BytesMut::new();
    backend::row_description(&mut reply, &[("n", backend::oid::INT4)]);
    let gone = Script {
        trigger: "-- close",
        reply: reply.to_vec(),
        then_close: true,
    };
    let (_server, pgherd) = behind_scripts(vec![gone]).await;
    let victim = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
    let err = victim.simple_query("-- close\nSELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), Some("08006"), "{err}");
    assert!(message(&err).contains("was lost"), "{err}");
    still_serving(&pgherd).await;
}

/// A one-column, one-row answer to a simple query, with its tag.
fn one_value(column: &str, value: &str, tag: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    backend::row_description(&mut out, &[(column, 25)]);
    backend::data_row(&mut out, [Some(value)].into_iter());
    backend::command_complete(&mut out, tag);
    backend::ready_for_query(&mut out, backend::TxStatus::Idle);
    out.to_vec()
}

/// A server that says it is `version` (`server_version_num`) and answers
/// the 9.6 probe with `row`.
async fn posing_as(version: &str, row: [Option<&str>; 8]) -> ScriptedServer {
    let mut probe = bytes::BytesMut::new();
    let columns = [
        "pg_is_in_recovery",
        "current",
        "received",
        "replayed",
        "age",
        "timeline",
        "status",
        "system_identifier",
    ];
    backend::row_description(&mut probe, &columns.map(|c| (c, 25)));
    backend::data_row(&mut probe, row.into_iter());
    backend::command_complete(&mut probe, "SELECT 1");
    backend::ready_for_query(&mut probe, backend::TxStatus::Idle);
    let scripts = vec![
        Script {
            trigger: "SHOW server_version_num",
            reply: one_value("server_version_num", version, "SHOW"),
            then_close: false,
        },
        Script {
            trigger: "/* pgherd probe, PostgreSQL 9.6 */",
            reply: probe.to_vec(),
            then_close: false,
        },
    ];
    ScriptedServer::start(shared_cluster().pg.node(0).port, scripts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_96_primary_is_probed_with_its_xlog_functions() {
    // A 9.6 primary's answer: on timeline 1, 384 MiB of WAL written.
    let row = [
        Some("f"),
        Some("402653280"),
        None,
        None,
        None,
        Some("1"),
        None,
        Some("6812341598721384925"),
    ];
    let server = posing_as("90624", row).await;
    let pgherd = shared_cluster()
        .pgherd()
        .nodes(&[0])
        .node_port(0, server.port)
        .start()
        .await;
    pgherd.wait_settled(0).await;
    let node = &pgherd.handle.topology().nodes[0];
    let sample = node.last_sample.clone().unwrap();
    assert_eq!(
        (sample.current_lsn, sample.system_identifier),
        (Some(402_653_280), Some(6_812_341_598_721_384_925)),
        "the recorded 9.6 answer, not the real server's"
    );
    // Writes go to it.
    let app = pgherd.connect("app", APP_PASSWORD, "app").await.unwrap();
    assert_eq!(simple_value(&app, "SELECT pg_is_in_recovery()").await, "f");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_older_than_96_is_named_with_its_version_not_merely_down() {
    let server = posing_as("90525", [None; 8]).await;
    let pgherd = shared_cluster()
        .pgherd()
        .node_port(0, server.port)
        .start()
        .await;
    pgherd
        .wait_topology("node 0 refused for its version", |t| {
            t.nodes[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("PostgreSQL 9.5.25") && e.contains("9.6 or later"))
        })
        .await;
    let (_, nodes) = http_get(&pgherd, "/api/v1/nodes").await;
    assert!(nodes.contains("PostgreSQL 9.5.25"), "{nodes}");
    assert!(!pgherd.handle.topology().nodes[0].up);
}
