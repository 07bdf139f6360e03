//! The HTML stats page at `/`: the cluster at a glance, in the spirit of
//! haproxy's stats page. One self-contained document (inline CSS, no
//! scripts, no external assets, so it works offline and behind any proxy),
//! refreshed by the browser every few seconds, readable on a phone.

use pgherd_cluster::Role;
use pgherd_proxy::ProxyHandle;

use crate::events::EventLog;

/// Seconds between browser refreshes.
const REFRESH_SECONDS: u32 = 5;

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2430}
header{background:#1d2430;color:#fff;padding:12px 16px;display:flex;flex-wrap:wrap;gap:8px 24px;align-items:baseline}
header h1{font-size:18px;margin:0}
main{padding:12px 16px;max-width:1200px}
section{background:#fff;border-radius:6px;box-shadow:0 1px 2px #0002;margin:0 0 16px;padding:8px 12px;overflow-x:auto}
h2{font-size:15px;margin:6px 0 8px}
table{border-collapse:collapse;width:100%;white-space:nowrap}
th,td{text-align:left;padding:5px 10px 5px 0;border-bottom:1px solid #e3e6ea}
th{font-weight:600;color:#56606e;font-size:12px;text-transform:uppercase;letter-spacing:.03em}
th.n,td.n{text-align:right;font-variant-numeric:tabular-nums}
.b{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
.primary{background:#1f7a3f}.standby{background:#2a62b8}.fenced{background:#b3261e}
.down{background:#6b7280}.unknown{background:#9aa3ad}.warn{background:#c77700}
.ok{color:#1f7a3f}.bad{color:#b3261e}.muted{color:#6b7280}
";

/// Renders the page.
pub(crate) fn render(
    proxy: &ProxyHandle,
    events: &EventLog,
    notifications: &pgherd_notify::Notifications,
) -> String {
    let topology = proxy.topology();
    let config = proxy.config();
    let mut h = String::with_capacity(8 * 1024);
    h.push_str("<!doctype html><html lang=en><head><meta charset=utf-8>");
    h.push_str("<meta name=viewport content=\"width=device-width,initial-scale=1\">");
    h.push_str(&format!(
        "<meta http-equiv=refresh content={REFRESH_SECONDS}><title>pgherd</title><style>{STYLE}</style></head><body>"
    ));
    let primary = match topology.primary {
        Some(p) => format!(
            "<span class=ok>primary: {}</span>",
            esc(&topology.nodes[p].name)
        ),
        None => "<span class=bad>no primary</span>".into(),
    };
    let split = if topology.split_brain {
        " <span class=\"b fenced\">split brain</span>"
    } else {
        ""
    };
    h.push_str(&format!(
        "<header><h1>pgherd</h1><span>{primary}{split}</span><span>{} clients / max {}</span>\
         <span class=muted>refreshes every {REFRESH_SECONDS} s</span></header><main>",
        proxy.client_count(),
        config.general.max_client_conn
    ));

    h.push_str("<section><h2>Nodes</h2><table><tr><th>node</th><th>address</th><th>state</th>\
                <th class=n>timeline</th><th class=n>lag</th><th>reads</th><th class=n>probe</th><th>last error</th></tr>");
    for (i, n) in topology.members() {
        let c = &n.node;
        let (class, label) = match (n.up, n.role, n.fenced) {
            (false, _, _) => ("down", "down"),
            (true, Role::Primary, true) => ("fenced", "fenced"),
            (true, Role::Primary, false) => ("primary", "primary"),
            (true, Role::Standby, _) => ("standby", "standby"),
            (true, Role::Unknown, _) => ("unknown", "unknown"),
        };
        let lag = match (n.lag_bytes, n.lag_seconds) {
            (Some(b), Some(s)) => format!("{} · {s:.1} s", bytes(b)),
            (Some(b), None) => bytes(b),
            (None, Some(s)) => format!("{s:.1} s"),
            (None, None) => "—".into(),
        };
        let reads = if proxy.node_drained(i) {
            "<span class=\"b warn\" title=\"drained by an administrator\">drained</span>".to_owned()
        } else if n.serves_reads() {
            "<span class=ok>yes</span>".to_owned()
        } else if n.role == Role::Standby && n.up {
            let why = n.describe();
            format!("<span class=\"b warn\" title=\"{}\">no</span>", esc(&why))
        } else {
            "<span class=muted>—</span>".to_owned()
        };
        let probe = n
            .last_sample
            .as_ref()
            .map(|s| format!("{:.1} ms", s.duration.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "—".into());
        h.push_str(&format!(
            "<tr><td><b>{}</b>{}</td><td>{}:{}</td><td><span class=\"b {class}\">{label}</span></td>\
             <td class=n>{}</td><td class=n>{}</td><td>{reads}</td><td class=n>{probe}</td><td class=muted>{}</td></tr>",
            esc(&n.name),
            match n.source {
                pgherd_cluster::Source::Config => String::new(),
                source => format!(" <span class=muted>({})</span>", source.as_str()),
            },
            esc(&c.host),
            c.port,
            n.timeline.map(|t| t.to_string()).unwrap_or_else(|| "—".into()),
            esc(&lag),
            esc(n.last_error.as_deref().unwrap_or("")),
        ));
    }
    h.push_str("</table></section>");

    h.push_str("<section><h2>Pools</h2><table><tr><th>database</th><th>user</th><th>node</th>\
                <th class=n>size</th><th class=n>servers</th><th class=n>active</th><th class=n>idle</th><th class=n>waiting</th></tr>");
    let pools = proxy.pools();
    if pools.is_empty() {
        h.push_str("<tr><td colspan=8 class=muted>no pools yet: they appear with the first client</td></tr>");
    }
    for p in pools {
        let waiting = if p.status.waiting > 0 {
            format!("<span class=bad>{}</span>", p.status.waiting)
        } else {
            "0".into()
        };
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td>\
             <td class=n>{}</td><td class=n>{}</td><td class=n>{waiting}</td></tr>",
            esc(&p.database),
            esc(&p.user),
            esc(&p.node),
            p.status.max_size,
            p.status.total,
            p.status.checked_out,
            p.status.idle,
        ));
    }
    h.push_str("</table></section>");

    let period = config.general.stats_period.as_secs_f64();
    h.push_str("<section><h2>Databases</h2><table><tr><th>database</th><th>state</th></tr>");
    for d in proxy.databases() {
        let state = match (d.paused, d.disabled) {
            (true, true) => {
                "<span class=\"b warn\">paused</span> <span class=\"b fenced\">disabled</span>"
            }
            (true, false) => "<span class=\"b warn\">paused</span>",
            (false, true) => "<span class=\"b fenced\">disabled</span>",
            (false, false) => "<span class=ok>serving</span>",
        };
        h.push_str(&format!(
            "<tr><td>{}</td><td>{state}</td></tr>",
            esc(&d.name)
        ));
    }
    h.push_str("</table></section>");
    h.push_str(&format!(
        "<section><h2>Traffic (last {period:.0} s, per server database)</h2><table><tr><th>database</th>\
         <th class=n>tps</th><th class=n>qps</th><th class=n>avg xact</th><th class=n>avg wait</th>\
         <th class=n>in/s</th><th class=n>out/s</th></tr>"
    ));
    let averages = proxy.averages();
    if averages.is_empty() {
        h.push_str("<tr><td colspan=7 class=muted>no complete period yet</td></tr>");
    }
    for (db, a) in &averages {
        h.push_str(&format!(
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{:.2} ms</td>\
             <td class=n>{:.2} ms</td><td class=n>{}</td><td class=n>{}</td></tr>",
            esc(db),
            a.transactions,
            a.queries,
            a.xact_time_us as f64 / 1000.0,
            a.wait_time_us as f64 / 1000.0,
            bytes(a.received_bytes),
            bytes(a.sent_bytes),
        ));
    }
    h.push_str("</table></section>");

    h.push_str("<section><h2>Recent events</h2><table><tr><th>time (UTC)</th><th>event</th></tr>");
    let recent = events.recent();
    if recent.is_empty() {
        h.push_str("<tr><td colspan=2 class=muted>none since pgherd started</td></tr>");
    }
    for (at, text) in recent.iter().rev() {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(at),
            esc(text)
        ));
    }
    h.push_str("</table></section>");
    let mut destinations = notifications.destinations().peekable();
    if destinations.peek().is_some() {
        h.push_str("<section><h2>Notifications</h2><table><tr><th>destination</th>");
        for outcome in pgherd_notify::OUTCOMES {
            h.push_str(&format!("<th class=n>{outcome}</th>"));
        }
        h.push_str("</tr>");
        for (label, counts) in destinations {
            h.push_str(&format!("<tr><td>{}</td>", esc(label)));
            for (_, n) in counts.outcomes() {
                h.push_str(&format!("<td class=n>{n}</td>"));
            }
            h.push_str("</tr>");
        }
        h.push_str("</table></section>");
    }
    h.push_str("<p class=muted>Also: <a href=/metrics>/metrics</a> · <a href=/api/v1/nodes>/api/v1/nodes</a> · \
                <a href=/api/v1/pools>/api/v1/pools</a> · <a href=/api/v1/clients>/api/v1/clients</a> · \
                <a href=/api/v1/events>/api/v1/events</a> · \
                <a href=/primary>/primary</a> · <a href=/replica>/replica</a></p></main></body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn human_bytes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
