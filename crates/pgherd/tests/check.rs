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
