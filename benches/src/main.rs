//! pgherd against pgbouncer and a direct connection, in one run, as ratios.
//!
//! ```text
//! cargo build --release && ./target/release/pgherd-bench          # full run
//! cargo build --release && ./target/release/pgherd-bench --smoke  # seconds, for CI
//! ./target/release/pgherd-bench --clients 16 --modes extended --reps 3 --seconds 5
//! ```
//!
//! One local cluster (primary + 2 standbys, from the installed PostgreSQL),
//! pgbench data, pgbouncer (Debian's, `apt-get install pgbouncer`) and pgherd
//! (the release binary next to this one) with the same pool mode and size.
//! Every workload runs for each target in turn — direct, pgbouncer, pgherd,
//! then pgherd, pgbouncer, direct, and so on — so a noisy neighbour hits all
//! three alike and no target always runs in the same place in the round;
//! the median of the repetitions is reported. Workloads: pgbench `-S` in each protocol mode
//! at each client count, tpcb-like (read-write) at 16 clients, reads over
//! the standbys (pgherd only), and idle logged-in clients. For the proxies
//! the CPU time they used (the scheduler's exact count, and the sampled
//! user-space part: see [`cpu_seconds`]) is divided by the transactions
//! pgbench completed;
//! p99 latency comes from pgbench's log of a 5% sample of transactions, and
//! peak RSS from `VmHWM`. The host's load average is printed with each run
//! so a disturbed run can be spotted and rejected.
//!
//! Machines are shared and noisy: nothing here asserts a threshold. The
//! output is a table to read and to paste into `benches/RESULTS.md`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use pgherd_localpg::{find_pgbouncer, ClusterSpec, LocalCluster, LocalPgbouncer, PgBinaries};

const USER: &str = "bench";
const PASSWORD: &str = "bench";
const POOL_SIZE: usize = 20;

const USAGE: &str = "usage: pgherd-bench [--smoke] [--clients 1,16,64,256] \
[--modes simple,extended,prepared] [--seconds 10] [--reps 3] [--idle 1000,10000] [--tpcb 16]";

/// One run's settings.
struct Plan {
    scale: u32,
    seconds: u32,
    reps: usize,
    clients: Vec<u32>,
    modes: Vec<&'static str>,
    /// Clients of the tpcb-like (read-write) workload; 0: not run.
    tpcb_clients: u32,
    /// Idle clients held open at once, checked at each of these counts
    /// (ascending); empty: no idle-clients table.
    idle_clients: Vec<usize>,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            scale: 10,
            seconds: 10,
            reps: 3,
            clients: vec![1, 16, 64, 256],
            modes: vec!["simple", "extended", "prepared"],
            tpcb_clients: 16,
            idle_clients: vec![1000, 10_000],
        }
    }

    /// `--clients 1,16 --modes simple,extended --seconds 5 --reps 3 --idle
    /// 1000,10000 --tpcb 16` override the plan, to rerun one part (`--tpcb
    /// 0`: no read-write workload; `--idle 0`: no idle clients).
    fn override_from(&mut self, args: &[String]) -> anyhow::Result<()> {
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().context(format!("{flag} needs a value"));
            match flag.as_str() {
                "--smoke" => {}
                "--clients" => {
                    self.clients = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?
                }
                "--modes" => {
                    self.modes = value()?
                        .split(',')
                        .map(|m| match m {
                            "simple" => Ok("simple"),
                            "extended" => Ok("extended"),
                            "prepared" => Ok("prepared"),
                            other => bail!("unknown mode {other}"),
                        })
                        .collect::<Result<_, _>>()?
                }
                "--seconds" => self.seconds = value()?.parse()?,
                "--reps" => self.reps = value()?.parse()?,
                "--idle" => {
                    let mut counts = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<Vec<usize>, _>>()?;
                    counts.retain(|&n| n > 0);
                    counts.sort_unstable();
                    self.idle_clients = counts;
                }
                "--tpcb" => self.tpcb_clients = value()?.parse()?,
                other => bail!("unknown argument {other}\n\n{USAGE}"),
            }
        }
        Ok(())
    }

    fn smoke() -> Plan {
        Plan {
            scale: 1,
            seconds: 2,
            reps: 1,
            clients: vec![16],
            modes: vec!["simple"],
            tpcb_clients: 0,
            idle_clients: vec![100],
        }
    }
}

