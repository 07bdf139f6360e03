//! Views of the server messages the proxy acts on, and encoders for the
//! backend messages pgherd writes to clients itself (authentication, errors,
//! key data, ReadyForQuery, and the admin console's result sets).

use bytes::{BufMut, BytesMut};

use crate::cstr::split_cstr;
use crate::frame::put_message;

/// `ReadyForQuery`: the server finished a request and reports its transaction status.
pub const READY_FOR_QUERY: u8 = b'Z';
/// `ErrorResponse`.
pub const ERROR_RESPONSE: u8 = b'E';
/// `ParameterStatus`.
pub const PARAMETER_STATUS: u8 = b'S';
/// `BackendKeyData`.
pub const BACKEND_KEY_DATA: u8 = b'K';
/// `NoticeResponse`.
pub const NOTICE_RESPONSE: u8 = b'N';
/// `Authentication*` requests and `AuthenticationOk`.
pub const AUTHENTICATION: u8 = b'R';
/// `NegotiateProtocolVersion`.
pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
/// `ParseComplete`.
pub const PARSE_COMPLETE: u8 = b'1';
/// `BindComplete`.
pub const BIND_COMPLETE: u8 = b'2';
/// `CloseComplete`.
pub const CLOSE_COMPLETE: u8 = b'3';
/// `ParameterDescription`.
pub const PARAMETER_DESCRIPTION: u8 = b't';
/// `RowDescription`.
pub const ROW_DESCRIPTION: u8 = b'T';
/// `NoData`.
pub const NO_DATA: u8 = b'n';
/// `DataRow`.
pub const DATA_ROW: u8 = b'D';
/// `CommandComplete`.
pub const COMMAND_COMPLETE: u8 = b'C';
/// `EmptyQueryResponse`.
pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
/// `PortalSuspended`.
pub const PORTAL_SUSPENDED: u8 = b's';
/// `NotificationResponse` (LISTEN/NOTIFY).
pub const NOTIFICATION_RESPONSE: u8 = b'A';
/// `FunctionCallResponse`.
pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
/// `CopyInResponse`.
pub const COPY_IN_RESPONSE: u8 = b'G';
/// `CopyOutResponse`.
pub const COPY_OUT_RESPONSE: u8 = b'H';
/// `CopyBothResponse` (replication).
pub const COPY_BOTH_RESPONSE: u8 = b'W';
/// `CopyData` from the server.
pub const COPY_DATA: u8 = b'd';
/// `CopyDone` from the server.
pub const COPY_DONE: u8 = b'c';

/// Transaction status reported by `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// The status in a whole `ReadyForQuery` message (tag and length included).
pub fn ready_for_query_status(msg: &[u8]) -> Option<TxStatus> {
    match msg {
        [READY_FOR_QUERY, 0, 0, 0, 5, s] => TxStatus::from_byte(*s),
        _ => None,
    }
}

