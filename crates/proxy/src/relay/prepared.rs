//! Named prepared statements in transaction mode.
//!
//! A driver prepares a statement once (`Parse` with a name) and executes it
//! many times (`Bind` naming it). In transaction mode consecutive
//! transactions land on different servers, so pgherd keeps the statements
//! itself:
//!
//! * each client's statements, by the name the client gave them;
//! * on each server connection, which statements it has — under pgherd's own
//!   name `pgherd_<hash of query and parameter types>`, so a statement that
//!   many clients prepare exists once per server;
//! * when a `Bind` or `Describe` names a statement the current server lacks,
//!   pgherd sends the `Parse` first and swallows its `ParseComplete`;
//! * a client `Close` closes pgherd's statement on that server;
//! * a client `Parse` of a statement the server already has is sent as
//!   `Close` + `Parse` (the client gets its `ParseComplete`; pgherd swallows
//!   the `CloseComplete`).
//!
//! Which replies to swallow is tracked per reply type in send order. A
//! failing extended-protocol message makes the server skip the rest of the
//! batch up to `Sync`, so on an `ErrorResponse` the expectations of the
//! current batch are dropped.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use pgherd_wire::frontend::{self, Bind, Parse, Target};
use pgherd_wire::{backend, frame};

/// A statement as pgherd prepares it on servers.
#[derive(Debug)]
pub(crate) struct Statement {
    hash: u64,
    /// pgherd's name for it.
    name: Vec<u8>,
    /// The whole `Parse` message under pgherd's name.
    parse: Bytes,
}

/// A client's named statements. A `BTreeMap`: 24 bytes and no allocation
/// while empty (a `HashMap` is 48, in every idle client's session), and
/// drivers name few statements per connection.
#[derive(Debug, Default)]
pub(crate) struct ClientStatements {
    by_name: BTreeMap<Vec<u8>, Arc<Statement>>,
}

/// The statements prepared on one server connection.
#[derive(Debug, Default)]
pub(crate) struct ServerStatements {
    present: HashSet<u64>,
    /// Preparation order, for eviction.
    order: VecDeque<u64>,
}

impl ServerStatements {
    /// Forgets everything (after `DISCARD ALL` or `DEALLOCATE ALL`).
    pub(crate) fn clear(&mut self) {
        self.present.clear();
        self.order.clear();
    }

    fn insert(&mut self, hash: u64) {
        if self.present.insert(hash) {
            self.order.push_back(hash);
        }
    }

    fn remove(&mut self, hash: u64) {
        if self.present.remove(&hash) {
            self.order.retain(|h| *h != hash);
        }
    }
}

/// Replies pgherd must swallow, in the order their requests were sent.
#[derive(Debug, Default)]
pub(crate) struct Expected {
    /// One entry per `Parse` sent: (swallow its ParseComplete?, batch).
    parse: VecDeque<(bool, u64)>,
    /// One entry per `Close` sent.
    close: VecDeque<(bool, u64)>,
    /// Batches (ended by Sync, Query or FunctionCall) sent / answered.
    sent: u64,
    answered: u64,
}

impl Expected {
    /// A request that ends a batch (its ReadyForQuery will come) was sent.
    pub(crate) fn batch_sent(&mut self) {
        self.sent += 1;
    }

    /// ReadyForQuery arrived.
    pub(crate) fn batch_answered(&mut self) {
        self.answered += 1;
        let answered = self.answered;
        self.parse.retain(|(_, b)| *b >= answered);
        self.close.retain(|(_, b)| *b >= answered);
    }

    /// An ErrorResponse arrived: the rest of the current batch is skipped
    /// by the server, so its remaining replies will never come.
    pub(crate) fn error(&mut self) {
        let current = self.answered;
        self.parse.retain(|(_, b)| *b != current);
        self.close.retain(|(_, b)| *b != current);
    }

    /// Whether to swallow a ParseComplete or CloseComplete (`tag`).
    pub(crate) fn swallow(&mut self, tag: u8) -> bool {
        let queue = match tag {
            backend::PARSE_COMPLETE => &mut self.parse,
            backend::CLOSE_COMPLETE => &mut self.close,
            _ => return false,
        };
        queue.pop_front().is_some_and(|(swallow, _)| swallow)
    }
}

