//! `pgherd import` on the seed article's own files and on a pgbouncer.ini
//! with most options: the output is a configuration pgherd accepts, and
//! every pgbouncer setting is either in it or in the notes.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use pgherd_import::{import, Imported, Sources};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Reads a `%include`d file or the auth_file as the CLI does: relative to
/// the pgbouncer.ini's directory.
/// Absolute paths (the seed's /etc/pgbouncer/...) are not read: the test
/// must not depend on the machine's files.
fn reader(path: &str) -> Result<String, String> {
    let path = Path::new(path);
    let inside = path.strip_prefix(fixtures()).unwrap_or(path);
    if inside.is_absolute() {
        return Err("not among the test's fixtures".into());
    }
    std::fs::read_to_string(fixtures().join(inside)).map_err(|e| e.to_string())
}

fn run(pgbouncer: &str, haproxy: &[(&str, &str)]) -> Imported {
    import(&Sources {
        pgbouncer: ("pgbouncer.ini", pgbouncer),
        read: &reader,
        haproxy: haproxy.to_vec(),
    })
    .unwrap()
}

#[test]
fn the_seed_becomes_one_pgherd_with_both_ports_and_every_node() {
    let (rw, ro) = (read("seed-haproxy-rw.cfg"), read("seed-haproxy-ro.cfg"));
    let out = run(
        &read("seed-pgbouncer.ini"),
        &[("haproxy-rw.cfg", &rw), ("haproxy-ro.cfg", &ro)],
    );
    let t = &out.toml;
    assert!(t.contains("listen_addr = \"0.0.0.0:5432\""), "{t}");
    assert!(
        t.contains("addr = \"0.0.0.0:5433\"\ntarget = \"replica\""),
        "{t}"
    );
    // haproxy's hosts, with PostgreSQL's port from pgbouncer (not 6432).
    for (name, host) in [
        ("pghost195", "10.1.1.195"),
        ("pghost196", "10.1.1.196"),
        ("pghost197", "10.1.1.197"),
        ("pghost198", "10.1.1.198"),
    ] {
        let node = format!("name = \"{name}\"\nhost = \"{host}\"\nport = 5433");
        assert!(t.contains(&node), "{node}\n{t}");
    }
    assert!(!t.contains("6432"), "{t}");
    for line in [
        "pool_mode = \"session\"",
        "auth_type = \"trust\"",
        "max_client_conn = 500",
        "default_pool_size = 30",
        "probe_interval = 2",
        "probe_rise = 3",
        "probe_fall = 2",
        "\"web1\" = { dbname = \"web1\" }",
    ] {
        assert!(t.contains(line), "{line}\n{t}");
    }
    let notes = out.notes.join("\n");
    for said in [
        "logfile: not mapped",
        "pidfile: not mapped",
        "haproxy pointed at the pgbouncer on 10.1.1.195:6432",
        "stats page",
        "auth_file /etc/pgbouncer/userlist.txt: could not be read here",
        "the read-only frontend also listened on 5432",
    ] {
        assert!(notes.contains(said), "{said}\n{notes}");
    }
    pgherd_config::Config::parse(t).unwrap_or_else(|e| panic!("{e}\n{t}"));
}

#[test]
fn every_pgbouncer_setting_is_mapped_or_explained() {
    let ini = read("full-pgbouncer.ini").replace(
        "auth_file = userlist.txt",
        &format!("auth_file = {}", fixtures().join("userlist.txt").display()),
    );
    let out = run(&ini, &[]);
    let notes = out.notes.join("\n");
    for line in ini.lines() {
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if line.starts_with(';') || line.starts_with('%') {
            continue;
        }
        let mapped =
            out.toml.contains(&format!("{key} =")) || out.toml.contains(&format!("\"{key}\" ="));
        let explained = notes.contains(&format!(": {key}"));
        let handled = matches!(key, "listen_addr" | "listen_port");
        assert!(
            mapped || explained || handled,
            "{key}\n{}\n{notes}",
            out.toml
        );
    }
    for line in [
        "tcp_user_timeout = 30",
        "admin_users = [\"admin\", \"dba\"]",
        "\"app\" = { dbname = \"app\", pool_size = 40, reserve_pool = 5, pool_mode = \"transaction\" }",
        "password = \"s3cret pw\"",
        "\"archive\" = { dbname = \"archive\", min_pool_size = 1 }",
        "\"batch\" = { password = \"batchpassword\", pool_mode = \"session\", max_user_connections = 4 }",
        "listen_addr = \"0.0.0.0:6432\"",
        "peer_id = 1",
        "2 = { host = \"10.0.0.12\", port = 6432 }",
    ] {
        assert!(out.toml.contains(line), "{line}\n{}", out.toml);
    }
    assert!(notes.contains("server_round_robin: not mapped"), "{notes}");
    assert!(notes.contains("log_pooler_errors: not mapped"), "{notes}");
    pgherd_config::Config::parse(&out.toml).unwrap_or_else(|e| panic!("{e}\n{}", out.toml));
}
