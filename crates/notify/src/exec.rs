//! `[notify] exec`: a program run for each event, as the setups pgherd
//! replaces ran shell scripts from repmgr's `event_notification_command`
//! or keepalived's `notify_master`.
//!
//! The event comes three ways, so a script written for any of them works:
//! as the webhook's JSON on standard input, as `PGHERD_*` environment
//! variables, and through repmgr's placeholders in the arguments (`%n`
//! node, `%e` event, `%s` success, always 1, `%t` time in Unix seconds,
//! `%d` details, `%%` a percent sign). The program runs on a blocking
//! thread, never on the proxy's; what it prints is logged; one that runs
//! past `[notify] timeout` is killed and counts as a failed delivery.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::Outcome;

/// The fields of one notification, read back from its JSON body.
struct Fields {
    event: String,
    node: String,
    message: String,
    instance: String,
    time: String,
}

impl Fields {
    fn of(body: &[u8]) -> Fields {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let text = |k: &str| json[k].as_str().unwrap_or_default().to_owned();
        Fields {
            event: text("event"),
            node: text("node"),
            message: text("message"),
            instance: text("instance"),
            time: json["time"].as_u64().unwrap_or_default().to_string(),
        }
    }
}

/// `arg` with repmgr's placeholders replaced.
fn expand(arg: &str, f: &Fields) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut chars = arg.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push_str(&f.node),
            Some('e') => out.push_str(&f.event),
            Some('s') => out.push('1'),
            Some('t') => out.push_str(&f.time),
            Some('d') => out.push_str(&f.message),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Runs `argv` for the notification `body` (its JSON), within `timeout`.
pub(crate) async fn run(label: &str, argv: &[String], body: &[u8], timeout: Duration) -> Outcome {
    let (label, argv, body) = (label.to_owned(), argv.to_vec(), body.to_vec());
    tokio::task::spawn_blocking(move || run_blocking(&label, &argv, &body, timeout))
        .await
        .unwrap_or_else(|e| Outcome::Failed(format!("the hook's thread failed: {e}"), None))
}

fn run_blocking(label: &str, argv: &[String], body: &[u8], timeout: Duration) -> Outcome {
    let Some((program, args)) = argv.split_first() else {
        return Outcome::Refused("no program".into());
    };
    let f = Fields::of(body);
    let spawned = Command::new(program)
        .args(args.iter().map(|a| expand(a, &f)))
        .env("PGHERD_EVENT", &f.event)
        .env("PGHERD_NODE", &f.node)
        .env("PGHERD_MESSAGE", &f.message)
        .env("PGHERD_INSTANCE", &f.instance)
        .env("PGHERD_TIME", &f.time)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own: a hook cut off at its timeout goes with
        // whatever it started (a `sleep`, a `curl`).
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        // Not there, not executable: another attempt will not change it.
        Err(e) => return Outcome::Refused(format!("cannot run {program}: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A program that does not read its input is not a failure.
        let _ = stdin.write_all(body);
    }
    // Its output is read beside the wait, so a chatty program cannot fill
    // a pipe and block.
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let out = std::thread::spawn(move || drain(out));
    let err = std::thread::spawn(move || drain(err));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let group = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
                let _ = killpg(group, Signal::SIGKILL);
                let _ = child.wait();
                break None;
            }
        }
    };
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    for line in stdout.lines().chain(stderr.lines()).take(20) {
        tracing::info!("{label}: {line}");
    }
    match status {
        Some(status) if status.success() => Outcome::Delivered,
        Some(status) => Outcome::Refused(format!("{program} ended with {status}")),
        None => Outcome::Failed(format!("{program} still ran after {timeout:?}"), None),
    }
}

/// Everything a pipe gives until it closes.
fn drain(pipe: Option<impl Read>) -> String {
    let mut text = String::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_string(&mut text);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Fields {
        Fields {
            event: "failover".into(),
            node: "pg1".into(),
            message: "pg0 -> pg1".into(),
            instance: "edge".into(),
            time: "1700000000".into(),
        }
    }

    #[test]
    fn repmgr_placeholders_are_replaced() {
        let f = fields();
        assert_eq!(expand("%n/%e/%s/%t", &f), "pg1/failover/1/1700000000");
        assert_eq!(expand("--details=%d", &f), "--details=pg0 -> pg1");
        assert_eq!(expand("100%% %x %", &f), "100% %x %");
    }
}