/// What to do with a client message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rewrite {
    /// Forward it as it is.
    Keep,
    /// Send these bytes instead.
    Replace(BytesMut),
}

impl ClientStatements {
    /// The query text of the client's statement `name`.
    pub(crate) fn query(&self, name: &[u8]) -> Option<&[u8]> {
        let statement = self.by_name.get(name)?;
        Parse::from_body(frame::body(&statement.parse))?.query()
    }
}

/// Rewrites a whole client message (`Parse`, `Bind`, `Describe` or `Close`,
/// tag and length included) so it refers to pgherd's statement names,
/// preparing on the server what it lacks, and records which replies to
/// swallow. `max` bounds the statements kept per server. Malformed messages
/// are kept as they are: the server will reject them with the right error.
pub(crate) fn rewrite(
    msg: &[u8],
    client: &mut ClientStatements,
    server: &mut ServerStatements,
    expected: &mut Expected,
    max: usize,
) -> Rewrite {
    let body = frame::body(msg);
    let batch = expected.sent;
    match msg.first().copied() {
        Some(frontend::PARSE) => {
            let Some(parse) = Parse::from_body(body) else {
                return Rewrite::Keep;
            };
            if parse.name.is_empty() {
                expected.parse.push_back((false, batch));
                return Rewrite::Keep;
            }
            let mut h = DefaultHasher::new();
            parse.definition.hash(&mut h);
            let hash = h.finish();
            let name = server_name(hash).into_bytes();
            let mut whole = BytesMut::new();
            frontend::parse(&mut whole, &name, parse.definition);
            let statement = Arc::new(Statement {
                hash,
                name,
                parse: whole.freeze(),
            });
            client
                .by_name
                .insert(parse.name.to_vec(), Arc::clone(&statement));
            let mut out = BytesMut::new();
            if server.present.contains(&hash) {
                // Re-parse under the same name so the client gets its
                // ParseComplete; the CloseComplete is pgherd's.
                frontend::close(&mut out, Target::Statement(&statement.name));
                expected.close.push_back((true, batch));
            } else {
                make_room(&mut out, server, expected, max, batch);
                server.insert(hash);
            }
            out.put_slice(&statement.parse);
            expected.parse.push_back((false, batch));
            Rewrite::Replace(out)
        }
        Some(frontend::BIND) => {
            let Some(bind) = Bind::from_body(body) else {
                return Rewrite::Keep;
            };
            let Some(statement) = (!bind.statement.is_empty())
                .then(|| client.by_name.get(bind.statement))
                .flatten()
                .cloned()
            else {
                return Rewrite::Keep;
            };
            let mut out = BytesMut::new();
            ensure(&mut out, &statement, server, expected, max, batch);
            frontend::bind(&mut out, bind.portal, &statement.name, bind.rest);
            Rewrite::Replace(out)
        }
        Some(tag @ (frontend::DESCRIBE | frontend::CLOSE)) => {
            let closing = tag == frontend::CLOSE;
            let statement = match Target::from_body(body) {
                Some(Target::Statement(name)) if !name.is_empty() && closing => {
                    client.by_name.remove(name)
                }
                Some(Target::Statement(name)) if !name.is_empty() => {
                    client.by_name.get(name).cloned()
                }
                // Portals, the unnamed statement, malformed messages.
                _ => None,
            };
            let Some(statement) = statement else {
                if closing {
                    expected.close.push_back((false, batch));
                }
                return Rewrite::Keep;
            };
            let mut out = BytesMut::new();
            let target = Target::Statement(&statement.name);
            if closing {
                server.remove(statement.hash);
                expected.close.push_back((false, batch));
                frontend::close(&mut out, target);
            } else {
                ensure(&mut out, &statement, server, expected, max, batch);
                frontend::describe(&mut out, target);
            }
            Rewrite::Replace(out)
        }
        _ => Rewrite::Keep,
    }
}

/// pgherd's name for the statement whose definition hashes to `hash`.
fn server_name(hash: u64) -> String {
    format!("pgherd_{hash:016x}")
}

