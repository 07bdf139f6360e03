//! What a statement leaves on its server after its transaction: temporary
//! tables, LISTEN, session advisory locks, WITH HOLD cursors, SQL-level
//! prepared statements, a role, settings, a loaded library. In
//! transaction mode a client that leaves such state keeps its server
//! (it is *pinned*) until the state is dropped again or the client leaves;
//! otherwise the next client would see the state and its creator lose it.
//!
//! Only the first words of each statement are read, without allocating:
//! every request of every transaction passes here. The statements of a
//! simple query are found by their `;`, so a `;` inside a string literal
//! may start a false statement; the rules only ever err towards pinning
//! (a false pin costs a server for a while, a missed one leaks state).

use memchr::{memchr, memchr2};

/// Kinds of session state, as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Kinds(u16);

impl Kinds {
    pub(crate) const NONE: Kinds = Kinds(0);
    pub(crate) const TEMP: Kinds = Kinds(1);
    pub(crate) const LISTEN: Kinds = Kinds(1 << 1);
    pub(crate) const ADVISORY_LOCK: Kinds = Kinds(1 << 2);
    pub(crate) const HOLD_CURSOR: Kinds = Kinds(1 << 3);
    pub(crate) const SQL_PREPARE: Kinds = Kinds(1 << 4);
    /// A protocol-level named statement while pgherd does not track them
    /// (`max_prepared_statements = 0`).
    pub(crate) const NAMED_STATEMENT: Kinds = Kinds(1 << 5);
    pub(crate) const ROLE: Kinds = Kinds(1 << 6);
    pub(crate) const SETTING: Kinds = Kinds(1 << 7);
    /// `LOAD`: no statement unloads a library, so a server that loaded one
    /// is closed, not pooled, when its client leaves.
    pub(crate) const LOAD: Kinds = Kinds(1 << 8);
    /// Everything `DISCARD ALL` drops (all but a loaded library).
    const DISCARDED: Kinds = Kinds(Kinds::LOAD.0 - 1);

    /// Names for logs and `SHOW CLIENTS`, in bit order.
    const NAMES: [&'static str; 9] = [
        "temporary table",
        "LISTEN",
        "advisory lock",
        "WITH HOLD cursor",
        "PREPARE",
        "named prepared statement",
        "SET ROLE",
        "SET",
        "LOAD",
    ];

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub(crate) fn contains(self, other: Kinds) -> bool {
        self.0 & other.0 == other.0 && !other.is_empty()
    }

    pub(crate) fn bits(self) -> u16 {
        self.0
    }

    pub(crate) fn from_bits(bits: u16) -> Kinds {
        Kinds(bits)
    }

    /// These kinds after `effect`: what it drops goes, what it pins comes.
    pub(crate) fn after(self, effect: Effect) -> Kinds {
        Kinds((self.0 & !effect.drops.0) | effect.pins.0)
    }

    fn with(self, other: Kinds) -> Kinds {
        Kinds(self.0 | other.0)
    }

    pub(crate) fn without(self, other: Kinds) -> Kinds {
        Kinds(self.0 & !other.0)
    }

    /// `LISTEN, temporary table`: the kinds, named.
    pub(crate) fn names(self) -> impl Iterator<Item = &'static str> {
        (0..Self::NAMES.len())
            .filter(move |i| self.0 & (1 << i) != 0)
            .map(|i| Self::NAMES[i])
    }
}

/// What a request does to its server's session state, in order: first
/// `drops` goes, then `pins` comes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Effect {
    pub(crate) pins: Kinds,
    pub(crate) drops: Kinds,
}

impl Effect {
    /// It pins or drops one of `kinds`.
    pub(crate) fn involves(self, kinds: Kinds) -> bool {
        (self.pins.0 | self.drops.0) & kinds.0 != 0
    }

    /// This effect followed by `next`.
    fn then(self, next: Effect) -> Effect {
        Effect {
            pins: self.pins.without(next.drops).with(next.pins),
            drops: self.drops.with(next.drops),
        }
    }
}

