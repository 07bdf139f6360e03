//! Finding message boundaries in a byte stream.
//!
//! After startup every PostgreSQL message is `tag: u8`, `len: i32` (big endian,
//! counting itself but not the tag), then `len - 4` bytes of body. A length below
//! 4 can never be valid and a length above the configured limit is refused
//! *before* anything is allocated for it: a hostile peer cannot make the proxy
//! reserve memory by announcing a large message.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of a message header: one tag byte and a four byte length.
pub const HEADER_LEN: usize = 5;

/// A framing error: the stream cannot be trusted any more and the connection
/// must be closed (after an `08P01` ErrorResponse when the peer is a client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field is below 4, the size of the length field itself.
    #[error("invalid length {len} in message of type {tag:?}")]
    BadLength { tag: char, len: i32 },
    /// The message is larger than the configured limit.
    #[error("message of type {tag:?} is {len} bytes, over the limit of {max}")]
    TooLarge { tag: char, len: usize, max: usize },
}

/// One whole message, split off its buffer without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    /// The body, without tag and length.
    pub body: Bytes,
}

/// The body of a whole message (tag and length included), empty when
/// `msg` is shorter than a header.
pub fn body(msg: &[u8]) -> &[u8] {
    msg.get(HEADER_LEN..).unwrap_or_default()
}

/// Appends a message: `tag`, its length, then `parts` one after the other.
pub fn put_message(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.put_u8(tag);
    out.put_i32((4 + len) as i32);
    for p in parts {
        out.put_slice(p);
    }
}

/// Reads the header at the start of `buf`: the tag and the *total* message size
/// (tag included). `Ok(None)` when fewer than [`HEADER_LEN`] bytes are buffered.
pub fn parse_header(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: char::from(tag),
            len,
        });
    }
    // `len` is a positive i32, so it always fits in usize.
    let len = len as usize;
    if len > max_len {
        return Err(FrameError::TooLarge {
            tag: char::from(tag),
            len,
            max: max_len,
        });
    }
    Ok(Some((tag, len + 1)))
}

/// Splits the next whole message off the front of `buf`, or returns `Ok(None)`
/// when it has not fully arrived yet. The body shares `buf`'s allocation.
pub fn next_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
    let Some((tag, total)) = parse_header(buf, max_len)? else {
        return Ok(None);
    };
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut msg = buf.split_to(total);
    msg.advance(HEADER_LEN);
    Ok(Some(Frame {
        tag,
        body: msg.freeze(),
    }))
}

/// What [`Scanner::next`] found at the front of the unscanned bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// `len` bytes belong to a message the caller does not watch; forward them
    /// as they are. They may end in the middle of the message. `starts` is the
    /// message's tag when these bytes begin it (`None` for a continuation), so
    /// callers can count requests without buffering them.
    Opaque { len: usize, starts: Option<u8> },
    /// A whole watched message of this total size (tag included) starts here.
    Message { tag: u8, len: usize },
    /// Nothing more can be decided until more bytes arrive.
    NeedMore,
}

/// Streaming message scanner for the data path.
///
/// It remembers how much of an unwatched message is still to come, so the
/// caller can forward a huge message in pieces as it arrives while keeping
/// memory bounded by its read buffer. Watched messages (the ones the proxy must
/// act on) are reported only when whole. The caller consumes exactly the bytes
/// each call reports before calling again with the rest.
#[derive(Debug, Clone)]
pub struct Scanner {
    /// Body bytes of the current unwatched message not seen yet.
    skip: usize,
    max_len: usize,
}

impl Scanner {
    /// A scanner that refuses messages longer than `max_len` bytes (length
    /// field value, as PostgreSQL counts it).
    pub fn new(max_len: usize) -> Self {
        Scanner { skip: 0, max_len }
    }

    /// True when the scanner stands on a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.skip == 0
    }

    /// Looks at the unscanned bytes `buf`. `watch(tag)` says which message
    /// types must be reported whole.
    pub fn next(&mut self, buf: &[u8], watch: impl Fn(u8) -> bool) -> Result<Chunk, FrameError> {
        if self.skip > 0 {
            if buf.is_empty() {
                return Ok(Chunk::NeedMore);
            }
            let n = self.skip.min(buf.len());
            self.skip -= n;
            return Ok(Chunk::Opaque {
                len: n,
                starts: None,
            });
        }
        let Some((tag, total)) = parse_header(buf, self.max_len)? else {
            return Ok(Chunk::NeedMore);
        };
        if watch(tag) {
            if buf.len() < total {
                return Ok(Chunk::NeedMore);
            }
            return Ok(Chunk::Message { tag, len: total });
        }
        let n = total.min(buf.len());
        self.skip = total - n;
        Ok(Chunk::Opaque {
            len: n,
            starts: Some(tag),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_message(&mut b, tag, &[body]);
        b.to_vec()
    }

    #[test]
    fn frames_split_without_copy() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&msg(b'Z', b"I"));
        buf.extend_from_slice(&msg(b'C', b"SELECT 1\0"));
        let base = buf.as_ptr() as usize;
        let f = next_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Z');
        assert_eq!(&f.body[..], b"I");
        assert_eq!(
            f.body.as_ptr() as usize,
            base + 5,
            "body must point into the read buffer"
        );
        let f = next_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!((f.tag, &f.body[..]), (b'C', &b"SELECT 1\0"[..]));
        assert_eq!(next_frame(&mut buf, 1024).unwrap(), None);
    }

    #[test]
    fn partial_frames_wait() {
        let whole = msg(b'D', b"abcdef");
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(next_frame(&mut buf, 1024).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn bad_lengths_are_refused_before_allocation() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert_eq!(
            next_frame(&mut buf, 1024),
            Err(FrameError::BadLength { tag: 'Q', len: 3 })
        );
        let mut buf = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            next_frame(&mut buf, 1024),
            Err(FrameError::BadLength { len: -1, .. })
        ));
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            next_frame(&mut buf, 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(buf.capacity() < 1 << 20);
    }

    #[test]
    fn scanner_streams_unwatched_and_waits_for_watched() {
        let mut stream = msg(b'D', &[7u8; 100]);
        stream.extend_from_slice(&msg(b'Z', b"T"));
        let watch = |t| t == b'Z';
        let mut s = Scanner::new(1 << 20);
        // Only part of the DataRow arrived: it is forwardable already.
        let opaque = |len, starts| Ok(Chunk::Opaque { len, starts });
        assert_eq!(s.next(&stream[..30], watch), opaque(30, Some(b'D')));
        assert!(!s.at_boundary());
        assert_eq!(s.next(&stream[30..50], watch), opaque(20, None));
        assert_eq!(s.next(&stream[50..], watch), opaque(55, None));
        assert!(s.at_boundary());
        // ReadyForQuery is watched: reported only when whole.
        assert_eq!(s.next(&stream[105..108], watch), Ok(Chunk::NeedMore));
        assert_eq!(
            s.next(&stream[105..], watch),
            Ok(Chunk::Message { tag: b'Z', len: 6 })
        );
        assert_eq!(s.next(&[], watch), Ok(Chunk::NeedMore));
    }

    #[test]
    fn scanner_rejects_bad_lengths() {
        let mut s = Scanner::new(100);
        assert!(s.next(&[b'Q', 0, 0, 0, 0], |_| false).is_err());
        assert!(s.next(&[b'd', 0, 0, 0, 105], |_| false).is_err());
        assert_eq!(
            s.next(&[b'd', 0, 0, 0, 100], |_| false),
            Ok(Chunk::Opaque {
                len: 5,
                starts: Some(b'd')
            })
        );
    }
}
