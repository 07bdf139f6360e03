//! Views of the client messages the proxy acts on, and encoders for the
//! messages it sends to servers itself.

use bytes::BytesMut;

use crate::cstr::{split_cstr, split_cstr_bytes};
use crate::frame::put_message;

/// `Terminate`: the client is leaving.
pub const TERMINATE: u8 = b'X';
/// `PasswordMessage`, `SASLInitialResponse` and `SASLResponse` share this tag.
pub const PASSWORD: u8 = b'p';
/// `Query` (simple protocol).
pub const QUERY: u8 = b'Q';
/// `FunctionCall` (the fast-path interface): a request of its own, like `Query`.
pub const FUNCTION_CALL: u8 = b'F';
/// `Parse`: prepares a statement, named or unnamed.
pub const PARSE: u8 = b'P';
/// `Bind`: a portal from a prepared statement and parameters.
pub const BIND: u8 = b'B';
/// `Describe` a statement or a portal.
pub const DESCRIBE: u8 = b'D';
/// `Execute` a portal.
pub const EXECUTE: u8 = b'E';
/// `Close` a statement or a portal.
pub const CLOSE: u8 = b'C';
/// `Sync`: ends an extended-protocol batch; the server answers ReadyForQuery.
pub const SYNC: u8 = b'S';
/// `Flush`: asks for pending replies without ending the batch.
pub const FLUSH: u8 = b'H';
/// `CopyData` from the client (COPY FROM STDIN, replication feedback).
pub const COPY_DATA: u8 = b'd';
/// `CopyDone` from the client.
pub const COPY_DONE: u8 = b'c';
/// `CopyFail` from the client.
pub const COPY_FAIL: u8 = b'f';

/// Whether a client may send a message of this type once logged in
/// (PostgreSQL's `postgres.c` answers any other with FATAL 08P01 "invalid
/// frontend message type").
pub fn is_session_message(tag: u8) -> bool {
    matches!(
        tag,
        QUERY
            | FUNCTION_CALL
            | PARSE
            | BIND
            | DESCRIBE
            | EXECUTE
            | CLOSE
            | SYNC
            | FLUSH
            | COPY_DATA
            | COPY_DONE
            | COPY_FAIL
            | TERMINATE
    )
}

/// A `Parse` body: the statement's name (empty for the unnamed statement)
/// and its definition, the query text with its NUL and the parameter types
/// exactly as sent, so a rewrite can forward them without re-encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub definition: &'a [u8],
}

impl<'a> Parse<'a> {
    pub fn from_body(body: &'a [u8]) -> Option<Self> {
        let (name, definition) = split_cstr_bytes(body)?;
        Some(Parse { name, definition })
    }

    /// The query text, without its NUL.
    pub fn query(&self) -> Option<&'a [u8]> {
        Some(split_cstr_bytes(self.definition)?.0)
    }
}

/// A `Bind` body: portal and statement names, then the parameter formats,
/// values and result formats as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub rest: &'a [u8],
}

impl<'a> Bind<'a> {
    pub fn from_body(body: &'a [u8]) -> Option<Self> {
        let (portal, rest) = split_cstr_bytes(body)?;
        let (statement, rest) = split_cstr_bytes(rest)?;
        Some(Bind {
            portal,
            statement,
            rest,
        })
    }
}

/// What a `Describe` or `Close` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Statement(&'a [u8]),
    Portal(&'a [u8]),
}

impl<'a> Target<'a> {
    /// Reads the body of a `Describe` or `Close`: `S` or `P`, then the name.
    pub fn from_body(body: &'a [u8]) -> Option<Self> {
        let (&kind, rest) = body.split_first()?;
        let (name, []) = split_cstr_bytes(rest)? else {
            return None;
        };
        match kind {
            b'S' => Some(Target::Statement(name)),
            b'P' => Some(Target::Portal(name)),
            _ => None,
        }
    }

    fn kind(self) -> (u8, &'a [u8]) {
        match self {
            Target::Statement(name) => (b'S', name),
            Target::Portal(name) => (b'P', name),
        }
    }
}

/// The password in a `PasswordMessage` body (cleartext or `md5...`).
pub fn password(body: &[u8]) -> Option<&str> {
    match split_cstr(body)? {
        (pw, []) => Some(pw),
        _ => None,
    }
}

/// A `SASLInitialResponse`: the mechanism chosen and the client-first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    pub mechanism: &'a str,
    /// `None` when the client sent length -1 (no initial response).
    pub data: Option<&'a [u8]>,
}

