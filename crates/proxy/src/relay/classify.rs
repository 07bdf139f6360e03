//! The `auto` target's question: may this transaction run on a standby?
//!
//! pgherd answers from the client's first request of a transaction, and only
//! says "read" when it is sure enough; a wrong "write" costs the primary a
//! read, a wrong "read" costs a round trip (the standby refuses with 25006
//! and pgherd runs the request again on the primary, see `relay`). So:
//!
//! * the request must be one **unit** — one simple `Query`, or one
//!   extended-protocol batch up to its `Sync` — with nothing pipelined after
//!   it: the standby gets exactly that unit and nothing the client sends
//!   later;
//! * its statements must read: `SELECT`, `VALUES`, `TABLE`, `SHOW`, `EXPLAIN`
//!   (without `ANALYZE`) or `WITH` without `INSERT`/`UPDATE`/`DELETE`/
//!   `MERGE`, none with `INTO` or a locking clause (`FOR UPDATE`...). A
//!   `SELECT` of a function that writes (`nextval`) passes here and is caught
//!   by the 25006 retry;
//! * `BEGIN`/`START TRANSACTION` with `READ ONLY`: the whole transaction is
//!   the application's promise to only read.
//!
//! Words are matched case-insensitively anywhere in the text, string
//! literals and comments included: a false match only sends a read to the
//! primary.

use pgherd_wire::cstr::split_cstr_bytes;
use pgherd_wire::frame::{self, parse_header};
use pgherd_wire::frontend::{self, Bind, Parse};

use crate::relay::prepared::ClientStatements;
use crate::relay::session_state;

/// What the start of a transaction allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// The buffer is one whole unit that only reads: a standby may run it,
    /// and should it refuse with 25006, the primary runs it again.
    Read,
    /// `BEGIN ... READ ONLY`: the transaction may run on a standby.
    ReadOnlyTransaction,
    /// Anything else: the primary.
    Write,
    /// The unit is not all buffered yet: read more, then ask again.
    Incomplete,
}

/// Past this, a request is not held back for classifying: the primary.
const MAX_UNIT: usize = 64 * 1024;

/// Classifies the client's buffered bytes (the start of a transaction).
pub(crate) fn classify(buf: &[u8], statements: Option<&ClientStatements>) -> Request {
    let mut at = 0;
    let mut unnamed_parsed = false;
    loop {
        let Ok(header) = parse_header(&buf[at..], MAX_UNIT) else {
            return Request::Write;
        };
        let Some((tag, len)) = header else {
            return incomplete(buf);
        };
        let end = at + len;
        if end > buf.len() {
            return incomplete(buf);
        }
        let body = frame::body(&buf[at..end]);
        let first = at == 0;
        at = end;
        let reads = match tag {
            frontend::QUERY => {
                let text = split_cstr_bytes(body).map(|(t, _)| t).unwrap_or_default();
                if !first || at != buf.len() {
                    // Not alone: part of a batch, or with more after it.
                    return Request::Write;
                }
                return match classify_sql(text) {
                    Sql::Read => Request::Read,
                    Sql::BeginReadOnly => Request::ReadOnlyTransaction,
                    Sql::Write => Request::Write,
                };
            }
            frontend::PARSE => match Parse::from_body(body) {
                Some(parse) => {
                    unnamed_parsed |= parse.name.is_empty();
                    parse
                        .query()
                        .is_some_and(|text| classify_sql(text) == Sql::Read)
                }
                None => false,
            },
            frontend::BIND => match Bind::from_body(body) {
                Some(Bind { statement: b"", .. }) => unnamed_parsed,
                Some(bind) => statements
                    .and_then(|s| s.query(bind.statement))
                    .is_some_and(|text| classify_sql(text) == Sql::Read),
                None => false,
            },
            frontend::DESCRIBE | frontend::EXECUTE | frontend::FLUSH => true,
            // Sync ends the unit; anything after it is pipelined.
            frontend::SYNC if at == buf.len() => return Request::Read,
            frontend::SYNC => return Request::Write,
            // Close, FunctionCall, COPY data...: not a plain read.
            _ => false,
        };
        if !reads {
            return Request::Write;
        }
    }
}

