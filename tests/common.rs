//! Helpers shared by the integration tests.

use std::process::{Command, Output};

pub use pgherd_testkit::*;

/// The SQLSTATE of a tokio-postgres error, if the server (or pgherd) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// Runs psql against pgherd at `addr` with `args`; returns its output.
pub fn psql(pgherd: &RunningPgherd, user: &str, password: &str, db: &str, args: &[&str]) -> Output {
    let bins = pgherd_testkit::PgBinaries::find().expect("PostgreSQL binaries");
    Command::new(bins.path("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &pgherd.addr.ip().to_string()])
        .args(["-p", &pgherd.addr.port().to_string(), "-U", user, "-d", db])
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("run psql")
}

/// Runs `sql` with the simple protocol; returns the rows as text.
pub async fn simple_rows(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect())
}

/// The single value of a one-row, one-column simple query.
pub async fn simple_value(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = simple_rows(client, sql).await.expect("query succeeds");
    rows[0][0].clone().expect("not null")
}
