//! One direction of a relay: a buffer read from one socket, scanned for
//! message boundaries and the few messages acted on, and written to the
//! other socket from the same buffer.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use pgherd_tls::Stream;
use pgherd_wire::{Chunk, FrameError, Scanner};
use tokio::io::AsyncWrite;

use crate::relay::buffers::BUF_SIZE;

/// One direction: a buffer whose first `ready` bytes are scanned and may be written.
pub(super) struct Pipe {
    pub(super) buf: BytesMut,
    pub(super) ready: usize,
    pub(super) scanner: Scanner,
    /// Stop after flushing `ready` (client Terminate, or end of input).
    pub(super) closing: bool,
    /// Read nothing more (a read unit's client side).
    pub(super) no_read: bool,
    /// Bytes read, for the pool's counters.
    pub(super) bytes: u64,
    /// Written but maybe not yet sent: a TLS stream keeps what it was
    /// given until flushed.
    pub(super) unflushed: bool,
}

pub(super) enum Step {
    Read,
    Wrote,
    Eof,
}

/// Which side of a step failed.
pub(super) enum StepError {
    /// Reading from the pipe's source.
    Read(std::io::Error),
    /// Writing to the pipe's sink.
    Write(std::io::Error),
}

impl Pipe {
    pub(super) fn new(buf: BytesMut, max_len: usize) -> Pipe {
        Pipe {
            buf,
            ready: 0,
            scanner: Scanner::new(max_len),
            closing: false,
            no_read: false,
            bytes: 0,
            unflushed: false,
        }
    }

    /// True when nothing is buffered and the scanner is between messages.
    pub(super) fn is_clean(&self) -> bool {
        self.buf.is_empty() && self.scanner.at_boundary()
    }

    /// True when a step would write (or flush) rather than read; `hold`:
    /// replies are held back.
    pub(super) fn has_output(&self, hold: bool) -> bool {
        (self.ready > 0 && !hold) || self.unflushed
    }

    /// True when everything scanned has reached the sink's socket.
    pub(super) fn delivered(&self) -> bool {
        self.ready == 0 && !self.unflushed
    }