impl<'a> SaslInitialResponse<'a> {
    pub fn parse(body: &'a [u8]) -> Option<Self> {
        let (mechanism, rest) = split_cstr(body)?;
        let len_bytes: [u8; 4] = rest.get(..4)?.try_into().ok()?;
        let len = i32::from_be_bytes(len_bytes);
        let rest = &rest[4..];
        let data = match len {
            -1 if rest.is_empty() => None,
            n if n >= 0 && n as usize == rest.len() => Some(rest),
            _ => return None,
        };
        Some(SaslInitialResponse { mechanism, data })
    }
}

/// Appends a simple `Query` message.
pub fn query(buf: &mut BytesMut, sql: &str) {
    put_message(buf, QUERY, &[sql.as_bytes(), b"\0"]);
}

/// Appends a `Terminate` message.
pub fn terminate(buf: &mut BytesMut) {
    put_message(buf, TERMINATE, &[]);
}

/// Appends a `Parse` of `definition` (as in [`Parse::definition`]) under `name`.
pub fn parse(buf: &mut BytesMut, name: &[u8], definition: &[u8]) {
    put_message(buf, PARSE, &[name, b"\0", definition]);
}

/// Appends a `Bind` (`rest` as in [`Bind::rest`]).
pub fn bind(buf: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    put_message(buf, BIND, &[portal, b"\0", statement, b"\0", rest]);
}

/// Appends a `Describe` of `target`.
pub fn describe(buf: &mut BytesMut, target: Target<'_>) {
    let (kind, name) = target.kind();
    put_message(buf, DESCRIBE, &[&[kind], name, b"\0"]);
}

/// Appends a `Close` of `target`.
pub fn close(buf: &mut BytesMut, target: Target<'_>) {
    let (kind, name) = target.kind();
    put_message(buf, CLOSE, &[&[kind], name, b"\0"]);
}

/// Appends a `Sync`.
pub fn sync(buf: &mut BytesMut) {
    put_message(buf, SYNC, &[]);
}

/// Appends an `Execute` of `portal` with no row limit.
pub fn execute(buf: &mut BytesMut, portal: &[u8]) {
    put_message(buf, EXECUTE, &[portal, b"\0\0\0\0\0"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_message() {
        assert_eq!(password(b"secret\0"), Some("secret"));
        assert_eq!(password(b"secret"), None);
        assert_eq!(password(b"a\0b"), None);
    }

    #[test]
    fn sasl_initial_response() {
        let body = b"SCRAM-SHA-256\0\0\0\0\x03abc";
        let r = SaslInitialResponse::parse(body).unwrap();
        assert_eq!(r.mechanism, "SCRAM-SHA-256");
        assert_eq!(r.data, Some(&b"abc"[..]));
        let none = SaslInitialResponse::parse(b"M\0\xff\xff\xff\xff").unwrap();
        assert_eq!(none.data, None);
        assert!(SaslInitialResponse::parse(b"M\0\0\0\0\x09abc").is_none());
        assert!(SaslInitialResponse::parse(b"M\0\0\0").is_none());
    }

    #[test]
    fn extended_protocol_views_read_what_the_encoders_write() {
        let mut b = BytesMut::new();
        parse(&mut b, b"s1", b"SELECT $1\0\0\x01\0\0\0\x17");
        assert_eq!(b[0], PARSE);
        let p = Parse::from_body(&b[5..]).unwrap();
        assert_eq!(p.name, b"s1");
        assert_eq!(p.query(), Some(&b"SELECT $1"[..]));
        b.clear();
        bind(&mut b, b"", b"s1", b"\0\0\0\0\0\0");
        let bound = Bind::from_body(&b[5..]).unwrap();
        assert_eq!((bound.portal, bound.statement), (&b""[..], &b"s1"[..]));
        assert_eq!(bound.rest, b"\0\0\0\0\0\0");
        type Encoder = fn(&mut BytesMut, Target<'static>);
        for (encode, tag) in [(describe as Encoder, DESCRIBE), (close, CLOSE)] {
            b.clear();
            encode(&mut b, Target::Statement(b"s1"));
            assert_eq!(b[0], tag);
            assert_eq!(Target::from_body(&b[5..]), Some(Target::Statement(b"s1")));
            b.clear();
            encode(&mut b, Target::Portal(b""));
            assert_eq!(Target::from_body(&b[5..]), Some(Target::Portal(b"")));
        }
        assert_eq!(Target::from_body(b"Xname\0"), None);
        assert_eq!(Target::from_body(b"Sname\0junk"), None);
        assert_eq!(Target::from_body(b"Sname"), None);
        assert_eq!(Bind::from_body(b"portal\0stmt"), None);
        assert_eq!(Parse::from_body(b"no nul"), None);
    }

    #[test]
    fn encoders() {
        let mut b = BytesMut::new();
        query(&mut b, "DISCARD ALL");
        terminate(&mut b);
        assert_eq!(&b[..], b"Q\0\0\0\x10DISCARD ALL\0X\0\0\0\x04");
    }
}
