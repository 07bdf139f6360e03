//! `SET` replay in transaction mode: settings a client makes with SQL
//! outside a transaction (`SET work_mem = '64MB'`, `SET search_path TO
//! app, public`, `SET app.user_id = 42`, `RESET ...`) follow it to every
//! server its later transactions land on, instead of pinning it to one.
//!
//! Parameters PostgreSQL reports in ParameterStatus are carried by
//! `params` already; this is for the rest. The statement is recognised
//! only when it is a simple query of its own, sent while the server is
//! idle outside a transaction, and kept only once the server answered it
//! without an error and idle (a failed `SET` changes nothing): anything
//! else (a `SET` inside `BEGIN ... COMMIT`, beside other statements, or
//! through the extended protocol) pins the client as before, because its
//! outcome cannot be told from the traffic as cheaply.
//!
//! The value is kept as the client wrote it and replayed as `SET name TO
//! <value>`, so list values and quoting mean what they meant. Values with
//! anything but quoted strings, quoted identifiers, words, numbers and
//! commas (a dollar quote, a comment) are not replayed: they pin.

use std::sync::Arc;

/// A change of settings a client made with one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Set(Setting),
    /// `RESET name` or `SET name TO DEFAULT`: by the setting's key.
    Reset(Box<str>),
    /// `RESET ALL` or `DISCARD ALL`.
    ResetAll,
}

/// One setting: its key (the name as PostgreSQL folds it), and its name
/// and value as the client wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Setting {
    key: Box<str>,
    name: Box<str>,
    value: Box<str>,
}

/// Settings made with SQL, sorted by key, behind one shared allocation:
/// a server's and the client's on it are one allocation when equal, so the
/// check before every transaction compares two pointers (or two `None`s).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Settings(Option<Arc<[Setting]>>);

impl Settings {
    pub(crate) const NONE: Settings = Settings(None);

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The same allocation, or both empty.
    #[inline]
    pub(crate) fn same(&self, other: &Settings) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// These settings after `change`.
    pub(crate) fn apply(&mut self, change: &Change) {
        let mut list: Vec<Setting> = self.0.as_deref().map_or_else(Vec::new, <[_]>::to_vec);
        match change {
            Change::ResetAll => list.clear(),
            Change::Reset(key) => list.retain(|s| s.key != *key),
            Change::Set(setting) => match list.binary_search_by(|s| s.key.cmp(&setting.key)) {
                Ok(i) => list[i] = setting.clone(),
                Err(i) => list.insert(i, setting.clone()),
            },
        }
        self.0 = (!list.is_empty()).then(|| list.into());
    }

    /// Appends to `query` what makes a server with `server`'s settings
    /// have these: `RESET` what it has that these lack, `SET` what differs.
    pub(crate) fn differences(&self, server: &Settings, query: &mut String) {
        let mine = self.0.as_deref().unwrap_or(&[]);
        let theirs = server.0.as_deref().unwrap_or(&[]);
        for s in theirs {
            if !mine.iter().any(|m| m.key == s.key) {
                query.push_str("RESET ");
                query.push_str(&s.name);
                query.push(';');
            }
        }
        for m in mine {
            if !theirs.contains(m) {
                query.push_str("SET ");
                query.push_str(&m.name);
                query.push_str(" TO ");
                query.push_str(&m.value);
                query.push(';');
            }
        }
    }

    /// Makes both one allocation (after a server took these settings).
    pub(crate) fn share_with(&self, server: &mut Settings) {
        server.clone_from(self);
    }
}

