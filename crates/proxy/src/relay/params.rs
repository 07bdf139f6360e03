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
//!
//! Why the values are shared ([`Values`]): the comparison runs for every
//! transaction, and nearly every client of an application has the same
//! settings as the servers it lands on. Equal sets are made one allocation
//! when they meet, so the steady state compares two pointers and an idle
//! client holds one pointer instead of a dozen small strings.

use std::sync::Arc;

use pgherd_config::{General, TRACKED_PARAMETERS};

use super::settings::{Change, Settings};

/// The tracked parameter names of a configuration; a name's place here is
/// its index in every [`Values`].
#[derive(Debug, Clone)]
pub(crate) struct TrackedParams(Vec<String>);

impl TrackedParams {
    pub(crate) fn new(general: &General) -> TrackedParams {
        let mut names: Vec<String> = TRACKED_PARAMETERS.iter().map(|&n| n.to_owned()).collect();
        for extra in &general.track_extra_parameters {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(extra)) {
                names.push(extra.clone());
            }
        }
        TrackedParams(names)
    }

    /// The index of `name`, if it is tracked (GUC names are
    /// case-insensitive: a driver may send `datestyle`).
    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|n| n.eq_ignore_ascii_case(name))
    }

    /// The configured spelling of the parameter at `index`.
    pub(crate) fn name(&self, index: usize) -> &str {
        self.0.get(index).map_or("", String::as_str)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

/// Values of the tracked parameters by index (`None`: not known), behind
/// one shared, copy-on-write allocation.
#[derive(Debug, Clone)]
pub(crate) struct Values(Arc<[Option<Box<str>>]>);

impl Values {
    /// No value known for any of `tracked`.
    pub(crate) fn unknown(tracked: &TrackedParams) -> Values {
        Values((0..tracked.len()).map(|_| None).collect())
    }

    pub(crate) fn get(&self, index: usize) -> Option<&str> {
        self.0.get(index)?.as_deref()
    }

    /// Sets one value; copies the set first if others share it.
    pub(crate) fn set(&mut self, index: usize, value: &str) {
        if self.get(index) == Some(value) || index >= self.0.len() {
            return;
        }
        let mut own: Vec<Option<Box<str>>> = self.0.to_vec();
        own[index] = Some(value.into());
        self.0 = own.into();
    }

    /// True when both hold the same allocation (and so the same values).
    fn same(&self, other: &Values) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// When the values are equal, makes both hold one allocation: the one
    /// more holders already share, so sets converge on one per setting.
    fn share(&mut self, other: &mut Values) {
        if self.same(other) || self.0 != other.0 {
            return;
        }
        if Arc::strong_count(&self.0) >= Arc::strong_count(&other.0) {
            other.0 = Arc::clone(&self.0);
        } else {
            self.0 = Arc::clone(&other.0);
        }
    }
}

/// One client's session parameters: its values of the tracked ones, and
/// the settings it made with SQL (`relay::settings`).
#[derive(Debug, Clone)]
pub(crate) struct ClientParams {
    values: Values,
    /// Boxed, and only once the client makes a setting: most never do.
    made: Option<Box<Made>>,
}

/// Settings a client made with SQL, and the change of its statement in
/// flight, kept once the server answers it without an error.
#[derive(Debug, Clone, Default)]
struct Made {
    settings: Settings,
    pending: Option<Change>,
}

/// What a client without settings of its own has.
static NO_SETTINGS: Settings = Settings::NONE;

impl ClientParams {
    pub(crate) fn new(tracked: &TrackedParams) -> ClientParams {
        ClientParams {
            values: Values::unknown(tracked),
            made: None,
        }
    }

    pub(crate) fn set(&mut self, index: usize, value: &str) {
        self.values.set(index, value);
    }

    pub(crate) fn get(&self, index: usize) -> Option<&str> {
        self.values.get(index)
    }

    /// What this client has no value of, it takes from `server` (the
    /// server's defaults, as a direct connection would have them).
    pub(crate) fn default_to(&mut self, server: &ServerParams) {
        for index in 0..self.values.0.len() {
            if self.values.get(index).is_none() {
                if let Some(v) = server.tracked.get(index) {
                    self.values.set(index, v);
                }
            }
        }
    }

    /// The settings this client made with SQL.
    pub(crate) fn settings(&self) -> &Settings {
        self.made.as_ref().map_or(&NO_SETTINGS, |m| &m.settings)
    }

    /// The client sent a statement making `change`.
    pub(crate) fn expect(&mut self, change: Change) {
        self.made.get_or_insert_with(Default::default).pending = Some(change);
    }

    /// A request was answered (ReadyForQuery): when idle, the change in
    /// flight is made (see [`ClientParams::confirm`]), else forgotten.
    #[inline]
    pub(crate) fn settle(&mut self, idle: bool, server: &mut ServerParams) {
        if self.made.is_none() {
            return;
        }
        match idle {
            true => self.confirm(server),
            false => self.forget(),
        }
    }

    /// The server answered without an error, idle: the change in flight is
    /// made, on the client's settings and on `server`'s (which were the
    /// client's when its transaction began).
    #[cold]
    fn confirm(&mut self, server: &mut ServerParams) {
        let Some(made) = self.made.as_mut() else {
            return;
        };
        if let Some(change) = made.pending.take() {
            made.settings.apply(&change);
            made.settings.share_with(&mut server.settings);
            if made.settings.is_empty() {
                self.made = None;
            }
        }
    }

    /// The statement in flight failed: nothing changed.
    #[inline]
    pub(crate) fn forget(&mut self) {
        if let Some(made) = self.made.as_mut() {
            made.pending = None;
        }
    }

    /// A query setting, on `server`, every parameter this client has
    /// differently; `None` when there is nothing to do. Equal sets end up
    /// shared, so the steady state is two pointer comparisons, without
    /// allocation.
    pub(crate) fn differences(
        &mut self,
        server: &mut ServerParams,
        tracked: &TrackedParams,
    ) -> Option<String> {
        let settings_same = self.settings().same(&server.settings);
        if settings_same && self.values.same(&server.tracked) {
            return None;
        }
        let mut query: Option<String> = None;
        for (index, value) in self.values.0.iter().enumerate() {
            let Some(value) = value else { continue };
            if server.tracked.get(index) == Some(value) {
                continue;
            }
            let q = query.get_or_insert_with(String::new);
            q.push_str("SET ");
            quote_ident(q, tracked.name(index));
            q.push_str(" TO ");
            quote_literal(q, value);
            q.push(';');
        }
        if query.is_none() {
            self.values.share(&mut server.tracked);
        }
        if !settings_same {
            let q = query.get_or_insert_with(String::new);
            self.settings().differences(&server.settings, q);
            if q.is_empty() {
                // Equal, apart: one allocation from now on.
                self.settings().share_with(&mut server.settings);
                query = None;
            }
        }
        query
    }

    /// After a server applied this client's values: takes the server's
    /// spelling of each (it reports `DateStyle` `iso, mdy` as `ISO, MDY`), so
    /// the next comparison with a server holding the same setting matches.
    /// The server has the client's settings now.
    pub(crate) fn adopt(&mut self, server: &mut ServerParams) {
        for index in 0..self.values.0.len() {
            if let (Some(_), Some(theirs)) = (self.values.get(index), server.tracked.get(index)) {
                let theirs = theirs.to_owned();
                self.values.set(index, &theirs);
            }
        }
        self.values.share(&mut server.tracked);
        self.settings().share_with(&mut server.settings);
    }

    /// Whether this client's values and `other` are one allocation.
    #[cfg(test)]
    fn shares_with(&self, other: &Values) -> bool {
        self.values.same(other)
    }
}

/// A server connection's parameters: every ParameterStatus it reported,
/// and the tracked ones as [`Values`] for comparing with clients'.
#[derive(Debug, Clone)]
pub(crate) struct ServerParams {
    /// Everything reported, in the order the server first reported it
    /// (what a client's welcome repeats).
    reported: Vec<(String, String)>,
    /// The tracked values (plus those pgherd set that the server does not
    /// report).
    pub(crate) tracked: Values,
    /// Settings made with SQL on this server that pgherd replays
    /// (`relay::settings`): what a client landing here has reset or changed.
    pub(crate) settings: Settings,
    /// `in_hot_standby = on`, kept as a flag: it is asked for every
    /// transaction.
    standby: bool,
    names: Arc<TrackedParams>,
}

impl ServerParams {
    /// The parameters pgherd carries from server to server itself.
    pub(crate) fn tracked_names(&self) -> &TrackedParams {
        &self.names
    }

    pub(crate) fn new(names: Arc<TrackedParams>) -> ServerParams {
        ServerParams {
            reported: Vec::new(),
            tracked: Values::unknown(&names),
            settings: Settings::NONE,
            standby: false,
            names,
        }
    }

    /// Records the server's value of a parameter; returns its tracked
    /// index, if it is tracked.
    pub(crate) fn record(&mut self, name: &str, value: &str) -> Option<usize> {
        match self
            .reported
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some((_, v)) => {
                if v != value {
                    value.clone_into(v);
                }
            }
            None => self.reported.push((name.to_owned(), value.to_owned())),
        }
        if name.eq_ignore_ascii_case("in_hot_standby") {
            self.standby = value == "on";
        }
        let index = self.names.index(name)?;
        self.tracked.set(index, value);
        Some(index)
    }

    /// Records a client's values as this server's (before they are set on
    /// it): parameters the server does not report are known only this way.
    pub(crate) fn assume(&mut self, client: &ClientParams) {
        for index in 0..self.names.len() {
            if let Some(value) = client.get(index) {
                self.tracked.set(index, value);
            }
        }
    }

    pub(crate) fn reported(&self) -> &[(String, String)] {
        &self.reported
    }

    /// True when the server reports itself as a hot standby (PostgreSQL 14+
    /// reports `in_hot_standby`; older servers are taken as primaries here).
    pub(crate) fn is_standby(&self) -> bool {
        self.standby
    }
}

