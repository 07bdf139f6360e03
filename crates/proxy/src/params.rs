//! Session parameters in transaction mode.
//!
//! In transaction mode consecutive transactions of one client run on
//! different server connections, and a `SET TimeZone` another client ran on
//! a server stays there. So, as pgbouncer does, pgherd keeps each client's
//! own values of the *tracked* parameters — those PostgreSQL reports in
//! ParameterStatus (`TimeZone`, `DateStyle`, `application_name`, ...) plus
//! `track_extra_parameters` — and, when a client lands on a server whose
//! values differ, sets them first with one simple query.
//!
//! A client's values start from its startup packet (for the rest, the
//! server's own defaults: transaction-mode servers are opened *without* the
//! tracked parameters, so what they report at login is the database's and
//! role's default) and follow every ParameterStatus the server sends while
//! the client is on it (`SET`, `RESET`, `DISCARD ALL`). The untracked startup
//! parameters (`options`, say) are what a server is opened with, and a client
//! only gets servers opened with exactly its own.

use pgherd_config::{General, TRACKED_PARAMETERS};

/// The tracked parameter names of a configuration.
#[derive(Debug, Clone)]
pub(crate) struct Tracked(Vec<String>);

impl Tracked {
    pub(crate) fn new(general: &General) -> Tracked {
        let mut names: Vec<String> = TRACKED_PARAMETERS.iter().map(|&n| n.to_owned()).collect();
        for extra in &general.track_extra_parameters {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(extra)) {
                names.push(extra.clone());
            }
        }
        Tracked(names)
    }

    /// The configured spelling of `name`, if it is tracked (GUC names are
    /// case-insensitive: a driver may send `datestyle`).
    pub(crate) fn canonical(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|n| n.eq_ignore_ascii_case(name))
            .map(String::as_str)
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// One client's values of the tracked parameters.
#[derive(Debug, Default)]
pub(crate) struct ClientParams {
    values: Vec<(String, String)>,
    /// For each value, where its name was last found in a server's list:
    /// servers report their parameters in the same order, so this is
    /// almost always where it is on the next server too.
    seen_at: Vec<usize>,
}

/// The value of `name` in a parameter list (GUC names are case-insensitive).
pub(crate) fn find<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Sets `name` in a parameter list, reusing the old value's allocation.
pub(crate) fn upsert(list: &mut Vec<(String, String)>, name: &str, value: &str) {
    match list.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
        Some((_, v)) => {
            if v != value {
                value.clone_into(v);
            }
        }
        None => list.push((name.to_owned(), value.to_owned())),
    }
}

impl ClientParams {
    /// Sets the client's value of `name` (its canonical spelling).
    pub(crate) fn set(&mut self, name: &str, value: &str) {
        upsert(&mut self.values, name, value);
        self.seen_at.resize(self.values.len(), 0);
    }

    /// Frees spare capacity (a client keeps its values for its session).
    pub(crate) fn shrink_to_fit(&mut self) {
        self.values.shrink_to_fit();
        self.seen_at.shrink_to_fit();
    }

    pub(crate) fn values(&self) -> &[(String, String)] {
        &self.values
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        find(&self.values, name)
    }

    /// A query setting, on a server whose known values are `server`, every
    /// parameter it has differently; `None` when there is nothing to do (the
    /// steady state: allocation-free).
    pub(crate) fn differences(&mut self, server: &[(String, String)]) -> Option<String> {
        let mut query: Option<String> = None;
        for ((name, value), at) in self.values.iter().zip(&mut self.seen_at) {
            // This runs for every transaction: look where the name was on
            // the last server first (one comparison), search only if not.
            let theirs = match server.get(*at) {
                Some((k, v)) if k == name => Some(v.as_str()),
                _ => server
                    .iter()
                    .position(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|i| {
                        *at = i;
                        server[i].1.as_str()
                    }),
            };
            if theirs == Some(value.as_str()) {
                continue;
            }
            let q = query.get_or_insert_with(String::new);
            q.push_str("SET ");
            quote_ident(q, name);
            q.push_str(" TO ");
            quote_literal(q, value);
            q.push(';');
        }
        query
    }