/// The fields of an ErrorResponse or NoticeResponse that pgherd reads or writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// `ERROR`, `FATAL`, ...
    pub severity: String,
    /// SQLSTATE, five characters.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorFields {
    /// A `FATAL` error: the connection is closed right after it.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: "FATAL".into(),
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Reads the fields of an ErrorResponse/NoticeResponse *body*.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let mut f = ErrorFields::fatal("", "");
        f.severity.clear();
        let mut rest = body;
        loop {
            let (&kind, after) = rest.split_first()?;
            if kind == 0 {
                return Some(f);
            }
            let (value, after) = split_cstr(after)?;
            match kind {
                // `V` is the non-localized severity; prefer it when present.
                b'V' => f.severity = value.to_owned(),
                b'S' if f.severity.is_empty() => f.severity = value.to_owned(),
                b'C' => f.code = value.to_owned(),
                b'M' => f.message = value.to_owned(),
                b'D' => f.detail = Some(value.to_owned()),
                b'H' => f.hint = Some(value.to_owned()),
                _ => {}
            }
            rest = after;
        }
    }

    /// An `ERROR`: the statement failed, the session goes on.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: "ERROR".into(),
            ..ErrorFields::fatal(code, message)
        }
    }

    /// A `NOTICE` (SQLSTATE 00000) to send with [`ErrorFields::encode_notice`].
    pub fn notice(message: impl Into<String>) -> Self {
        ErrorFields {
            severity: "NOTICE".into(),
            ..ErrorFields::fatal(crate::sqlstate::SUCCESSFUL_COMPLETION, message)
        }
    }

    /// Appends this error as an ErrorResponse message.
    pub fn encode(&self, buf: &mut BytesMut) {
        self.encode_as(buf, ERROR_RESPONSE);
    }

    /// Appends these fields as a NoticeResponse message.
    pub fn encode_notice(&self, buf: &mut BytesMut) {
        self.encode_as(buf, NOTICE_RESPONSE);
    }

    fn encode_as(&self, buf: &mut BytesMut, tag: u8) {
        let start = buf.len();
        buf.put_u8(tag);
        buf.put_i32(0);
        for (kind, value) in [
            (b'S', Some(&self.severity)),
            (b'V', Some(&self.severity)),
            (b'C', Some(&self.code)),
            (b'M', Some(&self.message)),
            (b'D', self.detail.as_ref()),
            (b'H', self.hint.as_ref()),
        ] {
            if let Some(v) = value {
                buf.put_u8(kind);
                put_cstr(buf, v);
            }
        }
        buf.put_u8(0);
        patch_len(buf, start);
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

/// A `ParameterStatus` body: name and value.
pub fn parameter_status_view(body: &[u8]) -> Option<(&str, &str)> {
    let (name, rest) = split_cstr(body)?;
    match split_cstr(rest)? {
        (value, []) => Some((name, value)),
        _ => None,
    }
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

/// Writes the length of the message that starts at `start` into its header.
fn patch_len(buf: &mut BytesMut, start: usize) {
    let len = (buf.len() - start - 1) as i32;
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

fn auth_header(buf: &mut BytesMut, code: i32, extra: usize) {
    buf.put_u8(AUTHENTICATION);
    buf.put_i32((8 + extra) as i32);
    buf.put_i32(code);
}

/// `AuthenticationOk`.
pub fn authentication_ok(buf: &mut BytesMut) {
    auth_header(buf, 0, 0);
}

/// `AuthenticationCleartextPassword`.
pub fn authentication_cleartext(buf: &mut BytesMut) {
    auth_header(buf, 3, 0);
}

/// `AuthenticationMD5Password` with its salt.
pub fn authentication_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    auth_header(buf, 5, 4);
    buf.put_slice(&salt);
}

/// `AuthenticationSASL` offering `mechanisms`.
pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    let extra: usize = mechanisms.iter().map(|m| m.len() + 1).sum::<usize>() + 1;
    auth_header(buf, 10, extra);
    for m in mechanisms {
        put_cstr(buf, m);
    }
    buf.put_u8(0);
}

/// `AuthenticationSASLContinue` carrying the server-first message.
pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    auth_header(buf, 11, data.len());
    buf.put_slice(data);
}

/// `AuthenticationSASLFinal` carrying the server-final message.
pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    auth_header(buf, 12, data.len());
    buf.put_slice(data);
}

/// `ParameterStatus`.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    put_message(
        buf,
        PARAMETER_STATUS,
        &[name.as_bytes(), b"\0", value.as_bytes(), b"\0"],
    );
}

/// `BackendKeyData` (protocol 3.0: a four byte secret).
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: [u8; 4]) {
    put_message(buf, BACKEND_KEY_DATA, &[&pid.to_be_bytes(), &secret]);
}

/// `ReadyForQuery`.
pub fn ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    put_message(buf, READY_FOR_QUERY, &[&[status.as_byte()]]);
}

/// Type OIDs of the columns pgherd's own result sets use.
pub mod oid {
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const TEXT: u32 = 25;
    pub const NUMERIC: u32 = 1700;
}