/// The effect of SQL text: a simple query's, or a Parse's. `tracked` says
/// which parameters pgherd carries from server to server itself: a `SET`
/// of one of those pins nothing.
///
/// Only first words are read: a statement that starts with a keyword of
/// [`KEYWORDS`] is read further, as is a `SELECT` whose first item is a
/// `pg_...` function (`SELECT pg_advisory_lock(1)`); after transaction
/// control (`BEGIN; ...`) or such a statement the next statement is looked
/// at too. Any other statement (`SELECT`, `INSERT`, `UPDATE`...) ends the
/// look, so the common request costs a look at its first word or two.
#[inline]
pub(crate) fn effect(sql: &[u8], tracked: impl Fn(&str) -> bool) -> Effect {
    let mut total = Effect::default();
    let mut at = 0;
    loop {
        while sql.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        let rest = &sql[at.min(sql.len())..];
        let look = match rest.first() {
            None | Some(0) => return total,
            // A comment first: the careful reading, for the rest.
            Some(b'-' | b'/') => return total.then(statements_effect(rest, &tracked)),
            Some(_) => first_words(rest),
        };
        let end = match look {
            Look::Done => return total,
            Look::Next => memchr(b';', rest),
            Look::Read => {
                let end = memchr(b';', rest);
                let statement = &rest[..end.unwrap_or(rest.len())];
                total = total.then(statement_effect(statement, &tracked));
                end
            }
        };
        match end {
            Some(end) => at += end + 1,
            None => return total,
        }
    }
}

/// What a statement's first words call for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Read it carefully, then look at the next statement.
    Read,
    /// Nothing in it; look at the next statement (transaction control).
    Next,
    /// Nothing in it, nor looked for after it.
    Done,
}

/// A `SELECT` is read when its first item is a `pg_` function (an
/// advisory lock's).
#[inline]
fn select(after: &[u8]) -> Look {
    let item = after.iter().position(|b| !b.is_ascii_whitespace());
    let item = item.map_or(&[][..], |i| &after[i..]);
    match item.get(..3) {
        Some(pg) if pg.eq_ignore_ascii_case(b"pg_") => Look::Read,
        _ => Look::Done,
    }
}

/// The most common statement, in one comparison: `select` in any case,
/// then a space or other control byte, with at least one byte after it.
#[inline(always)]
fn starts_with_select(text: &[u8]) -> bool {
    let Some(Ok(head)) = text.get(..8).map(<[u8; 8]>::try_from) else {
        return false;
    };
    const SELECT: u64 = u64::from_le_bytes(*b"select\0\0");
    let head = u64::from_le_bytes(head);
    (head | 0x2020_2020_2020) & 0xffff_ffff_ffff == SELECT && head >> 48 & 0xff <= b' ' as u64
}

/// True when a simple query's text surely leaves no session state, told
/// from its first bytes alone, inline in the relay's scan: a `SELECT` whose
/// first item is not a `pg_` function, or a statement whose first letter
/// starts none of the statements [`effect`] reads (`INSERT`, `UPDATE`,
/// `WITH` ...). Anything else gets the whole reading.
#[inline(always)]
pub(crate) fn surely_none(sql: &[u8]) -> bool {
    let Some(&first) = sql.first() else {
        return true;
    };
    match first | 0x20 {
        b's' if starts_with_select(sql) && sql[6] == b' ' => {
            // Then an item that is no `pg_` function (nor more space).
            let item = sql[7];
            match item {
                b'*' | b'"' | b'\'' | b'$' | b'0'..=b'9' => true,
                _ => (item | 0x20).is_ascii_lowercase() && item | 0x20 != b'p',
            }
        }
        b's' => false,
        b'b' | b'c' | b'd' | b'e' | b'l' | b'p' | b'r' | b'u' | b'-' | b'/' => false,
        c => c.is_ascii_alphabetic(),
    }
}

/// What `text`'s first words call for (see [`effect`]).
#[inline]
fn first_words(text: &[u8]) -> Look {
    if starts_with_select(text) {
        return select(&text[6..]);
    }
    let Some(&first) = text.first() else {
        return Look::Done;
    };
    let word = |w: &[u8]| {
        text.len() >= w.len()
            && text[..w.len()].eq_ignore_ascii_case(w)
            && !text
                .get(w.len())
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    };
    let read_if = |yes: bool| if yes { Look::Read } else { Look::Done };
    match first | 0x20 {
        b'b' if word(b"begin") => Look::Next,
        b'c' if word(b"commit") => Look::Next,
        b'c' => read_if(word(b"create") || word(b"close")),
        b'd' => read_if(word(b"declare") || word(b"deallocate") || word(b"discard")),
        b'e' if word(b"end") => Look::Next,
        b'l' => read_if(word(b"listen") || word(b"load")),
        b'p' => read_if(word(b"prepare")),
        b'r' if word(b"rollback") || word(b"release") => Look::Next,
        b'r' => read_if(word(b"reset")),
        b's' if word(b"select") => select(&text[6..]),
        b's' if word(b"start") || word(b"savepoint") => Look::Next,
        b's' => read_if(word(b"set")),
        b'u' => read_if(word(b"unlisten")),
        _ => Look::Done,
    }
}

