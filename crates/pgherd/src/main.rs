//! The `pgherd` binary: command line, logging, signals, and the demo.
//!
//! All logic lives in the library crates; this file wires them together.

mod demo;
mod fd_limit;

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pgherd",
    version,
    about = "PostgreSQL HA proxy: pooling, routing, health"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs pgherd with a configuration file.
    Run {
        /// The TOML configuration (see config/pgherd.toml).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Checks a configuration file as `run` would read it (with its
    /// auth_file, auth_hba_file and TLS files), like `haproxy -c`: says
    /// what it describes, or the first error (exit status 1).
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Starts a local primary + 2 standbys from the installed PostgreSQL and
    /// pgherd in front of them, until Ctrl-C.
    Demo {
        /// Read-write port N and read-only port N+1 (default: 5432 and 5433,
        /// else 6432 and 6433, else two free ones).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Turns a pgbouncer.ini (with its %includes and auth_file) and the
    /// haproxy.cfg files in front of it into a pgherd configuration: TOML
    /// on standard output, what was not mapped and why on standard error.
    Import {
        #[arg(long, value_name = "FILE")]
        pgbouncer: PathBuf,
        /// A haproxy.cfg (again for each one: the seed runs one per role).
        #[arg(long, value_name = "FILE")]
        haproxy: Vec<PathBuf>,
    },
    /// Prints a SCRAM-SHA-256 verifier for a password (read from stdin when
    /// not given), for the `[users]` section.
    ScramVerifier { password: Option<String> },
    /// Sends a test message to every `[notify]` destination of a
    /// configuration and says which received it (exit status 1 if any did
    /// not).
    NotifyTest {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The text to send.
        #[arg(long, default_value = "test notification: this destination works")]
        message: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGHERD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config: path } => {
            let config = pgherd_config::Config::load(&path)
                .with_context(|| format!("loading {}", path.display()))?;
            fd_limit::raise_and_check(&config);
            runtime(config.general.worker_threads)?.block_on(run(config, path))
        }
        Command::Check { config: path } => check(&path),
        Command::Demo { port } => demo::run(port),
        Command::Import { pgbouncer, haproxy } => import(&pgbouncer, &haproxy),
        Command::ScramVerifier { password } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            println!("{}", pgherd_auth::make_scram_verifier(&password));
            Ok(())
        }
        Command::NotifyTest {
            config: path,
            message,
        } => {
            let config = pgherd_config::Config::load(&path)
                .with_context(|| format!("loading {}", path.display()))?;
            runtime(1)?.block_on(notify_test(&config.notify, &message))
        }
    }
}