/// `RowDescription` for text-format columns of the given names and types.
pub fn row_description(buf: &mut BytesMut, columns: &[(&str, u32)]) {
    let start = buf.len();
    buf.put_u8(ROW_DESCRIPTION);
    buf.put_i32(0);
    buf.put_i16(columns.len() as i16);
    for (name, type_oid) in columns {
        put_cstr(buf, name);
        buf.put_i32(0); // table OID
        buf.put_i16(0); // column number
        buf.put_u32(*type_oid);
        let size: i16 = match *type_oid {
            oid::INT4 => 4,
            oid::INT8 => 8,
            _ => -1,
        };
        buf.put_i16(size);
        buf.put_i32(-1); // type modifier
        buf.put_i16(0); // text format
    }
    patch_len(buf, start);
}

/// `DataRow` of text values (`None` is NULL).
pub fn data_row<'a>(buf: &mut BytesMut, values: impl ExactSizeIterator<Item = Option<&'a str>>) {
    let start = buf.len();
    buf.put_u8(DATA_ROW);
    buf.put_i32(0);
    buf.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                buf.put_i32(v.len() as i32);
                buf.put_slice(v.as_bytes());
            }
            None => buf.put_i32(-1),
        }
    }
    patch_len(buf, start);
}

/// `CommandComplete` with its tag (`SHOW`, `PAUSE`, `SELECT 3`...).
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    put_message(buf, COMMAND_COMPLETE, &[tag.as_bytes(), b"\0"]);
}

/// `EmptyQueryResponse`.
pub fn empty_query_response(buf: &mut BytesMut) {
    put_message(buf, EMPTY_QUERY_RESPONSE, &[]);
}

/// `NegotiateProtocolVersion`: the newest minor version pgherd speaks and the
/// protocol options it did not recognise.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: i32, unsupported: &[String]) {
    let start = buf.len();
    buf.put_u8(NEGOTIATE_PROTOCOL_VERSION);
    buf.put_i32(0);
    buf.put_i32(3 << 16 | minor);
    buf.put_i32(unsupported.len() as i32);
    for o in unsupported {
        put_cstr(buf, o);
    }
    patch_len(buf, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::next_frame;

    #[test]
    fn error_response_round_trip() {
        let e = ErrorFields::fatal(
            crate::sqlstate::INVALID_PASSWORD,
            "password authentication failed for user \"x\"",
        )
        .with_hint("check the password");
        let mut buf = BytesMut::new();
        e.encode(&mut buf);
        let f = next_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(f.tag, b'E');
        assert_eq!(ErrorFields::parse(&f.body), Some(e));
    }

    #[test]
    fn error_response_bytes() {
        let mut buf = BytesMut::new();
        ErrorFields::fatal(crate::sqlstate::PROTOCOL_VIOLATION, "bad").encode(&mut buf);
        assert_eq!(
            &buf[..],
            b"E\0\0\0\x1fSFATAL\0VFATAL\0C08P01\0Mbad\0\0".as_slice()
        );
    }

    #[test]
    fn result_set_bytes() {
        let mut buf = BytesMut::new();
        row_description(&mut buf, &[("a", oid::TEXT), ("n", oid::INT4)]);
        data_row(&mut buf, [Some("x"), None].into_iter());
        command_complete(&mut buf, "SHOW");
        let t = next_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(t.tag, b'T');
        assert_eq!(
            &t.body[..],
            b"\0\x02a\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0\
              n\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0"
                .as_slice()
        );
        let d = next_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(&d.body[..], b"\0\x02\0\0\0\x01x\xff\xff\xff\xff".as_slice());
        let c = next_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!((c.tag, &c.body[..]), (b'C', b"SHOW\0".as_slice()));
        let mut n = BytesMut::new();
        ErrorFields::notice("hi").encode_notice(&mut n);
        let f = next_frame(&mut n, 1 << 20).unwrap().unwrap();
        assert_eq!(f.tag, b'N');
        assert_eq!(ErrorFields::parse(&f.body).unwrap().severity, "NOTICE");
    }

    #[test]
    fn error_parse_rejects_truncation() {
        assert!(ErrorFields::parse(b"SERROR\0C123").is_none());
        assert!(ErrorFields::parse(b"").is_none());
    }

    #[test]
    fn ready_for_query_status_view() {
        assert_eq!(
            ready_for_query_status(b"Z\0\0\0\x05I"),
            Some(TxStatus::Idle)
        );
        assert_eq!(
            ready_for_query_status(b"Z\0\0\0\x05E"),
            Some(TxStatus::Failed)
        );
        assert_eq!(ready_for_query_status(b"Z\0\0\0\x05Q"), None);
        assert_eq!(ready_for_query_status(b"Z\0\0\0\x06II"), None);
    }

    #[test]
    fn auth_and_startup_encoders() {
        let mut b = BytesMut::new();
        authentication_ok(&mut b);
        assert_eq!(&b[..], b"R\0\0\0\x08\0\0\0\0");
        b.clear();
        authentication_sasl(&mut b, &["SCRAM-SHA-256"]);
        assert_eq!(&b[..], b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
        b.clear();
        authentication_md5(&mut b, [1, 2, 3, 4]);
        assert_eq!(&b[..], b"R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\x04");
        b.clear();
        backend_key_data(&mut b, 7, [9, 9, 9, 9]);
        assert_eq!(&b[..], b"K\0\0\0\x0c\0\0\0\x07\x09\x09\x09\x09");
        b.clear();
        parameter_status(&mut b, "a", "b");
        assert_eq!(parameter_status_view(&b[5..]), Some(("a", "b")));
        b.clear();
        negotiate_protocol_version(&mut b, 0, &["_pq_.x".into()]);
        assert_eq!(&b[..], b"v\0\0\0\x13\0\x03\0\0\0\0\0\x01_pq_.x\0");
    }
}

/// An `Authentication*` request from a server (tag `R`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    /// SASL, with the mechanisms offered.
    Sasl(Vec<&'a str>),
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    /// Kerberos, GSS, SSPI: methods pgherd cannot answer.
    Other(i32),
}

impl<'a> AuthRequest<'a> {
    /// Parses the body of an `R` message.
    pub fn parse(body: &'a [u8]) -> Option<Self> {
        let code = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
        let rest = &body[4..];
        Some(match code {
            0 => AuthRequest::Ok,
            3 => AuthRequest::Cleartext,
            5 => AuthRequest::Md5 {
                salt: rest.try_into().ok()?,
            },
            10 => {
                let mut mechanisms = Vec::new();
                let mut rest = rest;
                loop {
                    let (m, after) = split_cstr(rest)?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m);
                    rest = after;
                }
                AuthRequest::Sasl(mechanisms)
            }
            11 => AuthRequest::SaslContinue(rest),
            12 => AuthRequest::SaslFinal(rest),
            other => AuthRequest::Other(other),
        })
    }
}