/// The change `sql` makes, when it is one `SET [SESSION] name {TO|=}
/// value`, `RESET name`, `RESET ALL` or `DISCARD ALL` (a trailing `;`
/// allowed) that can be replayed; `None` otherwise. `tracked` names the
/// parameters `params` carries, which are left to it.
pub(crate) fn parse(sql: &[u8], tracked: impl Fn(&str) -> bool) -> Option<Change> {
    let text = std::str::from_utf8(sql).ok()?.trim_end_matches('\0');
    let mut t = Tokens { text, at: 0 };
    let first = t.word()?;
    let change = if first.eq_ignore_ascii_case("set") {
        let mut name_start = t.at;
        let mut word = t.peek_word();
        if word.is_some_and(|w| w.eq_ignore_ascii_case("session")) {
            t.word();
            name_start = t.at;
            word = t.peek_word();
        }
        // Special forms: transaction-scoped, roles, or ParameterStatus ones.
        const SPECIAL: [&str; 12] = [
            "local",
            "transaction",
            "constraints",
            "role",
            "session",
            "authorization",
            "characteristics",
            "time",
            "names",
            "schema",
            "xml",
            "catalog",
        ];
        if word.is_some_and(|w| SPECIAL.iter().any(|s| w.eq_ignore_ascii_case(s))) {
            return None;
        }
        let (key, name) = t.name(name_start)?;
        t.skip_space();
        if t.rest().starts_with('=') {
            t.at += 1;
        } else if !t.word()?.eq_ignore_ascii_case("to") {
            return None;
        }
        let value = t.value()?;
        if value.eq_ignore_ascii_case("default") {
            Change::Reset(key)
        } else {
            Change::Set(Setting {
                key,
                name,
                value: value.into(),
            })
        }
    } else if first.eq_ignore_ascii_case("reset") {
        if t.peek_word().is_some_and(|w| w.eq_ignore_ascii_case("all")) {
            t.word();
            Change::ResetAll
        } else {
            let start = t.at;
            if t.peek_word().is_some_and(|w| {
                ["role", "session", "time"]
                    .iter()
                    .any(|s| w.eq_ignore_ascii_case(s))
            }) {
                return None;
            }
            Change::Reset(t.name(start)?.0)
        }
    } else if first.eq_ignore_ascii_case("discard") {
        if !t.word()?.eq_ignore_ascii_case("all") {
            return None;
        }
        Change::ResetAll
    } else {
        return None;
    };
    // Nothing after it but a `;` and whitespace.
    t.skip_space();
    if t.rest().starts_with(';') {
        t.at += 1;
        t.skip_space();
    }
    if !t.rest().is_empty() {
        return None;
    }
    match &change {
        Change::Set(Setting { key, .. }) | Change::Reset(key) if tracked(key) => None,
        _ => Some(change),
    }
}

