//! `pgherd check -c FILE`: the example configuration passes with its
//! outline printed; a typo, a missing auth_hba_file, an unreadable TLS
//! file or notifications' CA file fails with the setting or file named and
//! exit status 1.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

fn check(config: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgherd"))
        .args(["check", "-c"])
        .arg(config)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/pgherd.toml");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn the_example_passes_and_is_outlined() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/pgherd.toml");
    let (ok, stdout, stderr) = check(&path);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("pgherd.toml: OK"), "{stdout}");
    assert!(
        stdout.contains("listeners: 0.0.0.0:5432 (primary), 0.0.0.0:5433 (replica)"),
        "{stdout}"
    );
    assert!(stdout.contains("pg1 10.1.1.195:5432"), "{stdout}");
    assert!(
        stdout.contains("notifications: 0 destination(s)"),
        "{stdout}"
    );
}

#[test]
fn errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            example().replace("max_client_conn = 100", "max_clent_conn = 100"),
            "max_clent_conn",
        ),
        (
            example().replace(
                "auth_type = \"scram-sha-256\"",
                "auth_type = \"hba\"\nauth_hba_file = \"/nonexistent/pg_hba.conf\"",
            ),
            "/nonexistent/pg_hba.conf",
        ),
        (
            example().replace(
                "client_tls_sslmode = \"disable\"",
                "client_tls_sslmode = \"require\"\nclient_tls_cert_file = \"/nonexistent/c.pem\"\n\
                 client_tls_key_file = \"/nonexistent/k.pem\"",
            ),
            "/nonexistent/",
        ),
        (
            example().replace(
                "webhook_urls = []\n",
                "webhook_urls = [\"https://hooks.example.com/x\"]\nca_file = \"/nonexistent/ca.pem\"\n",
            ),
            "/nonexistent/ca.pem",
        ),
    ];
    for (i, (text, expect)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (ok, _, stderr) = check(&path);
        assert!(!ok, "case {i} passed");
        assert!(stderr.contains(expect), "case {i}: {stderr}");
    }
}

/// Line `n` (1-based) of `text` where `needle` is.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn every_mistake_is_reported_once_in_one_run_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typos.toml");
    let typos = example()
        .replace("max_client_conn = 100", "max_clent_conn = 100")
        .replace("default_pool_size = 20", "default_pol_size = 20")
        .replacen("port = 5432", "portt = 5432", 1);
    std::fs::write(&path, &typos).unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    for key in ["max_clent_conn", "default_pol_size", "portt"] {
        let said = format!("line {}: unknown field `{key}`", line_of(&typos, key));
        assert_eq!(stderr.matches(&said).count(), 1, "{said} once: {stderr}");
    }

    let path = dir.path().join("values.toml");
    let values = example()
        .replace("listen_backlog = 1024", "listen_backlog = 0")
        .replace("default_pool_size = 20", "default_pool_size = 0");
    std::fs::write(&path, &values).unwrap();
    let (ok, _, stderr) = check(&path);
    assert!(!ok);
    for (key, why) in [
        ("listen_backlog", "0 is not between 1 and 65535"),
        ("default_pool_size", "must be at least 1"),
    ] {
        let said = format!(
            "line {}: pgherd.{key}: {why}",
            line_of(&values, &format!("{key} = 0"))
        );
        assert_eq!(stderr.matches(&said).count(), 1, "{said} once: {stderr}");
    }

    // One mistake: TOML's own message, with its pointer, once.
    let path = dir.path().join("one.toml");
    std::fs::write(
        &path,
        example().replace("max_client_conn", "max_clent_conn"),
    )
    .unwrap();
    let (_, _, stderr) = check(&path);
    assert_eq!(
        stderr.matches("unknown field `max_clent_conn`").count(),
        1,
        "{stderr}"
    );
}

/// `pgherd import` then `pgherd check`, as a user moving from pgbouncer
/// runs them: the output is accepted, the notes go to standard error.
#[test]
fn an_imported_pgbouncer_configuration_passes_the_check() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../import/tests/fixtures");
    let out = Command::new(env!("CARGO_BIN_EXE_pgherd"))
        .args(["import", "--pgbouncer"])
        .arg(fixtures.join("full-pgbouncer.ini"))
        .output()
        .unwrap();
    let (toml, notes) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{notes}");
    assert!(notes.contains("note: "), "{notes}");
    assert!(toml.contains("auth_file = \"userlist.txt\""), "{toml}");
    let dir = tempfile::tempdir().unwrap();
    let imported = dir.path().join("imported.toml");
    std::fs::write(&imported, toml.as_bytes()).unwrap();
    // Relative files (the auth_file) are where the pgbouncer.ini was.
    let checked = Command::new(env!("CARGO_BIN_EXE_pgherd"))
        .args(["check", "-c"])
        .arg(&imported)
        .current_dir(&fixtures)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(said.contains("imported.toml: OK"), "{said}");
}

/// A file import cannot read, or a pgbouncer.ini it cannot parse: exit
/// status 1, the file and the reason named, nothing on standard output.
#[test]
fn import_names_what_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.ini");
    let broken = dir.path().join("broken.ini");
    std::fs::write(&broken, "[pgbouncer\nlisten_port = 6432\n").unwrap();
    let included = dir.path().join("included.ini");
    std::fs::write(&included, "[databases]\n%include nowhere.ini\n").unwrap();
    for (file, expect) in [
        (&missing, "missing.ini".to_owned()),
        (&broken, "without `]`".to_owned()),
        (&included, "%include nowhere.ini".to_owned()),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_pgherd"))
            .args(["import", "--pgbouncer"])
            .arg(file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}", file.display());
        assert!(out.stdout.is_empty(), "{}", file.display());
        assert!(stderr.contains(&expect), "{expect}: {stderr}");
    }
}