/// The process ID and secret key of a `BackendKeyData` body. The secret is
/// 4 bytes in protocol 3.0 (the version pgherd speaks to servers).
pub fn backend_key_data_view(body: &[u8]) -> Option<(i32, [u8; 4])> {
    let pid = i32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    let secret: [u8; 4] = body.get(4..)?.try_into().ok()?;
    Some((pid, secret))
}

#[cfg(test)]
mod view_tests {
    use super::*;

    #[test]
    fn auth_requests() {
        assert_eq!(AuthRequest::parse(b"\0\0\0\0"), Some(AuthRequest::Ok));
        assert_eq!(
            AuthRequest::parse(b"\0\0\0\x05abcd"),
            Some(AuthRequest::Md5 { salt: *b"abcd" })
        );
        assert_eq!(AuthRequest::parse(b"\0\0\0\x05abc"), None);
        assert_eq!(
            AuthRequest::parse(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"),
            Some(AuthRequest::Sasl(vec![
                "SCRAM-SHA-256-PLUS",
                "SCRAM-SHA-256"
            ]))
        );
        assert_eq!(
            AuthRequest::parse(b"\0\0\0\x0bxyz"),
            Some(AuthRequest::SaslContinue(b"xyz"))
        );
        assert_eq!(
            AuthRequest::parse(b"\0\0\0\x07"),
            Some(AuthRequest::Other(7))
        );
        assert_eq!(AuthRequest::parse(b"\0\0"), None);
    }

    #[test]
    fn key_data() {
        assert_eq!(
            backend_key_data_view(b"\0\0\x01\0abcd"),
            Some((256, *b"abcd"))
        );
        assert_eq!(backend_key_data_view(b"\0\0\x01\0abc"), None);
    }
}