/// Every statement of `sql`, each read carefully.
#[cold]
fn statements_effect(sql: &[u8], tracked: &impl Fn(&str) -> bool) -> Effect {
    let mut total = Effect::default();
    let mut at = 0;
    while at < sql.len() {
        let end = memchr(b';', &sql[at..]).map_or(sql.len(), |i| at + i);
        total = total.then(statement_effect(&sql[at..end], tracked));
        at = end + 1;
    }
    total
}

fn statement_effect(statement: &[u8], tracked: &impl Fn(&str) -> bool) -> Effect {
    let mut words = Words::new(statement);
    let pins = |k| Effect {
        pins: k,
        drops: Kinds::NONE,
    };
    let drops = |k| Effect {
        pins: Kinds::NONE,
        drops: k,
    };
    let Some(first) = words.next() else {
        return Effect::default();
    };
    let by_keyword = match_word(first, &KEYWORDS).map_or(Effect::default(), |k| match k {
        Keyword::Create => create(&mut words, statement),
        Keyword::Listen => pins(Kinds::LISTEN),
        Keyword::Unlisten if words.next() == Some(b"*") => drops(Kinds::LISTEN),
        Keyword::Declare if contains_words(statement, b"with", b"hold") => pins(Kinds::HOLD_CURSOR),
        Keyword::Close if next_is(&mut words, b"all") => drops(Kinds::HOLD_CURSOR),
        Keyword::Prepare if !next_is(&mut words, b"transaction") => pins(Kinds::SQL_PREPARE),
        Keyword::Deallocate => {
            let mut next = words.next();
            if next.is_some_and(|w| w.eq_ignore_ascii_case(b"prepare")) {
                next = words.next();
            }
            match next {
                Some(w) if w.eq_ignore_ascii_case(b"all") => {
                    drops(Kinds::SQL_PREPARE.with(Kinds::NAMED_STATEMENT))
                }
                _ => Effect::default(),
            }
        }
        Keyword::Set => set(&mut words, tracked),
        Keyword::Reset => match words.next() {
            Some(w) if w.eq_ignore_ascii_case(b"all") => drops(Kinds::SETTING),
            Some(w) if w.eq_ignore_ascii_case(b"role") || w.eq_ignore_ascii_case(b"session") => {
                drops(Kinds::ROLE)
            }
            // Another parameter's: a setting pgherd does not carry itself
            // changed (replayed when it can be: `relay::settings`).
            Some(w) if !w.eq_ignore_ascii_case(b"time") => match std::str::from_utf8(w) {
                Ok(name) if tracked(name) => Effect::default(),
                _ => pins(Kinds::SETTING),
            },
            _ => Effect::default(),
        },
        Keyword::Load => pins(Kinds::LOAD),
        Keyword::Discard => match words.next() {
            Some(w) if w.eq_ignore_ascii_case(b"all") => drops(Kinds::DISCARDED),
            Some(w) if w.eq_ignore_ascii_case(b"temp") || w.eq_ignore_ascii_case(b"temporary") => {
                drops(Kinds::TEMP)
            }
            _ => Effect::default(),
        },
        _ => Effect::default(),
    });
    by_keyword.then(advisory(statement))
}

/// `CREATE [OR REPLACE] [GLOBAL|LOCAL] TEMP|TEMPORARY ...`, unless the
/// table goes at commit (`ON COMMIT DROP`).
fn create(words: &mut Words<'_>, statement: &[u8]) -> Effect {
    let mut next = words.next();
    if next.is_some_and(|w| w.eq_ignore_ascii_case(b"or")) {
        words.next();
        next = words.next();
    }
    if next.is_some_and(|w| w.eq_ignore_ascii_case(b"global") || w.eq_ignore_ascii_case(b"local")) {
        next = words.next();
    }
    let temporary = next
        .is_some_and(|w| w.eq_ignore_ascii_case(b"temp") || w.eq_ignore_ascii_case(b"temporary"));
    if !temporary || contains_words(statement, b"commit", b"drop") {
        return Effect::default();
    }
    Effect {
        pins: Kinds::TEMP,
        drops: Kinds::NONE,
    }
}