    /// After a server applied this client's values: takes the server's
    /// spelling of each (it reports `DateStyle` `iso, mdy` as `ISO, MDY`), so
    /// the next comparison with a server holding the same setting matches.
    pub(crate) fn adopt(&mut self, server: &[(String, String)]) {
        for (name, value) in &mut self.values {
            if let Some(v) = find(server, name) {
                if v != value {
                    v.clone_into(value);
                }
            }
        }
    }
}

/// `"name"`, with `"` doubled.
fn quote_ident(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

/// `E'value'`, escaped so it reads the same whatever
/// `standard_conforming_strings` is.
fn quote_literal(out: &mut String, value: &str) {
    out.push_str("E'");
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tracked_names_are_case_insensitive_and_include_extras() {
        let mut general = pgherd_config::Config::parse(
            "[pgherd]\nprobe_user = \"p\"\n[[nodes]]\nname = \"a\"\nhost = \"h\"\n",
        )
        .unwrap()
        .general;
        general.track_extra_parameters = vec!["search_path".into(), "timezone".into()];
        let tracked = Tracked::new(&general);
        assert_eq!(tracked.canonical("datestyle"), Some("DateStyle"));
        assert_eq!(tracked.canonical("TIMEZONE"), Some("TimeZone"));
        assert_eq!(tracked.canonical("search_path"), Some("search_path"));
        assert_eq!(tracked.canonical("options"), None);
        assert_eq!(tracked.names().count(), TRACKED_PARAMETERS.len() + 1);
    }

    #[test]
    fn only_differing_values_are_set() {
        let mut client = ClientParams::default();
        client.set("TimeZone", "Asia/Tokyo");
        client.set("application_name", "app");
        let server = pairs(&[("TimeZone", "UTC"), ("application_name", "app")]);
        assert_eq!(
            client.differences(&server).as_deref(),
            Some("SET \"TimeZone\" TO E'Asia/Tokyo';")
        );
        let same = pairs(&[("timezone", "Asia/Tokyo"), ("application_name", "app")]);
        assert_eq!(client.differences(&same), None);
        // Another server with the same values in another order (the
        // remembered positions miss) and with one of them changed.
        let reordered = pairs(&[("application_name", "app"), ("TimeZone", "Asia/Tokyo")]);
        assert_eq!(client.differences(&reordered), None);
        let changed = pairs(&[("application_name", "other"), ("TimeZone", "Asia/Tokyo")]);
        assert_eq!(
            client.differences(&changed).as_deref(),
            Some("SET \"application_name\" TO E'app';")
        );
    }

    #[test]
    fn a_parameter_the_server_never_reported_is_set() {
        let mut client = ClientParams::default();
        client.set("search_path", "app, public");
        assert_eq!(
            client.differences(&[]).as_deref(),
            Some("SET \"search_path\" TO E'app, public';")
        );
    }

    #[test]
    fn values_are_quoted_whatever_standard_conforming_strings_is() {
        let mut client = ClientParams::default();
        client.set("application_name", r"it's a \ path");
        client.set("we\"ird", "x");
        assert_eq!(
            client.differences(&[]).as_deref(),
            Some(r#"SET "application_name" TO E'it''s a \\ path';SET "we""ird" TO E'x';"#)
        );
    }

    #[test]
    fn adopting_takes_the_servers_spelling() {
        let mut client = ClientParams::default();
        client.set("DateStyle", "iso, dmy");
        client.adopt(&pairs(&[("DateStyle", "ISO, DMY")]));
        assert_eq!(client.get("datestyle"), Some("ISO, DMY"));
        client.set("DATESTYLE", "German");
        assert_eq!(client.get("DateStyle"), Some("German"));
        assert_eq!(client.values.len(), 1);
    }
}