/// `pgherd import`: the TOML on standard output, the notes on standard
/// error. Relative `%include` and auth_file paths are read from the
/// pgbouncer.ini's directory, as written in it.
fn import(pgbouncer: &std::path::Path, haproxy: &[PathBuf]) -> anyhow::Result<()> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let text = read(pgbouncer)?;
    let dir = pgbouncer.parent().unwrap_or(std::path::Path::new("."));
    let proxies = haproxy
        .iter()
        .map(|p| Ok((p.display().to_string(), read(p)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let name = pgbouncer.display().to_string();
    let resolve = |path: &str| std::fs::read_to_string(dir.join(path)).map_err(|e| e.to_string());
    let imported = pgherd_import::import(&pgherd_import::Sources {
        pgbouncer: (&name, &text),
        read: &resolve,
        haproxy: proxies
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect(),
    })
    .map_err(anyhow::Error::msg)?;
    print!("{}", imported.toml);
    for note in &imported.notes {
        eprintln!("note: {note}");
    }
    Ok(())
}

/// `pgherd check`: the configuration's outline, or why it would not start.
fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config =
        pgherd_config::Config::load(path).with_context(|| format!("loading {}", path.display()))?;
    let tls = pgherd_tls::Contexts::new(&config.general).context("loading the TLS files")?;
    let notified = pgherd_notify::check(&config.notify).context("[notify]")?;
    let g = &config.general;
    let mut listeners = vec![format!("{} (primary)", g.listen_addr)];
    listeners.extend(
        config
            .listeners
            .iter()
            .map(|l| format!("{} ({:?})", l.addr, l.target).to_lowercase()),
    );
    let node = |n: &pgherd_config::Node, source: pgherd_cluster::Source| {
        format!("{} {}:{} ({})", n.name, n.host, n.port, source.as_str())
    };
    let mut nodes: Vec<String> = (config.nodes.iter())
        .map(|n| node(n, pgherd_cluster::Source::Config))
        .collect();
    // With discovery, the manager is asked now, as pgherd would at start.
    let discovered =
        runtime(1)?.block_on(pgherd_cluster::discovery::members_now(&config, &tls.server));
    let discovery = match discovered {
        None => None,
        Some((manager, Ok(members))) => {
            nodes = members.iter().map(|m| node(&m.node, m.source)).collect();
            Some(format!("{} read", manager.as_str()))
        }
        Some((manager, Err(why))) => Some(format!(
            "{}: cannot be read now ({why}); pgherd would start with [[nodes]] and keep trying",
            manager.as_str()
        )),
    };
    println!("{}: OK", path.display());
    println!("  listeners: {}", listeners.join(", "));
    println!("  nodes: {}", nodes.join(", "));
    if let Some(discovery) = discovery {
        println!("  discovery: {discovery}");
    }
    println!(
        "  {} database entries, {} users, pool_mode {}, auth_type {}",
        config.databases.len(),
        config.users.len(),
        format!("{:?}", g.pool_mode).to_lowercase(),
        g.auth_type.name()
    );
    println!("  notifications: {notified} destination(s)");
    Ok(())
}

/// `pgherd notify-test`: one line per destination, an error if any failed.
async fn notify_test(settings: &pgherd_config::Notify, message: &str) -> anyhow::Result<()> {
    let results = pgherd_notify::send_test(settings, message).await?;
    if results.is_empty() {
        anyhow::bail!("[notify] sets no webhook_urls and no telegram_bot_token/telegram_chat_id");
    }
    let mut failed = 0;
    for (destination, result) in &results {
        match result {
            Ok(()) => println!("{destination}: delivered"),
            Err(why) => {
                failed += 1;
                println!("{destination}: {why}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} destination(s) did not get it",
            results.len()
        );
    }
    Ok(())
}

/// The runtime for `worker_threads` (see config/pgherd.toml): one thread
/// runs everything on the current thread, as pgbouncer does, which costs
/// less per transaction than a work-stealing pool of threads.
fn runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        1 => {
            pgherd_proxy::counters::set_writer_threads(1);
            tokio::runtime::Builder::new_current_thread()
        }
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            let workers = match n {
                0 => std::thread::available_parallelism().map_or(1, |p| p.get()),
                n => n,
            };
            b.worker_threads(workers);
            // The workers, and the thread that runs `block_on`.
            pgherd_proxy::counters::set_writer_threads(workers + 1);
            b
        }
    };
    // Per-transaction time stamps use the loop's time (pgherd_proxy::clock).
    builder.on_thread_unpark(pgherd_proxy::clock::loop_woke);
    Ok(builder.enable_all().build()?)
}

async fn run(config: pgherd_config::Config, path: PathBuf) -> anyhow::Result<()> {
    let started = start(config).await?;
    let handle = started.proxy.handle();
    handle.set_config_file(path);
    tokio::spawn(reload_on_sighup(handle.clone()));
    tokio::spawn(pause_on_sigusr(handle));
    started.serve(shutdown_signal()).await;
    Ok(())
}