/// One pgbench workload of the comparison.
struct Workload {
    label: String,
    /// pgbench's arguments besides the clients, threads and duration.
    args: Vec<&'static str>,
    clients: u32,
    /// Whether pgbouncer can run it.
    with_pgbouncer: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Direct,
    Pgbouncer,
    Pgherd,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Pgbouncer => "pgbouncer",
            Target::Pgherd => "pgherd",
        }
    }
}

/// What one pgbench run measured.
#[derive(Clone, Copy, Debug, Default)]
struct Measure {
    tps: f64,
    latency_ms: f64,
    /// 99th percentile of a 5% sample of transaction latencies.
    p99_ms: f64,
    failed: f64,
    /// Proxy CPU seconds per transaction, in microseconds (0 for direct).
    cpu_us_per_tx: f64,
    /// The user-space part of it (the rest is the kernel's, for the
    /// proxy's system calls).
    user_us_per_tx: f64,
    load: f64,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    let mut plan = if smoke { Plan::smoke() } else { Plan::full() };
    plan.override_from(&args)?;
    let bins = PgBinaries::find()?;
    let pgbouncer = find_pgbouncer();
    let pgherd_bin = sibling("pgherd")?;

    eprintln!("starting a primary and 2 standbys...");
    let cluster = LocalCluster::start(ClusterSpec {
        extra_conf: vec!["max_connections = 400".into()],
        ..ClusterSpec::default()
    })?;
    cluster.sql(
        0,
        &format!("CREATE ROLE {USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'"),
    )?;
    cluster.sql(0, &format!("CREATE DATABASE {USER} OWNER {USER}"))?;
    let primary = cluster.node(0).port;
    pgbench(&bins, primary, &["-i", "-q", "-s", &plan.scale.to_string()])?;
    for i in 1..cluster.nodes().len() {
        cluster.wait_caught_up(0, i)?;
    }

    let work = tempdir()?;
    let pgherd_port = free_port()?;
    let pgherd_admin = free_port()?;
    let mut pgherd = spawn_pgherd(
        &pgherd_bin,
        &cluster,
        work.path(),
        pgherd_port,
        pgherd_admin,
    )?;
    let bouncer = match &pgbouncer {
        Some(path) => Some(spawn_pgbouncer(path, &cluster)?),
        None => {
            eprintln!(
                "pgbouncer not found (apt-get install -y pgbouncer): comparing with direct only"
            );
            None
        }
    };
    wait_ready(&bins, pgherd_port)?;
    if let Some(b) = &bouncer {
        wait_ready(&bins, b.port)?;
    }

    println!(
        "# pgherd benchmark{}\n",
        if smoke { " (smoke)" } else { "" }
    );
    println!("{}", environment(&bins, pgbouncer.as_deref()));
    println!(
        "pool_mode = transaction, pool size {POOL_SIZE}, pgbench -S (select only) unless it says tpcb-like, scale {}, {} s per run, {} interleaved run(s): TPS and latencies from the run with the median TPS, CPU the median over the runs, TPS and CPU vs pgbouncer the medians of the runs' ratios (each pair back to back) with their range; p99 from a 5% sample of transactions\n",
        plan.scale, plan.seconds, plan.reps
    );
    println!("| workload | target | TPS | latency ms | p99 ms | failed | proxy CPU µs/tx | of it user | load | TPS vs pgbouncer | CPU vs pgbouncer | TPS vs direct |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");

    // CPU and memory are read from these PIDs: they must be the proxies'
    // own (`setsid` execs them in place), and each its own session.
    if let Some(b) = &bouncer {
        check_daemon(b.pid(), "pgbouncer")?;
    }
    check_daemon(pgherd.id(), "pgherd")?;

    let seconds = plan.seconds.to_string();
    let mut targets = vec![(Target::Direct, primary, None)];
    if let Some(b) = &bouncer {
        targets.push((Target::Pgbouncer, b.port, Some(b.pid())));
    }
    targets.push((Target::Pgherd, pgherd_port, Some(pgherd.id())));