    /// One step: write what is ready (unless `hold`: replies held back),
    /// or else flush, or else read more. Polled, not awaited, so the two
    /// directions can take turns on the same two streams; each poll
    /// changes no state unless its socket operation completed.
    pub(super) fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut Stream,
        to: &mut Stream,
        hold: bool,
    ) -> Poll<Result<Step, StepError>> {
        if self.ready > 0 && !hold {
            let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.buf[..self.ready]))
                .map_err(StepError::Write)?;
            if n == 0 {
                return Poll::Ready(Err(StepError::Write(std::io::ErrorKind::WriteZero.into())));
            }
            self.buf.advance(n);
            self.ready -= n;
            if self.ready == 0 {
                // All handed over: push it out. Free for plain TCP; TLS
                // sends the records it holds, or finishes on a later poll.
                match Pin::new(&mut *to).poll_flush(cx) {
                    Poll::Ready(r) => r.map_err(StepError::Write)?,
                    Poll::Pending => self.unflushed = true,
                }
            }
            return Poll::Ready(Ok(Step::Wrote));
        }
        if self.unflushed {
            ready!(Pin::new(&mut *to).poll_flush(cx)).map_err(StepError::Write)?;
            self.unflushed = false;
            return Poll::Ready(Ok(Step::Wrote));
        }
        if self.closing || self.no_read {
            return Poll::Pending;
        }
        if self.buf.capacity() - self.buf.len() < BUF_SIZE / 4 {
            self.buf.reserve(BUF_SIZE);
        }
        // A plain function rather than tokio's `read_buf` future, whose poll
        // the compiler may leave out of line here (60 instructions per
        // transaction when it did).
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut *from),
            cx,
            &mut self.buf
        ))
        .map_err(StepError::Read)?;
        if n == 0 {
            return Poll::Ready(Ok(Step::Eof));
        }
        self.bytes += n as u64;
        Poll::Ready(Ok(Step::Read))
    }

    /// Writes what is ready (unless `hold`) if `to` takes it at once: what
    /// a step read goes out in that same step instead of on the relay's
    /// next turn, which saves a turn (select, readiness checks) per
    /// direction per transaction. What is left (TLS, a full socket) is
    /// written by [`Pipe::poll_step`].
    pub(super) fn write_now(&mut self, to: &Stream, hold: bool) -> std::io::Result<()> {
        if self.ready == 0 || hold {
            return Ok(());
        }
        match to.try_write_now(&self.buf[..self.ready]) {
            Some(Ok(0)) => Err(std::io::ErrorKind::WriteZero.into()),
            Some(Ok(n)) => {
                self.buf.advance(n);
                self.ready -= n;
                Ok(())
            }
            Some(Err(e)) if e.kind() != std::io::ErrorKind::WouldBlock => Err(e),
            Some(Err(_)) | None => Ok(()),
        }
    }

    /// Scans the unscanned bytes; `on` sees every watched message whole and
    /// every other message's tag once, and says what to do with it.
    pub(super) fn scan(
        &mut self,
        watch: Tags,
        mut on: impl FnMut(Seen<'_>) -> Action,
    ) -> Result<(), FrameError> {
        while !self.closing {
            match self
                .scanner
                .next(&self.buf[self.ready..], |t| watch.has(t))?
            {
                Chunk::NeedMore => break,
                Chunk::Opaque { len, starts } => {
                    if let Some(tag) = starts {
                        if matches!(on(Seen::Starts(tag)), Action::Stop) {
                            self.closing = true;
                            break;
                        }
                    }
                    self.ready += len;
                }
                Chunk::Message { len, .. } => {
                    let start = self.ready;
                    match on(Seen::Whole(&self.buf[start..start + len])) {
                        Action::Forward => self.ready += len,
                        Action::Stop => {
                            self.closing = true;
                            break;
                        }
                        Action::Drop => splice(&mut self.buf, start, len, &[]),
                        Action::Replace(with) => {
                            splice(&mut self.buf, start, len, &with);
                            self.ready += with.len();
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// What to do with a scanned message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action {
    Forward,
    /// Stop before it (client Terminate): it is not forwarded.
    Stop,
    /// Remove it (a reply to a request pgherd made itself).
    Drop,
    /// Forward these bytes in its place.
    Replace(BytesMut),
}

/// Replaces `len` bytes at `start` with `with`, in place.
pub(super) fn splice(buf: &mut BytesMut, start: usize, len: usize, with: &[u8]) {
    let old = buf.len();
    if with.len() > len {
        buf.resize(old + with.len() - len, 0);
    }
    buf.copy_within(start + len..old, start + with.len());
    buf[start..start + with.len()].copy_from_slice(with);
    if with.len() < len {
        buf.truncate(old - (len - with.len()));
    }
}

pub(super) enum Seen<'a> {
    /// A watched message, whole (tag and length included).
    Whole(&'a [u8]),
    /// The first bytes of an unwatched message with this tag.
    Starts(u8),
}

/// Message tags, as a set of bits: which messages a direction reads whole.
/// A bit test per message, where a function pointer cost a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tags([u64; 4]);

impl Tags {
    pub(super) const fn of(tags: &[u8]) -> Tags {
        let mut bits = [0u64; 4];
        let mut i = 0;
        while i < tags.len() {
            let t = tags[i];
            bits[(t >> 6) as usize] |= 1 << (t & 63);
            i += 1;
        }
        Tags(bits)
    }

    pub(super) fn has(self, tag: u8) -> bool {
        self.0[usize::from(tag >> 6)] & (1 << (tag & 63)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::msg;
    use pgherd_wire::backend;

    /// Two ends of a loopback TCP connection.
    async fn tcp_pair() -> (Stream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (ours, theirs) = tokio::join!(ours, listener.accept());
        (Stream::Plain(ours.unwrap()), theirs.unwrap().0)
    }

    #[tokio::test]
    async fn write_now_sends_what_the_socket_takes_and_keeps_the_rest() {
        use tokio::io::AsyncReadExt as _;
        let (to, mut peer) = tcp_pair().await;
        let bytes = [
            msg(backend::COMMAND_COMPLETE, b"SELECT 1\0"),
            msg(backend::READY_FOR_QUERY, b"I"),
        ]
        .concat();
        let mut pipe = Pipe::new(BytesMut::from(&bytes[..]), 1 << 20);
        pipe.ready = bytes.len();
        pipe.write_now(&to, true).unwrap();
        assert_eq!(pipe.ready, bytes.len(), "held back: nothing written");
        pipe.write_now(&to, false).unwrap();
        assert!(pipe.delivered() && pipe.buf.is_empty());
        let mut got = vec![0; bytes.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, bytes);

        // A peer that reads nothing: the socket fills, the rest stays ready.
        let big = vec![b'x'; 64 << 20];
        let mut pipe = Pipe::new(BytesMut::from(&big[..]), 1 << 30);
        pipe.ready = big.len();
        pipe.write_now(&to, false).unwrap();
        assert!(pipe.ready > 0 && pipe.ready < big.len(), "{}", pipe.ready);
        assert_eq!(pipe.buf.len(), pipe.ready);
        pipe.write_now(&to, false).unwrap();
        assert!(pipe.ready > 0, "still full: kept, no error");
    }

    #[tokio::test]
    async fn write_now_reports_a_peer_that_is_gone_and_keeps_the_bytes() {
        let (to, peer) = tcp_pair().await;
        // Reset, not a clean close: writes fail once the reset arrives.
        peer.set_zero_linger().unwrap();
        drop(peer);
        let bytes = msg(backend::READY_FOR_QUERY, b"I");
        let mut attempts = 0;
        let (err, pipe) = loop {
            let mut pipe = Pipe::new(BytesMut::from(&bytes[..]), 1 << 20);
            pipe.ready = bytes.len();
            match pipe.write_now(&to, false) {
                Err(e) => break (e, pipe),
                Ok(()) => {
                    attempts += 1;
                    assert!(attempts < 500, "writes to a reset peer never failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        };
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{err}"
        );
        assert_eq!(pipe.ready, bytes.len(), "nothing counted as written");
    }
}
