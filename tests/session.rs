//! Session pooling against a real cluster: what a client sees through pgherd
//! is what it would see connected directly.

use pgherd_integration_tests::*;

#[tokio::test]
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
}