/// Prepares `statement` on the server first if it lacks it.
fn ensure(
    out: &mut BytesMut,
    statement: &Statement,
    server: &mut ServerStatements,
    expected: &mut Expected,
    max: usize,
    batch: u64,
) {
    if server.present.contains(&statement.hash) {
        return;
    }
    make_room(out, server, expected, max, batch);
    out.put_slice(&statement.parse);
    expected.parse.push_back((true, batch));
    server.insert(statement.hash);
}

/// Closes the oldest statements on the server while it has `max` or more.
fn make_room(
    out: &mut BytesMut,
    server: &mut ServerStatements,
    expected: &mut Expected,
    max: usize,
    batch: u64,
) {
    while server.present.len() >= max.max(1) {
        let Some(oldest) = server.order.pop_front() else {
            return;
        };
        server.present.remove(&oldest);
        frontend::close(out, Target::Statement(server_name(oldest).as_bytes()));
        expected.close.push_back((true, batch));
    }
}

impl ClientStatements {
    /// Forgets every statement (the client ran `DEALLOCATE ALL`).
    pub(crate) fn clear(&mut self) {
        self.by_name.clear();
    }
}

/// True for a simple query that drops every prepared statement of the
/// session it runs in (`DISCARD ALL`, `DEALLOCATE [PREPARE] ALL`).
pub(crate) fn drops_all_statements(query_msg: &[u8]) -> bool {
    drops_all(frame::body(query_msg))
}