    let mut workloads: Vec<Workload> = Vec::new();
    for &mode in &plan.modes {
        for &clients in &plan.clients {
            workloads.push(Workload {
                label: format!("-S -M {mode} -c {clients}"),
                args: vec!["-S", "-M", mode],
                clients,
                // pgbouncer 1.18 has no prepared statement support in
                // transaction mode: -M prepared compares pgherd with direct.
                with_pgbouncer: mode != "prepared",
            });
        }
    }
    if plan.tpcb_clients > 0 {
        workloads.push(Workload {
            label: format!("tpcb-like -M simple -c {}", plan.tpcb_clients),
            args: vec!["-M", "simple"],
            clients: plan.tpcb_clients,
            with_pgbouncer: true,
        });
    }
    for workload in &workloads {
        let targets: Vec<(Target, u16, Option<u32>)> = targets
            .iter()
            .copied()
            .filter(|(t, _, _)| workload.with_pgbouncer || *t != Target::Pgbouncer)
            .collect();
        let clients = workload.clients.to_string();
        let mut results: Vec<Vec<Measure>> = vec![Vec::new(); targets.len()];
        for rep in 0..plan.reps {
            for i in run_order(rep, targets.len()) {
                let (_, port, pid) = targets[i];
                let mut run = workload.args.clone();
                run.extend(["-c", &clients, "-j", "2", "-T", &seconds]);
                results[i].push(run_pgbench(&bins, port, pid, &run)?);
            }
        }
        report(&workload.label, &targets, &results);
    }
    let peak = |pid: Option<u32>| pid.map_or(Ok(0), |p| status_kib(p, "VmHWM:"));
    println!(
        "\nPeak RSS (VmHWM) after these workloads: pgbouncer {} KiB, pgherd {} KiB.",
        peak(bouncer.as_ref().map(|b| b.pid()))?,
        peak(Some(pgherd.id()))?
    );

    // Reads spread over the standbys: pgherd only (pgbouncer cannot route).
    println!("\nReads over standbys (pgherd `target = \"replica\"` database `bench_ro`):\n");
    println!("| workload | TPS | latency ms | p99 ms | failed | proxy CPU µs/tx |");
    println!("|---|---|---|---|---|---|");
    for &clients in plan.clients.iter().filter(|&&c| c >= 16) {
        let args = [
            "-S",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &plan.seconds.to_string(),
        ];
        let m = run_pgbench_db(&bins, pgherd_port, Some(pgherd.id()), &args, "bench_ro")?;
        println!(
            "| -S -c {clients} | {:.0} | {:.3} | {:.3} | {:.0} | {:.1} |",
            m.tps, m.latency_ms, m.p99_ms, m.failed, m.cpu_us_per_tx
        );
    }

    if !plan.idle_clients.is_empty() {
        idle_report(&targets, &plan.idle_clients)?;
    }

    stop(&mut pgherd);
    drop(bouncer);
    Ok(())
}

/// The order in which repetition `rep` runs the `n` targets: first to last,
/// then last to first (A B C, C B A, A B C...). In a fixed order one target
/// would always run right after the same other one, and in the same part
/// of each round: whatever that favours (a drift of the machine's load
/// within the round, caches another target left warm) would favour it on
/// every repetition instead of cancelling out.
fn run_order(rep: usize, n: usize) -> Box<dyn Iterator<Item = usize>> {
    if rep.is_multiple_of(2) {
        Box::new(0..n)
    } else {
        Box::new((0..n).rev())
    }
}

/// The idle-clients table: RSS per logged-in client doing nothing, with
/// `counts` clients open at once (each count adds to the clients already
/// open, and is measured against the RSS before the first).
fn idle_report(targets: &[(Target, u16, Option<u32>)], counts: &[usize]) -> anyhow::Result<()> {
    println!("\nIdle clients (logged in, doing nothing):\n");
    println!("| target | clients | RSS before | RSS after | per client |");
    println!("|---|---|---|---|---|");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for (target, port, pid) in targets.iter().skip(1) {
        let Some(pid) = pid else { continue };
        let (before, afters) = rt.block_on(idle_clients(*port, *pid, counts))?;
        for (n, after) in counts.iter().zip(afters) {
            println!(
                "| {} | {} | {} KiB | {} KiB | {:.2} KiB |",
                target.name(),
                n,
                before,
                after,
                (after.saturating_sub(before)) as f64 / *n as f64
            );
        }
    }
    Ok(())
}

