//! `pgherd demo`: a real local cluster behind pgherd, in one command.

use anyhow::Context;
use pgherd_localpg::{ClusterSpec, LocalCluster};

const DEMO_USER: &str = "demo";
const DEMO_PASSWORD: &str = "demo";

pub(crate) fn run(port: Option<u16>) -> anyhow::Result<()> {
    eprintln!("starting a local PostgreSQL primary and 2 standbys...");
    let cluster = LocalCluster::start(ClusterSpec::default()).context("starting PostgreSQL")?;
    cluster.sql(
        0,
        &format!("CREATE ROLE {DEMO_USER} LOGIN PASSWORD '{DEMO_PASSWORD}'"),
    )?;
    cluster.sql(0, &format!("CREATE DATABASE {DEMO_USER} OWNER {DEMO_USER}"))?;

    // The default worker_threads.
    let rt = crate::runtime(1)?;
    let result = rt.block_on(serve(&cluster, port));
    drop(rt);
    eprintln!("stopping PostgreSQL...");
    drop(cluster);
    result
}

/// The seed's two ports: `port` read-write (the primary), `read_only`
/// spread over the standbys round robin.
fn config_for(cluster: &LocalCluster, (port, read_only): (u16, u16), admin: u16) -> String {
    let mut t = format!(
        "[pgherd]\nlisten_addr = \"127.0.0.1:{port}\"\nadmin_listen_addr = \"127.0.0.1:{admin}\"\n\
         probe_user = \"postgres\"\nprobe_password = \"{}\"\nadmin_users = [\"{DEMO_USER}\"]\n\
         \n[[listeners]]\naddr = \"127.0.0.1:{read_only}\"\ntarget = \"replica\"\n",
        cluster.superuser_password()
    );
    for n in cluster.nodes() {
        t.push_str(&format!(
            "\n[[nodes]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n",
            n.name, n.port
        ));
    }
    t.push_str("\n[databases]\n\"*\" = {}\n");
    t.push_str(&format!(
        "\n[users]\n{DEMO_USER} = {{ password = \"{DEMO_PASSWORD}\" }}\npostgres = {{ password = \"{}\" }}\n",
        cluster.superuser_password()
    ));
    t
}

async fn serve(cluster: &LocalCluster, port: Option<u16>) -> anyhow::Result<()> {
    // The seed's 5432/5433, else pgbouncer's 6432/6433, else any free pair.
    let candidates: Vec<(u16, u16)> = match port {
        Some(p) => vec![(p, p.saturating_add(1))],
        None => vec![(5432, 5433), (6432, 6433), (0, 0)],
    };
    let mut last_err = None;
    let mut bound = None;
    for p in candidates {
        // The admin port: 9930 unless taken.
        let admin = if std::net::TcpListener::bind("127.0.0.1:9930").is_ok() {
            9930
        } else {
            0
        };
        let config = pgherd_config::Config::parse(&config_for(cluster, p, admin))?;
        match crate::start(config).await {
            Ok(started) => {
                bound = Some(started);
                break;
            }
            Err(e) => last_err = Some(format!("127.0.0.1:{} and {}: {e:#}", p.0, p.1)),
        }
    }
    let started = bound.with_context(|| {
        format!(
            "cannot bind pgherd's port ({})",
            last_err.unwrap_or_default()
        )
    })?;
    let ports: Vec<u16> = (started.proxy)
        .listen_addrs()?
        .iter()
        .map(|(a, _)| a.port())
        .collect();
    let port = *ports.first().context("pgherd has no listener")?;
    let read_only = ports.get(1).copied().unwrap_or(port);
    println!("\npgherd demo is running.\n");
    for (i, n) in cluster.nodes().iter().enumerate() {
        let role = if i == 0 { "primary" } else { "standby" };
        println!("  {role:<8} {}  127.0.0.1:{}", n.name, n.port);
    }
    println!("\nConnect through pgherd, read-write (the primary):\n");
    println!(
        "  PGPASSWORD={DEMO_PASSWORD} psql -h 127.0.0.1 -p {port} -U {DEMO_USER} {DEMO_USER}\n"
    );
    println!("Read-only (the standbys, round robin):\n");
    println!(
        "  PGPASSWORD={DEMO_PASSWORD} psql -h 127.0.0.1 -p {read_only} -U {DEMO_USER} {DEMO_USER}\n"
    );
    println!("Admin console (pgbouncer's SHOW POOLS, SHOW NODES, PAUSE, ...):\n");
    println!(
        "  PGPASSWORD={DEMO_PASSWORD} psql -h 127.0.0.1 -p {port} -U {DEMO_USER} pgbouncer -c 'SHOW POOLS'\n"
    );
    if let Some(a) = started.admin {
        println!("Stats page:    http://{a}/");
        println!("Metrics:       http://{a}/metrics");
        println!("Health:        http://{a}/primary  http://{a}/replica");
        println!("Cluster (JSON): http://{a}/api/v1/nodes\n");
    }
    println!("Data and logs: {}", cluster.dir().display());
    println!("Press Ctrl-C to stop.");
    started.serve(crate::shutdown_signal()).await;
    Ok(())
}
