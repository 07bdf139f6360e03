//! Views of the client messages the proxy acts on, and encoders for the
//! messages it sends to servers itself.

use bytes::BytesMut;

use crate::cstr::split_cstr;
use crate::frame::put_message;

/// `Terminate`: the client is leaving.
pub const TERMINATE: u8 = b'X';
/// `PasswordMessage`, `SASLInitialResponse` and `SASLResponse` share this tag.
pub const PASSWORD: u8 = b'p';
/// `Query` (simple protocol).
pub const QUERY: u8 = b'Q';

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
    fn encoders() {
        let mut b = BytesMut::new();
        query(&mut b, "DISCARD ALL");
        terminate(&mut b);
        assert_eq!(&b[..], b"Q\0\0\0\x10DISCARD ALL\0X\0\0\0\x04");
    }
}