fn report(workload: &str, targets: &[(Target, u16, Option<u32>)], results: &[Vec<Measure>]) {
    let medians: Vec<Measure> = results
        .iter()
        .map(|runs| Measure {
            // CPU: the median over the runs, not the median-TPS run's.
            cpu_us_per_tx: median_of(runs.iter().map(|m| m.cpu_us_per_tx)),
            user_us_per_tx: median_of(runs.iter().map(|m| m.user_us_per_tx)),
            ..median(runs)
        })
        .collect();
    let runs_of = |t: Target| {
        targets
            .iter()
            .position(|(x, _, _)| *x == t)
            .map(|i| &results[i])
    };
    // pgherd over pgbouncer, run by run: each pair ran back to back, so
    // what the machine was doing weighs on both alike.
    let paired = |figure: fn(&Measure) -> f64| -> Vec<f64> {
        match (runs_of(Target::Pgherd), runs_of(Target::Pgbouncer)) {
            (Some(h), Some(b)) => h
                .iter()
                .zip(b)
                .filter(|(_, b)| figure(b) > 0.0)
                .map(|(h, b)| figure(h) / figure(b))
                .collect(),
            _ => Vec::new(),
        }
    };
    let cpu_ratios = paired(|m| m.cpu_us_per_tx);
    let tps_ratios = paired(|m| m.tps);
    let find = |t: Target| {
        targets
            .iter()
            .position(|(x, _, _)| *x == t)
            .map(|i| medians[i])
    };
    let direct = find(Target::Direct);
    for ((target, _, _), m) in targets.iter().zip(&medians) {
        let ratio = |a: f64, b: Option<f64>| match b {
            Some(b) if b > 0.0 && *target != Target::Direct => format!("{:.2}", a / b),
            _ => "—".into(),
        };
        let (cpu, user) = if *target == Target::Direct {
            ("—".into(), "—".into())
        } else {
            (
                format!("{:.1}", m.cpu_us_per_tx),
                format!("{:.1}", m.user_us_per_tx),
            )
        };
        println!(
            "| {workload} | {} | {:.0} | {:.3} | {:.3} | {:.0} | {cpu} | {user} | {:.2} | {} | {} | {} |",
            target.name(),
            m.tps,
            m.latency_ms,
            m.p99_ms,
            m.failed,
            m.load,
            if *target == Target::Pgherd && !tps_ratios.is_empty() {
                ratio_range(&tps_ratios)
            } else {
                "—".into()
            },
            if *target == Target::Pgherd && !cpu_ratios.is_empty() {
                ratio_range(&cpu_ratios)
            } else {
                "—".into()
            },
            ratio(m.tps, direct.map(|d| d.tps)),
        );
    }
}

