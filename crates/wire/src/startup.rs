//! The untagged packets a client may send before its session starts.
//!
//! The first packet on a connection has no tag: `len: i32`, `code: i32`, body.
//! The code tells a StartupMessage (protocol `major << 16 | minor`) from the
//! special requests (SSL, GSS encryption, cancel). PostgreSQL refuses startup
//! packets over 10,000 bytes; so does pgherd, before allocating.

use bytes::{Buf, Bytes, BytesMut};

use crate::cstr::split_cstr;

/// PostgreSQL's own limit for a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// A whole SSLRequest, as a client sends it to a server.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// The one-byte answer to an encryption request: go ahead with the handshake.
pub const ENCRYPTION_ACCEPTED: u8 = b'S';
/// The one-byte answer to an encryption request: go on in plain text.
pub const ENCRYPTION_REFUSED: u8 = b'N';

/// Which encryption a packet's first eight bytes (length and code) ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncryptionRequest {
    Ssl,
    Gss,
}

impl EncryptionRequest {
    /// Reads a packet's head; `None` for any other packet. A server reads
    /// exactly these eight bytes first, so that nothing meant for the TLS
    /// handshake is taken as plain text.
    pub fn from_head(head: &[u8; 8]) -> Option<Self> {
        let [l0, l1, l2, l3, c0, c1, c2, c3] = *head;
        if i32::from_be_bytes([l0, l1, l2, l3]) != 8 {
            return None;
        }
        match i32::from_be_bytes([c0, c1, c2, c3]) {
            SSL_REQUEST_CODE => Some(EncryptionRequest::Ssl),
            GSSENC_REQUEST_CODE => Some(EncryptionRequest::Gss),
            _ => None,
        }
    }
}
/// Protocol 3.0, the only major version in use since PostgreSQL 7.4.
pub const PROTOCOL_3_0: i32 = 3 << 16;

/// A decoded startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// A StartupMessage for protocol 3.`minor`.
    Startup(StartupMessage),
    SslRequest,
    GssEncRequest,
    /// A CancelRequest. The secret is 4 bytes in protocol 3.0 and up to 256 in 3.2.
    Cancel {
        pid: i32,
        secret: Bytes,
    },
}

/// The parameters of a StartupMessage, in the order the client sent them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartupMessage {
    pub minor_version: u16,
    /// Ordinary parameters (`user`, `database`, `options`, GUCs...).
    pub params: Vec<(String, String)>,
    /// Protocol options (`_pq_.*`), which the proxy does not support and must
    /// list in a NegotiateProtocolVersion reply.
    pub protocol_options: Vec<String>,
}

impl StartupMessage {
    /// The value of parameter `name`, if the client sent it.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a startup packet was refused. Each maps to an `08P01` error (or, for an
/// unsupported protocol, `0A000`) before the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid length of startup packet: {0}")]
    BadLength(i32),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: expected terminator as last byte")]
    BadLayout,
    #[error("invalid cancel request")]
    BadCancel,
}

/// Decodes the startup-phase packet at the front of `buf`, consuming it.
/// `Ok(None)` means more bytes are needed; nothing is consumed then.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_PACKET_LEN as i32).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    let len = len as usize;
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    let code = packet.get_i32();
    let body = packet.freeze();
    let decoded = match code {
        SSL_REQUEST_CODE if body.is_empty() => StartupPacket::SslRequest,
        GSSENC_REQUEST_CODE if body.is_empty() => StartupPacket::GssEncRequest,
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => return Err(StartupError::BadLength(len as i32)),
        CANCEL_REQUEST_CODE => decode_cancel(body)?,
        _ => StartupPacket::Startup(decode_startup_message(code, &body)?),
    };
    Ok(Some(decoded))
}

fn decode_cancel(mut body: Bytes) -> Result<StartupPacket, StartupError> {
    if body.len() < 8 || body.len() > 4 + 256 {
        return Err(StartupError::BadCancel);
    }
    let pid = body.get_i32();
    Ok(StartupPacket::Cancel { pid, secret: body })
}