fn incomplete(buf: &[u8]) -> Request {
    if buf.len() >= MAX_UNIT {
        Request::Write
    } else {
        Request::Incomplete
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Sql {
    Read,
    BeginReadOnly,
    Write,
}

/// Classifies one SQL text.
fn classify_sql(text: &[u8]) -> Sql {
    let text = strip_leading_comments(text);
    if has_second_statement(text) {
        return Sql::Write;
    }
    let mut words = words(text);
    let Some(first) = words.next() else {
        return Sql::Write;
    };
    let is = |w: &[u8], k: &str| w.eq_ignore_ascii_case(k.as_bytes());
    if is(first, "BEGIN") || is(first, "START") {
        let rest: Vec<&[u8]> = words.collect();
        let read_only = rest
            .windows(2)
            .any(|w| is(w[0], "READ") && is(w[1], "ONLY"));
        let read_write = rest
            .windows(2)
            .any(|w| is(w[0], "READ") && is(w[1], "WRITE"));
        return if read_only && !read_write {
            Sql::BeginReadOnly
        } else {
            Sql::Write
        };
    }
    let reader = ["SELECT", "VALUES", "TABLE", "SHOW", "WITH", "EXPLAIN"]
        .iter()
        .any(|k| is(first, k));
    if !reader {
        return Sql::Write;
    }
    let mut previous: &[u8] = b"";
    for w in words {
        let writes = [
            "INTO", "INSERT", "UPDATE", "DELETE", "MERGE", "ANALYZE", "ANALYSE",
        ]
        .iter()
        .any(|k| is(w, k))
            || (is(previous, "FOR") && (is(w, "SHARE") || is(w, "NO") || is(w, "KEY")));
        if writes {
            return Sql::Write;
        }
        previous = w;
    }
    // Session state (`SELECT pg_advisory_lock(1)`) pins the client to the
    // server it lands on, and a client pinned to a standby could not write.
    if !session_state::effect(text, |_| false).pins.is_empty() {
        return Sql::Write;
    }
    Sql::Read
}

/// The text after leading whitespace and comments.
fn strip_leading_comments(mut text: &[u8]) -> &[u8] {
    loop {
        let trimmed = text.trim_ascii_start();
        if let Some(rest) = trimmed.strip_prefix(b"--") {
            text = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(&[][..], |n| &rest[n + 1..]);
        } else if let Some(rest) = trimmed.strip_prefix(b"/*") {
            text = rest
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(&[][..], |n| &rest[n + 2..]);
        } else {
            return trimmed;
        }
    }
}

/// A `;` followed by anything but whitespace: more than one statement
/// (or a `;` inside a literal: then the primary, which is safe).
fn has_second_statement(text: &[u8]) -> bool {
    match text.iter().position(|&b| b == b';') {
        Some(i) => !text[i + 1..].trim_ascii().is_empty(),
        None => false,
    }
}

/// The identifier-like words of `text`.
fn words(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn sql(text: &str) -> Sql {
        classify_sql(text.as_bytes())
    }

    #[test]
    fn reads() {
        for text in [
            "SELECT 1",
            "  select * from t where a = 'x';  ",
            "-- comment\nSELECT nextval('s')",
            "/* c */ VALUES (1)",
            "TABLE t",
            "SHOW TimeZone",
            "EXPLAIN SELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "SELECT * FROM t FOR each_thing",
        ] {
            assert_eq!(sql(text), Sql::Read, "{text}");
        }
    }

    #[test]
    fn writes() {
        for text in [
            "INSERT INTO t VALUES (1)",
            "update t set a = 1",
            "SELECT * INTO new_t FROM t",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "SELECT * FROM t FOR SHARE",
            "select * from t for key share",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            "SELECT 1; DELETE FROM t",
            "BEGIN",
            "BEGIN READ WRITE",
            "START TRANSACTION READ ONLY, READ WRITE",
            "CALL p()",
            "",
            "-- only a comment",
            // Session state: the client keeps the server it lands on.
            "SELECT pg_advisory_lock(7)",
        ] {
            assert_eq!(sql(text), Sql::Write, "{text}");
        }
    }

    #[test]
    fn read_only_transactions() {
        for text in [
            "BEGIN READ ONLY",
            "begin transaction isolation level repeatable read, read only",
            "START TRANSACTION READ ONLY",
        ] {
            assert_eq!(sql(text), Sql::BeginReadOnly, "{text}");
        }
    }

    fn query(text: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        frontend::query(&mut b, text);
        b.to_vec()
    }

    fn batch(parse_name: &str, bind_name: &str, text: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        if !text.is_empty() {
            let definition = format!("{text}\0\0\0");
            frontend::parse(&mut b, parse_name.as_bytes(), definition.as_bytes());
        }
        frontend::bind(&mut b, b"", bind_name.as_bytes(), b"\0\0\0\0\0\0");
        frontend::execute(&mut b, b"");
        frontend::sync(&mut b);
        b.to_vec()
    }

    #[test]
    fn units() {
        let q = query("SELECT 1");
        assert_eq!(classify(&q, None), Request::Read);
        assert_eq!(classify(&q[..q.len() - 1], None), Request::Incomplete);
        assert_eq!(classify(&q[..3], None), Request::Incomplete);
        assert_eq!(classify(&query("DELETE FROM t"), None), Request::Write);
        assert_eq!(
            classify(&query("BEGIN READ ONLY"), None),
            Request::ReadOnlyTransaction
        );
        // Something pipelined after the unit: not held back, primary.
        let mut two = q.clone();
        two.extend(query("SELECT 2"));
        assert_eq!(classify(&two, None), Request::Write);

        let b = batch("", "", "SELECT $1");
        assert_eq!(classify(&b, None), Request::Read);
        assert_eq!(
            classify(&batch("", "", "UPDATE t SET a = $1"), None),
            Request::Write
        );
        // Bind of the unnamed statement without a Parse in the unit.
        assert_eq!(classify(&batch("", "", ""), None), Request::Write);
    }

    #[test]
    fn named_statements_are_classified_by_their_query() {
        let mut statements = ClientStatements::default();
        let mut server = Default::default();
        let mut expected = Default::default();
        let mut parse = BytesMut::new();
        frontend::parse(&mut parse, b"s1", b"SELECT 1\0\0\0");
        crate::relay::prepared::rewrite(&parse, &mut statements, &mut server, &mut expected, 10);
        let b = batch("", "s1", "");
        assert_eq!(classify(&b, Some(&statements)), Request::Read);
        assert_eq!(
            classify(&batch("", "s2", ""), Some(&statements)),
            Request::Write
        );
        assert_eq!(classify(&b, None), Request::Write);
    }
}