/// The median of some figures (NaN when there are none).
fn median_of(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// "median (lowest-highest)" of per-run ratios.
fn ratio_range(ratios: &[f64]) -> String {
    let median = median_of(ratios.iter().copied());
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    if ratios.len() == 1 {
        format!("{median:.2}")
    } else {
        format!("{median:.2} ({lo:.2}-{hi:.2})")
    }
}

/// The run with the median TPS.
fn median(runs: &[Measure]) -> Measure {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.tps.total_cmp(&b.tps));
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

fn run_pgbench(
    bins: &PgBinaries,
    port: u16,
    proxy: Option<u32>,
    args: &[&str],
) -> anyhow::Result<Measure> {
    run_pgbench_db(bins, port, proxy, args, USER)
}

fn run_pgbench_db(
    bins: &PgBinaries,
    port: u16,
    proxy: Option<u32>,
    args: &[&str],
    db: &str,
) -> anyhow::Result<Measure> {
    let load = load_average();
    let logs = tempdir()?;
    let cpu_before = proxy.map(cpu_seconds).transpose()?;
    let out = Command::new(bins.path("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
        .args(args)
        .args(["-l", "--sampling-rate", "0.05", "--log-prefix"])
        .arg(logs.path().join("tx"))
        .arg(db)
        .env("PGPASSWORD", PASSWORD)
        .output()?;
    let cpu_after = proxy.map(cpu_seconds).transpose()?;
    let report = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench {args:?} on port {port} failed:\n{report}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let figure = |label: &str| -> f64 {
        report
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let transactions = figure("number of transactions actually processed: ");
    let per_tx = |f: fn(&CpuTimes) -> f64| match (&cpu_before, &cpu_after) {
        (Some(b), Some(a)) if transactions > 0.0 => (f(a) - f(b)) / transactions * 1e6,
        _ => 0.0,
    };
    Ok(Measure {
        tps: figure("tps = "),
        latency_ms: figure("latency average = "),
        p99_ms: p99_ms(logs.path())?,
        failed: figure("number of failed transactions: "),
        cpu_us_per_tx: per_tx(|t| t.on_cpu),
        user_us_per_tx: per_tx(|t| t.user),
        load,
    })
}

/// The 99th percentile latency in pgbench's transaction logs in `dir`
/// (`client transaction latency_us script epoch us` per line), in ms.
fn p99_ms(dir: &Path) -> anyhow::Result<f64> {
    let mut latencies: Vec<u64> = Vec::new();
    for file in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(file?.path())?;
        latencies.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
    }
    if latencies.is_empty() {
        return Ok(f64::NAN);
    }
    latencies.sort_unstable();
    let at = (latencies.len() * 99).div_ceil(100).saturating_sub(1);
    Ok(latencies[at] as f64 / 1000.0)
}

/// CPU time a process used, in seconds.
struct CpuTimes {
    /// Time on a CPU, as the scheduler counts it (exact).
    on_cpu: f64,
    /// utime: sampled, see [`cpu_seconds`].
    user: f64,
}

/// CPU time of a process, its threads together. The total is the
/// scheduler's own count (`/proc/PID/task/*/schedstat`, nanoseconds on a
/// CPU): utime + stime from `/proc/PID/stat` are sampled at each timer
/// tick (4 ms here, `CONFIG_TICK_CPU_ACCOUNTING`); for a proxy that runs
/// in bursts of microseconds that is a count of random samples, a few
/// hundred per 5 s run at 16 clients (±4-5%). The user part has only the
/// sampled figure (utime), a few dozen samples (±15%).
fn cpu_seconds(pid: u32) -> anyhow::Result<CpuTimes> {
    let mut on_cpu_ns: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread that ended since the listing has nothing to add.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        on_cpu_ns += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .context("malformed schedstat")?;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("malformed stat")? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the comm field: state is field 3, utime 14 (1-based).
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(CpuTimes {
        on_cpu: on_cpu_ns as f64 / 1e9,
        user: utime / ticks,
    })
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `kB` line of `/proc/PID/status` (`VmRSS:`, `VmHWM:`).
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Opens idle, logged-in clients to the proxy on `port`, as many as each
/// of `counts` in turn, and returns its RSS before and at each count.
async fn idle_clients(port: u16, pid: u32, counts: &[usize]) -> anyhow::Result<(u64, Vec<u64>)> {
    let before = rss_kib(pid)?;
    let mut afters = Vec::with_capacity(counts.len());
    let mut clients = Vec::with_capacity(counts.last().copied().unwrap_or(0));
    for &n in counts {
        open_idle(port, &mut clients, n).await?;
        // One query on one client: the proxy is live and has settled.
        if let Some(first) = clients.first() {
            first.simple_query("SELECT 1").await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        afters.push(rss_kib(pid)?);
    }
    drop(clients);
    Ok((before, afters))
}

/// Opens logged-in clients to `port` until `clients` holds `n`.
async fn open_idle(
    port: u16,
    clients: &mut Vec<tokio_postgres::Client>,
    n: usize,
) -> anyhow::Result<()> {
    while clients.len() < n {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user(USER)
            .password(PASSWORD)
            .dbname(USER)
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(conn);
        clients.push(client);
    }
    Ok(())
}

fn pgbench(bins: &PgBinaries, port: u16, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(bins.path("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
        .args(args)
        .arg(USER)
        .env("PGPASSWORD", PASSWORD)
        .output()?;
    if !out.status.success() {
        bail!("pgbench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn wait_ready(bins: &PgBinaries, port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        let ok = Command::new(bins.path("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                USER,
                "-Atc",
                "SELECT 1",
                USER,
            ])
            .env("PGPASSWORD", PASSWORD)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        if ok {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing answers on port {port}")
}

/// Checks that `pid` runs `name` and leads a session of its own.
fn check_daemon(pid: u32, name: &str) -> anyhow::Result<()> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After "pid (comm) ": state, ppid, pgrp, session.
    let session = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(3))
        .and_then(|s| s.parse::<u32>().ok());
    if comm.trim() != name || session != Some(pid) {
        bail!(
            "PID {pid} is {:?} in session {session:?}, not {name} leading its own",
            comm.trim()
        );
    }
    Ok(())
}

fn spawn_pgherd(
    bin: &Path,
    cluster: &LocalCluster,
    dir: &Path,
    port: u16,
    admin: u16,
) -> anyhow::Result<Child> {
    let mut config = format!(
        "[pgherd]\nlisten_addr = \"127.0.0.1:{port}\"\nadmin_listen_addr = \"127.0.0.1:{admin}\"\n\
         pool_mode = \"transaction\"\ndefault_pool_size = {POOL_SIZE}\nmax_client_conn = 20000\n\
         probe_user = \"postgres\"\nprobe_password = \"{}\"\n",
        cluster.superuser_password()
    );
    for n in cluster.nodes() {
        config.push_str(&format!(
            "\n[[nodes]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n",
            n.name, n.port
        ));
    }
    config.push_str(&format!(
        "\n[databases]\n{USER} = {{}}\nbench_ro = {{ dbname = \"{USER}\", target = \"replica\" }}\n\n[users]\n{USER} = {{ password = \"{PASSWORD}\" }}\n"
    ));
    let path = dir.join("pgherd.toml");
    std::fs::write(&path, config)?;
    // In a session of its own, like pgbouncer (see `LocalPgbouncer::start`).
    Ok(Command::new("setsid")
        .arg(bin)
        .args(["run", "-c"])
        .arg(&path)
        .env("PGHERD_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()?)
}

/// pgbouncer in transaction mode with pgherd's pool size, in front of the primary.
fn spawn_pgbouncer(bin: &Path, cluster: &LocalCluster) -> anyhow::Result<LocalPgbouncer> {
    let primary = cluster.node(0).port;
    Ok(LocalPgbouncer::start(
        bin,
        &format!("{USER} = host=127.0.0.1 port={primary} dbname={USER}"),
        &format!(
            "auth_type = scram-sha-256\npool_mode = transaction\n\
             default_pool_size = {POOL_SIZE}\nmax_client_conn = 20000"
        ),
        &format!("\"{USER}\" \"{PASSWORD}\"\n"),
    )?)
}

fn stop(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// A binary next to this one (both built by `cargo build --release`).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found: build everything first (cargo build --release)",
            path.display()
        );
    }
    Ok(path)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn tempdir() -> anyhow::Result<TempDir> {
    static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("pgherd-bench-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    Ok(TempDir(path))
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn environment(bins: &PgBinaries, pgbouncer: Option<&Path>) -> String {
    let version = |cmd: &Path, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    format!(
        "- machine: {cpus} CPUs ({model})\n- {}\n- {}\n- pgherd {}\n",
        version(&bins.path("postgres"), "--version"),
        pgbouncer
            .map(|p| version(p, "--version"))
            .unwrap_or_else(|| "pgbouncer: not installed".into()),
        env!("CARGO_PKG_VERSION"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetitions_alternate_the_order_of_targets() {
        let order = |rep| run_order(rep, 3).collect::<Vec<_>>();
        assert_eq!(order(0), [0, 1, 2]);
        assert_eq!(order(1), [2, 1, 0]);
        assert_eq!(order(2), [0, 1, 2]);
    }
}