fn decode_startup_message(code: i32, body: &[u8]) -> Result<StartupMessage, StartupError> {
    let major = (code >> 16) as u16;
    let minor = (code & 0xffff) as u16;
    if major != 3 {
        return Err(StartupError::UnsupportedProtocol { major, minor });
    }
    let mut msg = StartupMessage {
        minor_version: minor,
        ..StartupMessage::default()
    };
    let mut rest = body;
    loop {
        let (name, after_name) = split_cstr(rest).ok_or(StartupError::BadLayout)?;
        if name.is_empty() {
            if !after_name.is_empty() {
                return Err(StartupError::BadLayout);
            }
            return Ok(msg);
        }
        let (value, after_value) = split_cstr(after_name).ok_or(StartupError::BadLayout)?;
        if name.starts_with("_pq_.") {
            msg.protocol_options.push(name.to_owned());
        } else {
            msg.params.push((name.to_owned(), value.to_owned()));
        }
        rest = after_value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_requests_from_their_head() {
        assert_eq!(
            EncryptionRequest::from_head(&SSL_REQUEST),
            Some(EncryptionRequest::Ssl)
        );
        let mut gss = SSL_REQUEST;
        gss[4..].copy_from_slice(&GSSENC_REQUEST_CODE.to_be_bytes());
        assert_eq!(
            EncryptionRequest::from_head(&gss),
            Some(EncryptionRequest::Gss)
        );
        let mut long = SSL_REQUEST;
        long[3] = 9;
        assert_eq!(EncryptionRequest::from_head(&long), None);
        let mut startup = SSL_REQUEST;
        startup[4..].copy_from_slice(&PROTOCOL_3_0.to_be_bytes());
        assert_eq!(EncryptionRequest::from_head(&startup), None);
    }

    fn packet(code: i32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&((body.len() + 8) as i32).to_be_bytes());
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn startup_message_with_params() {
        let mut buf = packet(
            PROTOCOL_3_0,
            b"user\0alice\0database\0app\0options\0-c geqo=off\0_pq_.x\0y\0\0",
        );
        buf.extend_from_slice(b"Q"); // the next message stays in the buffer
        let Some(StartupPacket::Startup(m)) = decode_startup(&mut buf).unwrap() else {
            panic!("not a startup message")
        };
        assert_eq!(m.minor_version, 0);
        assert_eq!(m.param("user"), Some("alice"));
        assert_eq!(m.param("database"), Some("app"));
        assert_eq!(m.param("options"), Some("-c geqo=off"));
        assert_eq!(m.protocol_options, vec!["_pq_.x".to_owned()]);
        assert_eq!(&buf[..], b"Q");
    }

    #[test]
    fn newer_minor_version_is_accepted_for_negotiation() {
        let mut buf = packet(PROTOCOL_3_0 | 2, b"user\0u\0\0");
        let Some(StartupPacket::Startup(m)) = decode_startup(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(m.minor_version, 2);
    }

    #[test]
    fn special_requests() {
        let mut buf = packet(SSL_REQUEST_CODE, b"");
        assert_eq!(
            decode_startup(&mut buf),
            Ok(Some(StartupPacket::SslRequest))
        );
        let mut buf = packet(GSSENC_REQUEST_CODE, b"");
        assert_eq!(
            decode_startup(&mut buf),
            Ok(Some(StartupPacket::GssEncRequest))
        );
        let mut buf = packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 42, 1, 2, 3, 4]);
        assert_eq!(
            decode_startup(&mut buf),
            Ok(Some(StartupPacket::Cancel {
                pid: 42,
                secret: Bytes::from_static(&[1, 2, 3, 4])
            }))
        );
    }

    #[test]
    fn refusals() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 4, 0, 0, 0, 0][..]);
        assert_eq!(decode_startup(&mut buf), Err(StartupError::BadLength(4)));
        let mut buf = BytesMut::from(&[0x7fu8, 0, 0, 0][..]);
        assert!(matches!(
            decode_startup(&mut buf),
            Err(StartupError::BadLength(_))
        ));
        assert!(buf.capacity() < MAX_STARTUP_PACKET_LEN);
        let mut buf = packet(2 << 16, b"user\0u\0\0");
        assert_eq!(
            decode_startup(&mut buf),
            Err(StartupError::UnsupportedProtocol { major: 2, minor: 0 })
        );
        let mut buf = packet(PROTOCOL_3_0, b"user\0u\0");
        assert_eq!(decode_startup(&mut buf), Err(StartupError::BadLayout));
        let mut buf = packet(PROTOCOL_3_0, b"user\0u\0\0junk");
        assert_eq!(decode_startup(&mut buf), Err(StartupError::BadLayout));
        let mut buf = packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 42]);
        assert_eq!(decode_startup(&mut buf), Err(StartupError::BadCancel));
        let mut buf = packet(SSL_REQUEST_CODE, b"x");
        assert!(decode_startup(&mut buf).is_err());
    }

    #[test]
    fn waits_for_whole_packet() {
        let whole = packet(PROTOCOL_3_0, b"user\0u\0\0");
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(decode_startup(&mut buf), Ok(None));
        }
    }
}