/// A pgherd whose sockets are bound, ready to serve.
pub(crate) struct Started {
    pub(crate) proxy: pgherd_proxy::Proxy,
    /// The admin port's address, if it has one.
    pub(crate) admin: Option<std::net::SocketAddr>,
    notifications: pgherd_notify::Notifications,
    notify_timeout: std::time::Duration,
}

impl Started {
    /// Serves until `shutdown`, drains, then gives the last notifications
    /// (`draining`, `stopped`) up to `[notify] timeout` to go out.
    pub(crate) async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        self.proxy.run(shutdown).await;
        self.notifications.finish(self.notify_timeout).await;
    }
}

/// Binds the proxy's listeners and the admin port, and starts the admin
/// server and the notifications.
pub(crate) async fn start(config: pgherd_config::Config) -> anyhow::Result<Started> {
    let addr = config.general.listen_addr;
    let admin_addr = config.general.admin_listen_addr;
    let notify = config.notify.clone();
    let proxy = pgherd_proxy::Proxy::bind(config)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let notifications = pgherd_notify::start(&notify, proxy.handle().cluster().subscribe())?;
    match notifications.destinations().count() {
        0 => {}
        n => tracing::info!("cluster changes are notified to {n} destination(s)"),
    }
    for (a, target) in proxy.listen_addrs()? {
        tracing::info!("pgherd listening on {a} (default target {target:?})");
    }
    for (path, target) in proxy.unix_sockets() {
        let path = path.display();
        tracing::info!("pgherd listening on unix socket {path} (default target {target:?})");
    }
    let admin = match admin_addr {
        Some(a) => {
            let admin = pgherd_admin::Admin::bind(a, proxy.handle())
                .await
                .with_context(|| format!("binding the admin port {a}"))?
                .with_notifications(notifications.clone());
            let bound = admin.local_addr()?;
            let scheme = admin.scheme();
            tracing::info!("admin HTTP (metrics, health, API) on {scheme}://{bound}/");
            tokio::spawn(admin.run(std::future::pending()));
            Some(bound)
        }
        None => None,
    };
    Ok(Started {
        proxy,
        admin,
        notifications,
        notify_timeout: notify.timeout,
    })
}

/// SIGHUP reloads the config file, as for pgbouncer (errors are logged and
/// change nothing).
async fn reload_on_sighup(handle: pgherd_proxy::ProxyHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP: {e}");
            return;
        }
    };
    while hup.recv().await.is_some() {
        if let Err(e) = handle.reload() {
            tracing::error!("reload on SIGHUP failed, configuration unchanged: {e}");
        }
    }
}

/// SIGUSR1 pauses every database and SIGUSR2 resumes them, as for
/// pgbouncer (the console's PAUSE and RESUME). A pause returns once no
/// client holds a server; SIGUSR2 can end it before that.
async fn pause_on_sigusr(handle: pgherd_proxy::ProxyHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut usr1, mut usr2) = match (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    ) {
        (Ok(usr1), Ok(usr2)) => (usr1, usr2),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("cannot listen for SIGUSR1/SIGUSR2: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            Some(()) = usr1.recv() => {
                tracing::info!("SIGUSR1: pausing all databases");
                let handle = handle.clone();
                tokio::spawn(async move {
                    match handle.pause(None).await {
                        Ok(()) => tracing::info!("all databases paused"),
                        Err(e) => tracing::warn!("pause on SIGUSR1 failed: {e}"),
                    }
                });
            }
            Some(()) = usr2.recv() => {
                match handle.resume(None) {
                    Ok(()) => tracing::info!("SIGUSR2: all databases resumed"),
                    Err(e) => tracing::warn!("resume on SIGUSR2 failed: {e}"),
                }
            }
            else => return,
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn worker_threads_choose_the_runtime() {
        let flavor = |n| super::runtime(n).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(0), RuntimeFlavor::MultiThread);
        let three = super::runtime(3).unwrap();
        assert_eq!(three.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(three.metrics().num_workers(), 3);
    }
}