/// Whether every server reports `name` in ParameterStatus, so that its
/// changes follow the client through [`ClientParams`] alone. A `SET` of
/// any other parameter, `track_extra_parameters` included (they may be
/// ones a server does not report, such as `search_path`), is replayed
/// (`relay::settings`) or pins.
pub(crate) fn always_reported(name: &str) -> bool {
    TRACKED_PARAMETERS
        .iter()
        .any(|t| t.eq_ignore_ascii_case(name))
}

/// The value of `name` in a parameter list (GUC names are case-insensitive).
pub(crate) fn find<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `"name"`, with `"` doubled.
pub(crate) fn quote_ident(out: &mut String, name: &str) {
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

    fn tracked(extra: &[&str]) -> Arc<TrackedParams> {
        let mut general = pgherd_config::Config::parse(
            "[pgherd]\nprobe_user = \"p\"\n[[nodes]]\nname = \"a\"\nhost = \"h\"\n",
        )
        .unwrap()
        .general;
        general.track_extra_parameters = extra.iter().map(|&e| e.to_owned()).collect();
        Arc::new(TrackedParams::new(&general))
    }

    fn server(names: &Arc<TrackedParams>, list: &[(&str, &str)]) -> ServerParams {
        let mut s = ServerParams::new(Arc::clone(names));
        for (k, v) in list {
            s.record(k, v);
        }
        s
    }

    fn client(names: &TrackedParams, list: &[(&str, &str)]) -> ClientParams {
        let mut c = ClientParams::new(names);
        for (k, v) in list {
            c.set(names.index(k).unwrap(), v);
        }
        c
    }

    #[test]
    fn tracked_names_are_case_insensitive_and_include_extras() {
        let names = tracked(&["search_path", "timezone"]);
        let datestyle = names.index("datestyle").unwrap();
        assert_eq!(names.name(datestyle), "DateStyle");
        assert_eq!(names.name(names.index("TIMEZONE").unwrap()), "TimeZone");
        assert_eq!(names.index("options"), None);
        assert_eq!(names.len(), TRACKED_PARAMETERS.len() + 1);
    }

    #[test]
    fn only_differing_values_are_set() {
        let names = tracked(&[]);
        let mut c = client(
            &names,
            &[("TimeZone", "Asia/Tokyo"), ("application_name", "app")],
        );
        let mut s = server(&names, &[("TimeZone", "UTC"), ("application_name", "app")]);
        assert_eq!(
            c.differences(&mut s, &names).as_deref(),
            Some("SET \"TimeZone\" TO E'Asia/Tokyo';")
        );
        assert!(!c.shares_with(&s.tracked), "different sets stay apart");
        // Reported in another order and spelling: the same values.
        let mut same = server(
            &names,
            &[("application_name", "app"), ("timezone", "Asia/Tokyo")],
        );
        assert_eq!(c.differences(&mut same, &names), None);
        let mut changed = server(
            &names,
            &[("application_name", "other"), ("TimeZone", "Asia/Tokyo")],
        );
        assert_eq!(
            c.differences(&mut changed, &names).as_deref(),
            Some("SET \"application_name\" TO E'app';")
        );
    }

    #[test]
    fn equal_sets_become_one_allocation_and_copy_on_write() {
        let names = tracked(&[]);
        let mut a = client(&names, &[("TimeZone", "UTC")]);
        let mut b = client(&names, &[("TimeZone", "UTC")]);
        let mut s = server(&names, &[("TimeZone", "UTC")]);
        assert_eq!(a.differences(&mut s, &names), None);
        assert!(a.shares_with(&s.tracked));
        // Two share it now: b takes theirs rather than they b's.
        assert_eq!(b.differences(&mut s, &names), None);
        assert!(b.shares_with(&s.tracked) && a.shares_with(&s.tracked));
        // A SET on the server changes its set and this client's, not a's.
        let index = s.record("TimeZone", "Europe/Paris").unwrap();
        b.set(index, "Europe/Paris");
        assert_eq!(a.get(index), Some("UTC"));
        assert_eq!(
            a.differences(&mut s, &names).as_deref(),
            Some("SET \"TimeZone\" TO E'UTC';")
        );
    }

    #[test]
    fn a_parameter_the_server_never_reported_is_set() {
        let names = tracked(&["search_path"]);
        let mut c = client(&names, &[("search_path", "app, public")]);
        let mut s = server(&names, &[]);
        assert_eq!(
            c.differences(&mut s, &names).as_deref(),
            Some("SET \"search_path\" TO E'app, public';")
        );
        // Once set, pgherd knows the server has it (it will not report it).
        s.assume(&c);
        assert_eq!(c.differences(&mut s, &names), None);
    }

    #[test]
    fn values_are_quoted_whatever_standard_conforming_strings_is() {
        let names = tracked(&["we\"ird"]);
        let c = client(
            &names,
            &[("application_name", r"it's a \ path"), ("we\"ird", "x")],
        );
        let mut c = c;
        let mut s = server(&names, &[]);
        assert_eq!(
            c.differences(&mut s, &names).as_deref(),
            Some(r#"SET "application_name" TO E'it''s a \\ path';SET "we""ird" TO E'x';"#)
        );
    }

    #[test]
    fn adopting_takes_the_servers_spelling() {
        let names = tracked(&[]);
        let datestyle = names.index("DateStyle").unwrap();
        let mut c = client(&names, &[("DateStyle", "iso, dmy")]);
        let mut s = server(&names, &[("DateStyle", "ISO, DMY"), ("TimeZone", "UTC")]);
        c.adopt(&mut s);
        assert_eq!(c.get(datestyle), Some("ISO, DMY"));
        // What the client had no value for stays unknown to it.
        assert_eq!(c.get(names.index("TimeZone").unwrap()), None);
        c.set(datestyle, "German");
        assert_eq!(c.get(datestyle), Some("German"));
    }

    #[test]
    fn the_standby_flag_follows_reports() {
        let names = tracked(&[]);
        let mut s = server(&names, &[("in_hot_standby", "on")]);
        assert!(s.is_standby());
        assert_eq!(s.record("in_hot_standby", "off"), None);
        assert!(!s.is_standby());
        assert_eq!(find(s.reported(), "IN_HOT_STANDBY"), Some("off"));
        assert_eq!(s.reported().len(), 1);
    }
}