/// `SET ...`: a role, or a setting pgherd does not carry itself. `SET
/// LOCAL`, `SET TRANSACTION` and `SET CONSTRAINTS` end with the
/// transaction.
fn set(words: &mut Words<'_>, tracked: &impl Fn(&str) -> bool) -> Effect {
    let pins = |k| Effect {
        pins: k,
        drops: Kinds::NONE,
    };
    let mut name = words.next();
    if name.is_some_and(|w| w.eq_ignore_ascii_case(b"session")) {
        name = words.next();
        if name.is_some_and(|w| w.eq_ignore_ascii_case(b"authorization")) {
            return pins(Kinds::ROLE);
        }
    }
    match name {
        None => Effect::default(),
        Some(w)
            if w.eq_ignore_ascii_case(b"local")
                || w.eq_ignore_ascii_case(b"transaction")
                || w.eq_ignore_ascii_case(b"constraints") =>
        {
            Effect::default()
        }
        Some(w) if w.eq_ignore_ascii_case(b"role") => pins(Kinds::ROLE),
        Some(w) => match std::str::from_utf8(w) {
            Ok(name) if tracked(name) => Effect::default(),
            _ => pins(Kinds::SETTING),
        },
    }
}

/// Session-level advisory locks taken (`pg_advisory_lock`,
/// `pg_try_advisory_lock`, their `_shared` forms) or all released
/// (`pg_advisory_unlock_all`). Transaction-level ones (`_xact_`) end with
/// the transaction; one `pg_advisory_unlock` may leave others held.
fn advisory(statement: &[u8]) -> Effect {
    let mut effect = Effect::default();
    let mut at = 0;
    while let Some(i) = memchr2(b'v', b'V', &statement[at..]) {
        effect = effect.then(advisory_at(statement, at + i));
        at += i + 1;
    }
    effect
}