/// A cursor over one statement's text.
struct Tokens<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Tokens<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    /// The next bare word (letters, digits, `_`, `$`), not consumed.
    fn peek_word(&mut self) -> Option<&'a str> {
        self.skip_space();
        let rest = self.rest();
        let len = rest
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$')
            .count();
        (len > 0 && !rest.as_bytes()[0].is_ascii_digit()).then(|| &rest[..len])
    }

    fn word(&mut self) -> Option<&'a str> {
        let word = self.peek_word()?;
        self.at += word.len();
        Some(word)
    }

    /// A parameter name (`work_mem`, `app.user_id`, `"MyExt".x`): its key,
    /// folded as PostgreSQL folds identifiers, and its text from `start`.
    fn name(&mut self, start: usize) -> Option<(Box<str>, Box<str>)> {
        let mut key = String::new();
        loop {
            self.skip_space();
            if self.rest().starts_with('"') {
                let quoted = self.quoted('"')?;
                key.push_str(&quoted[1..quoted.len() - 1].replace("\"\"", "\""));
            } else {
                key.push_str(&self.word()?.to_ascii_lowercase());
            }
            if !self.rest().starts_with('.') {
                break;
            }
            self.at += 1;
            key.push('.');
        }
        let name = self.text[start..self.at].trim();
        Some((key.into(), name.into()))
    }

    /// A quoted run starting at the cursor (`'...'` or `"..."`, the quote
    /// doubled inside), consumed and returned with its quotes.
    fn quoted(&mut self, quote: char) -> Option<&'a str> {
        let rest = self.rest();
        let bytes = rest.as_bytes();
        let mut i = 1;
        loop {
            match bytes.get(i)? {
                b if *b == quote as u8 && bytes.get(i + 1) == Some(&(quote as u8)) => i += 2,
                b if *b == quote as u8 => break,
                _ => i += 1,
            }
        }
        self.at += i + 1;
        Some(&rest[..=i])
    }

    /// `E'...'`, where a backslash escapes the next character.
    fn escaped(&mut self) -> Option<&'a str> {
        let rest = self.rest();
        let bytes = rest.as_bytes();
        let mut i = 2;
        loop {
            match bytes.get(i)? {
                b'\\' => i += 2,
                b'\'' if bytes.get(i + 1) == Some(&b'\'') => i += 2,
                b'\'' => break,
                _ => i += 1,
            }
        }
        self.at += i + 1;
        Some(&rest[..=i])
    }

    /// A value list: items (quoted strings, quoted identifiers, words,
    /// numbers) apart by commas, up to a `;` or the end; its text.
    fn value(&mut self) -> Option<&'a str> {
        self.skip_space();
        let start = self.at;
        loop {
            self.skip_space();
            let rest = self.rest();
            let bytes = rest.as_bytes();
            match bytes.first()? {
                b'\'' => {
                    self.quoted('\'')?;
                }
                b'"' => {
                    self.quoted('"')?;
                }
                b'e' | b'E' if bytes.get(1) == Some(&b'\'') => {
                    self.escaped()?;
                }
                b if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+' | b'.') => {
                    let len = bytes
                        .iter()
                        .take_while(|b| {
                            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+' | b'.')
                        })
                        .count();
                    // `--` starts a comment.
                    if rest[..len].contains("--") {
                        return None;
                    }
                    self.at += len;
                }
                _ => return None,
            }
            self.skip_space();
            if !self.rest().starts_with(',') {
                break;
            }
            self.at += 1;
        }
        let value = self.text[start..self.at].trim_end();
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn untracked(sql: &str) -> Option<Change> {
        parse(sql.as_bytes(), |name| name == "timezone")
    }

    fn set(sql: &str) -> (String, String, String) {
        match untracked(sql) {
            Some(Change::Set(s)) => (s.key.into(), s.name.into(), s.value.into()),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn sets_are_read_with_their_value_as_written() {
        assert_eq!(
            set("SET work_mem = '64MB'"),
            ("work_mem".into(), "work_mem".into(), "'64MB'".into())
        );
        assert_eq!(
            set("set session Statement_Timeout to 5000;"),
            (
                "statement_timeout".into(),
                "Statement_Timeout".into(),
                "5000".into()
            )
        );
        assert_eq!(
            set("SET search_path TO app, \"My Schema\", public ;  "),
            (
                "search_path".into(),
                "search_path".into(),
                "app, \"My Schema\", public".into()
            )
        );
        assert_eq!(
            set("SET app.user_id = 42"),
            ("app.user_id".into(), "app.user_id".into(), "42".into())
        );
        assert_eq!(
            set("SET \"MyExt\".x = 'it''s'"),
            ("MyExt.x".into(), "\"MyExt\".x".into(), "'it''s'".into())
        );
        assert_eq!(
            set(r"SET app.path = E'a\'b'"),
            ("app.path".into(), "app.path".into(), r"E'a\'b'".into())
        );
        assert_eq!(set("SET extra_float_digits = -1").2, "-1");
        assert_eq!(set("SET seq_page_cost = 1.5").2, "1.5");
    }

    #[test]
    fn resets_and_defaults() {
        assert_eq!(
            untracked("RESET work_mem"),
            Some(Change::Reset("work_mem".into()))
        );
        assert_eq!(
            untracked("SET work_mem TO DEFAULT;"),
            Some(Change::Reset("work_mem".into()))
        );
        assert_eq!(untracked("RESET ALL"), Some(Change::ResetAll));
        assert_eq!(untracked("discard all;"), Some(Change::ResetAll));
    }

    #[test]
    fn what_is_not_replayed() {
        for sql in [
            // Scoped to the transaction, or not a parameter.
            "SET LOCAL work_mem = '1MB'",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SET CONSTRAINTS ALL DEFERRED",
            "SET ROLE admin",
            "SET SESSION AUTHORIZATION bob",
            "RESET ROLE",
            "RESET SESSION AUTHORIZATION",
            // Carried by ParameterStatus already.
            "SET TimeZone = 'UTC'",
            "SET TIME ZONE 'UTC'",
            "RESET timezone",
            "SET NAMES 'UTF8'",
            // Beside another statement, or with what is not read.
            "SET work_mem = '1MB'; SELECT 1",
            "SET work_mem = '1MB'; SET work_mem = '2MB'",
            "SET work_mem = $$1MB$$",
            "SET work_mem = '1MB' -- comment",
            "SET work_mem = '1MB' /* comment */",
            "SET work_mem = 1--2",
            "SET work_mem = (1)",
            "SET work_mem",
            "SET work_mem = 'unterminated",
            "DISCARD TEMP",
            "SELECT 1",
        ] {
            assert_eq!(untracked(sql), None, "{sql}");
        }
    }

    fn setting(key: &str, value: &str) -> Change {
        Change::Set(Setting {
            key: key.into(),
            name: key.into(),
            value: value.into(),
        })
    }

    #[test]
    fn differences_reset_what_the_server_has_extra_and_set_what_differs() {
        let mut client = Settings::default();
        let mut server = Settings::default();
        let diff = |c: &Settings, s: &Settings| {
            let mut q = String::new();
            c.differences(s, &mut q);
            q
        };
        assert!(client.same(&server));
        client.apply(&setting("work_mem", "'64MB'"));
        client.apply(&setting("app.id", "7"));
        assert!(!client.same(&server));
        assert_eq!(
            diff(&client, &server),
            "SET app.id TO 7;SET work_mem TO '64MB';"
        );
        client.share_with(&mut server);
        assert!(client.same(&server));
        assert_eq!(diff(&client, &server), "");
        // Another client, with one of them changed and one not set.
        let mut other = Settings::default();
        other.apply(&setting("work_mem", "'1MB'"));
        assert_eq!(diff(&other, &server), "RESET app.id;SET work_mem TO '1MB';");
        other.apply(&Change::Reset("work_mem".into()));
        assert!(other.is_empty());
        assert_eq!(diff(&other, &server), "RESET app.id;RESET work_mem;");
        client.apply(&Change::ResetAll);
        assert!(client.is_empty() && client.same(&Settings::default()));
    }
}