/// The same test on SQL text.
pub(crate) fn drops_all(text: &[u8]) -> bool {
    // Every query passes here: reject all but `d...` without allocating.
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    if !matches!(first, Some(b'd' | b'D')) {
        return false;
    }
    let text = String::from_utf8_lossy(&text[..text.len().min(64)]).to_ascii_lowercase();
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ';' || c == '\0')
        .filter(|w| !w.is_empty())
        .take(3)
        .collect();
    matches!(
        words.as_slice(),
        ["discard", "all", ..] | ["deallocate", "all", ..] | ["deallocate", "prepare", "all"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgherd_wire::frame::put_message;

    fn msg(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_message(&mut b, tag, parts);
        b.to_vec()
    }

    fn replaced(r: Rewrite) -> Vec<u8> {
        match r {
            Rewrite::Replace(b) => b.to_vec(),
            Rewrite::Keep => panic!("expected a rewrite"),
        }
    }

    /// Splits a byte stream into (tag, body) pairs.
    fn messages(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let len = i32::from_be_bytes(b[1..5].try_into().unwrap()) as usize;
            out.push((b[0], b[5..1 + len].to_vec()));
            b = &b[1 + len..];
        }
        out
    }

    #[test]
    fn parse_then_bind_on_another_server() {
        let (mut client, mut s1, mut s2) = Default::default();
        let mut exp = Expected::default();
        let parse = msg(frontend::PARSE, &[b"s1\0", b"SELECT $1\0", &[0, 0]]);
        let out = replaced(rewrite(&parse, &mut client, &mut s1, &mut exp, 10));
        let m = messages(&out);
        assert_eq!(m.len(), 1);
        assert!(m[0].1.starts_with(b"pgherd_"));
        assert!(
            !exp.swallow(backend::PARSE_COMPLETE),
            "the client's own ParseComplete"
        );

        // Next transaction, another server: Parse is injected before Bind.
        let mut exp = Expected::default();
        let bind = msg(frontend::BIND, &[b"\0", b"s1\0", &[0, 0, 0, 0, 0, 0]]);
        let out = replaced(rewrite(&bind, &mut client, &mut s2, &mut exp, 10));
        let m = messages(&out);
        assert_eq!(
            m.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![frontend::PARSE, frontend::BIND]
        );
        assert!(m[1].1.starts_with(b"\0pgherd_"));
        assert!(
            exp.swallow(backend::PARSE_COMPLETE),
            "the injected ParseComplete is pgherd's"
        );
        // Bound again on the same server: no injection.
        let out = replaced(rewrite(&bind, &mut client, &mut s2, &mut exp, 10));
        assert_eq!(messages(&out).len(), 1);
    }

    #[test]
    fn reparse_on_a_server_that_has_it_closes_first() {
        let (mut a, mut b, mut server) = Default::default();
        let mut exp = Expected::default();
        let parse = msg(frontend::PARSE, &[b"x\0", b"SELECT 1\0", &[0, 0]]);
        rewrite(&parse, &mut a, &mut server, &mut exp, 10);
        let out = replaced(rewrite(&parse, &mut b, &mut server, &mut exp, 10));
        let tags: Vec<u8> = messages(&out).iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, vec![frontend::CLOSE, frontend::PARSE]);
        assert!(exp.swallow(backend::CLOSE_COMPLETE));
        assert!(!exp.swallow(backend::PARSE_COMPLETE) && !exp.swallow(backend::PARSE_COMPLETE));
    }

    #[test]
    fn unnamed_and_unknown_statements_pass_through() {
        let (mut c, mut s) = Default::default();
        let mut exp = Expected::default();
        let unnamed = msg(frontend::PARSE, &[b"\0", b"SELECT 1\0", &[0, 0]]);
        assert_eq!(
            rewrite(&unnamed, &mut c, &mut s, &mut exp, 10),
            Rewrite::Keep
        );
        let bind = msg(frontend::BIND, &[b"\0", b"nope\0", &[0, 0, 0, 0, 0, 0]]);
        assert_eq!(rewrite(&bind, &mut c, &mut s, &mut exp, 10), Rewrite::Keep);
        let garbage = msg(frontend::BIND, &[b"no terminator"]);
        assert_eq!(
            rewrite(&garbage, &mut c, &mut s, &mut exp, 10),
            Rewrite::Keep
        );
    }

    #[test]
    fn close_removes_from_client_and_server() {
        let (mut c, mut s) = Default::default();
        let mut exp = Expected::default();
        rewrite(
            &msg(frontend::PARSE, &[b"q\0", b"SELECT 2\0", &[0, 0]]),
            &mut c,
            &mut s,
            &mut exp,
            10,
        );
        let out = replaced(rewrite(
            &msg(frontend::CLOSE, &[b"S", b"q\0"]),
            &mut c,
            &mut s,
            &mut exp,
            10,
        ));
        assert_eq!(messages(&out)[0].0, frontend::CLOSE);
        assert!(s.present.is_empty());
        assert!(!exp.swallow(backend::PARSE_COMPLETE));
        assert!(
            !exp.swallow(backend::CLOSE_COMPLETE),
            "the client's own CloseComplete"
        );
    }

    #[test]
    fn server_cache_is_bounded() {
        let (mut c, mut s) = Default::default();
        let mut exp = Expected::default();
        for i in 0..5 {
            let q = format!("SELECT {i}\0");
            rewrite(
                &msg(
                    frontend::PARSE,
                    &[format!("s{i}\0").as_bytes(), q.as_bytes(), &[0, 0]],
                ),
                &mut c,
                &mut s,
                &mut exp,
                3,
            );
        }
        assert_eq!(s.present.len(), 3);
        // Two evictions, each a swallowed CloseComplete.
        assert!(exp.swallow(backend::CLOSE_COMPLETE) && exp.swallow(backend::CLOSE_COMPLETE));
    }

    #[test]
    fn errors_drop_the_rest_of_the_batch() {
        let mut exp = Expected::default();
        exp.parse.push_back((true, 0));
        exp.parse.push_back((false, 0));
        exp.batch_sent();
        exp.parse.push_back((true, 1));
        exp.error();
        exp.batch_answered();
        assert!(
            exp.swallow(backend::PARSE_COMPLETE),
            "the next batch's entry is intact"
        );
        assert!(exp.parse.is_empty());
    }

    #[test]
    fn statement_dropping_queries() {
        let q = |s: &str| msg(frontend::QUERY, &[s.as_bytes(), b"\0"]);
        assert!(drops_all_statements(&q("DISCARD ALL")));
        assert!(drops_all_statements(&q("  deallocate all;")));
        assert!(drops_all_statements(&q("DEALLOCATE PREPARE ALL")));
        assert!(!drops_all_statements(&q("DEALLOCATE s1")));
        assert!(!drops_all_statements(&q("SELECT 'discard all'")));
        assert!(!drops_all_statements(&q("")));
    }
}