/// What the word around the `v` at `v` does, if it is `advisory` (whose
/// only `v` is its third letter) in one of the lock functions' names.
fn advisory_at(text: &[u8], v: usize) -> Effect {
    let Some(word) = v.checked_sub(2).and_then(|s| text.get(s..s + 8)) else {
        return Effect::default();
    };
    if !word.eq_ignore_ascii_case(b"advisory") {
        return Effect::default();
    }
    let rest = &text[v + 6..];
    let starts = |p: &[u8]| rest.len() >= p.len() && rest[..p.len()].eq_ignore_ascii_case(p);
    if starts(b"_unlock_all") {
        Effect {
            pins: Kinds::NONE,
            drops: Kinds::ADVISORY_LOCK,
        }
    } else if starts(b"_lock") {
        Effect {
            pins: Kinds::ADVISORY_LOCK,
            drops: Kinds::NONE,
        }
    } else {
        Effect::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    Create,
    Listen,
    Unlisten,
    Declare,
    Close,
    Prepare,
    Deallocate,
    Set,
    Reset,
    Load,
    Discard,
}

const KEYWORDS: [(&[u8], Keyword); 11] = [
    (b"create", Keyword::Create),
    (b"listen", Keyword::Listen),
    (b"unlisten", Keyword::Unlisten),
    (b"declare", Keyword::Declare),
    (b"close", Keyword::Close),
    (b"prepare", Keyword::Prepare),
    (b"deallocate", Keyword::Deallocate),
    (b"set", Keyword::Set),
    (b"reset", Keyword::Reset),
    (b"load", Keyword::Load),
    (b"discard", Keyword::Discard),
];

fn match_word(word: &[u8], table: &[(&[u8], Keyword)]) -> Option<Keyword> {
    table
        .iter()
        .find(|(w, _)| w.len() == word.len() && w.eq_ignore_ascii_case(word))
        .map(|(_, k)| *k)
}

fn next_is(words: &mut Words<'_>, want: &[u8]) -> bool {
    words.next().is_some_and(|w| w.eq_ignore_ascii_case(want))
}

/// Whether `first` is followed by `second` somewhere in `statement` (words
/// apart by whitespace only).
fn contains_words(statement: &[u8], first: &[u8], second: &[u8]) -> bool {
    let mut words = Words::new(statement);
    let mut previous: Option<&[u8]> = None;
    while let Some(w) = words.next() {
        if previous.is_some_and(|p| p.eq_ignore_ascii_case(first)) && w.eq_ignore_ascii_case(second)
        {
            return true;
        }
        previous = Some(w);
    }
    false
}

/// Words of SQL text: runs of letters, digits and `_`, or single other
/// characters; whitespace and comments (`--` to the end of the line,
/// `/* */`) skipped.
struct Words<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Words<'a> {
    fn new(text: &'a [u8]) -> Words<'a> {
        Words { text, at: 0 }
    }

    fn next(&mut self) -> Option<&'a [u8]> {
        let text = self.text;
        loop {
            match text.get(self.at..)? {
                [] | [0, ..] => return None,
                [b'-', b'-', ..] => {
                    self.at = memchr(b'\n', &text[self.at..]).map_or(text.len(), |i| self.at + i);
                }
                [b'/', b'*', ..] => {
                    let rest = &text[self.at + 2..];
                    self.at = memchr::memmem::find(rest, b"*/")
                        .map_or(text.len(), |i| self.at + 2 + i + 2);
                }
                [b, ..] if b.is_ascii_whitespace() => self.at += 1,
                _ => break,
            }
        }
        let start = self.at;
        let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
        let len = text[start..].iter().take_while(|b| word(b)).count().max(1);
        self.at = start + len;
        Some(&text[start..self.at])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surely_none_agrees_with_the_whole_reading() {
        let tracked = |_: &str| false;
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "select * from t",
            "SELECT 1",
            "SELECT $1",
            "INSERT INTO t VALUES (1)",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "VALUES (1)",
        ] {
            assert!(surely_none(sql.as_bytes()), "{sql}");
            assert_eq!(effect(sql.as_bytes(), tracked), Effect::default(), "{sql}");
        }
        // Left to the whole reading (which finds state in some).
        for sql in [
            "SELECT pg_advisory_lock(1)",
            "SELECT PG_ADVISORY_LOCK(1)",
            "SELECT  pg_advisory_lock(1)",
            "SELECT\tpg_advisory_lock(1)",
            "SELECT\npg_advisory_lock(1)",
            "select",
            "SET work_mem = '1MB'",
            "CREATE TEMP TABLE t (a int)",
            "LISTEN x",
            "BEGIN; LISTEN x",
            "PREPARE p AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "RESET ALL",
            "UNLISTEN *",
            "LOAD 'x'",
            "  LISTEN x",
            "/* c */ LISTEN x",
            "-- c\nLISTEN x",
            "(SELECT pg_advisory_lock(1))",
            "UPDATE t SET a = 1",
            "\0",
        ] {
            assert!(!surely_none(sql.as_bytes()), "{sql}");
        }
    }

    fn pins(sql: &str) -> Kinds {
        effect(sql.as_bytes(), |n| {
            n.eq_ignore_ascii_case("application_name")
        })
        .pins
    }

    fn drops(sql: &str) -> Kinds {
        effect(sql.as_bytes(), |_| false).drops
    }

    #[test]
    fn statements_that_leave_state_pin_their_kind() {
        let cases = [
            ("CREATE TEMP TABLE t (a int)", Kinds::TEMP),
            ("create temporary table t as select 1", Kinds::TEMP),
            ("CREATE GLOBAL TEMPORARY TABLE t (a int)", Kinds::TEMP),
            ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", Kinds::TEMP),
            ("create temp sequence s", Kinds::TEMP),
            (
                "CREATE TEMP TABLE t (a int) ON COMMIT DELETE ROWS",
                Kinds::TEMP,
            ),
            ("LISTEN jobs", Kinds::LISTEN),
            ("  /* hi */ -- there\n listen \"Jobs\"", Kinds::LISTEN),
            ("SELECT pg_advisory_lock(1)", Kinds::ADVISORY_LOCK),
            (
                "select PG_TRY_ADVISORY_LOCK_SHARED(1, 2)",
                Kinds::ADVISORY_LOCK,
            ),
            (
                "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                Kinds::HOLD_CURSOR,
            ),
            ("PREPARE q (int) AS SELECT $1", Kinds::SQL_PREPARE),
            ("SET ROLE admin", Kinds::ROLE),
            ("SET SESSION AUTHORIZATION bob", Kinds::ROLE),
            ("SET search_path = app, public", Kinds::SETTING),
            ("set session statement_timeout to 5000", Kinds::SETTING),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
                Kinds::SETTING,
            ),
            ("LOAD 'auto_explain'", Kinds::LOAD),
            ("BEGIN; CREATE TEMP TABLE t (a int); COMMIT", Kinds::TEMP),
        ];
        for (sql, kind) in cases {
            assert_eq!(pins(sql), kind, "{sql}");
        }
    }

    #[test]
    fn statements_whose_state_ends_with_the_transaction_pin_nothing() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1",
            "CREATE TABLE t (a int)",
            "CREATE TEMP TABLE t (a int) ON COMMIT DROP",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT pg_advisory_unlock(1)",
            "DECLARE c CURSOR FOR SELECT 1",
            "PREPARE TRANSACTION 'x'",
            "SET LOCAL search_path = x",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "SET application_name = 'web'",
            "UNLISTEN jobs",
            "SELECT 'advisory'",
            "INSERT INTO log VALUES ('listen')",
            "",
            ";;",
        ] {
            assert!(pins(sql).is_empty(), "{sql}: {:?}", pins(sql));
        }
    }

    #[test]
    fn statements_that_drop_state_release_their_kind() {
        assert_eq!(drops("UNLISTEN *"), Kinds::LISTEN);
        assert_eq!(drops("DISCARD TEMP"), Kinds::TEMP);
        assert_eq!(
            drops("SELECT pg_advisory_unlock_all()"),
            Kinds::ADVISORY_LOCK
        );
        assert_eq!(drops("CLOSE ALL"), Kinds::HOLD_CURSOR);
        assert_eq!(
            drops("DEALLOCATE PREPARE ALL"),
            Kinds::SQL_PREPARE.with(Kinds::NAMED_STATEMENT)
        );
        assert_eq!(drops("RESET ALL"), Kinds::SETTING);
        assert_eq!(drops("RESET ROLE"), Kinds::ROLE);
        let all = drops("DISCARD ALL");
        assert!(
            all.contains(Kinds::TEMP) && all.contains(Kinds::LISTEN) && all.contains(Kinds::ROLE)
        );
        assert!(!all.contains(Kinds::LOAD), "no statement unloads a library");
    }

    #[test]
    fn the_order_within_a_query_counts() {
        let pinned = Kinds::NONE.after(effect(b"DISCARD ALL; LISTEN x", |_| false));
        assert_eq!(pinned, Kinds::LISTEN);
        let released = Kinds::LISTEN.after(effect(b"LISTEN x; DISCARD ALL", |_| false));
        assert!(released.is_empty());
        let kept = Kinds::TEMP.after(effect(b"UNLISTEN *", |_| false));
        assert_eq!(kept, Kinds::TEMP);
    }

    #[test]
    fn the_quick_look_and_the_careful_reading_agree() {
        let samples = [
            "SELECT 1",
            "select pg_advisory_lock(1); SELECT 2",
            "SELECT\n  pg_try_advisory_lock(1)",
            "BEGIN; CREATE TEMP TABLE t (a int); COMMIT;",
            "begin; listen x; end",
            "/* c */ SET work_mem = '1MB'",
            "LISTEN a; LISTEN b; UNLISTEN *",
            "selected_thing",
            "setx = 1",
        ];
        for sql in samples {
            let quick = effect(sql.as_bytes(), |_| false);
            let careful = statements_effect(sql.as_bytes(), &|_: &str| false);
            assert_eq!(quick, careful, "{sql}");
        }
    }

    /// What first words cannot see: documented, not silently wrong.
    #[test]
    fn the_limits_of_first_words() {
        // After a statement that is neither a keyword nor transaction
        // control, the rest of a multi-statement query is not looked at.
        assert!(pins("SELECT 1; LISTEN x").is_empty());
        // An advisory lock that is not the SELECT's first item.
        assert!(pins("SELECT id, pg_advisory_lock(id) FROM jobs").is_empty());
    }

    #[test]
    fn kinds_are_named_for_people() {
        let both = Kinds::LISTEN.with(Kinds::TEMP);
        assert_eq!(
            both.names().collect::<Vec<_>>(),
            ["temporary table", "LISTEN"]
        );
    }
}
