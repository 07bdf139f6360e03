//! A connection that is plain TCP, TLS over TCP, or a Unix-domain socket.
//!
//! One type for both, so everything above (login, relay, console) is
//! written once. The enum dispatch is a predictable branch per read or
//! write; the TLS variants are boxed so a plain [`Stream`] is no bigger
//! than the [`TcpStream`] it holds (an idle client's memory counts).
//!
//! One rule comes with TLS: a write may leave bytes inside the TLS layer
//! until the stream is flushed. Code that writes and then waits for the
//! peer to answer must flush first ([`Stream::send`] does both); for plain
//! TCP the flush is free.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A client's or a server's connection.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    /// A client on one of pgherd's Unix-domain sockets (never encrypted,
    /// as PostgreSQL's own). Boxed, as the TLS variants: unboxed it would
    /// make every `Stream` 8 bytes larger than a `TcpStream`.
    Unix(Box<UnixStream>),
    /// A client's connection after a TLS handshake (pgherd is the server).
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A connection to PostgreSQL after a TLS handshake.
    Connected(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP connection underneath (`None`: a Unix-domain socket).
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Unix(_) => None,
            Stream::Accepted(s) => Some(s.get_ref().0),
            Stream::Connected(s) => Some(s.get_ref().0),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Accepted(_) | Stream::Connected(_))
    }

    /// The local TCP address; `None` on a Unix-domain socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp()?.local_addr().ok()
    }

    /// Writes all of `bytes` and flushes them to the socket.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }

    /// Ready when a read would not wait, without reading — so an idle
    /// connection needs no read buffer. Plain TCP waits for the socket;
    /// TLS may hold decrypted bytes the socket does not show, so it is
    /// ready at once and the caller's read does the waiting.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
            Stream::Accepted(_) | Stream::Connected(_) => Poll::Ready(Ok(())),
        }
    }

    /// Writes what the socket takes now, without waiting and without a
    /// task context: `None` when this stream cannot (TLS, which writes
    /// through its session), `Some(Err(WouldBlock))` when the socket is
    /// full. Lets a relay send what it just read in the same step.
    pub fn try_write_now(&self, bytes: &[u8]) -> Option<io::Result<usize>> {
        match self {
            Stream::Plain(s) => Some(s.try_write(bytes)),
            Stream::Unix(s) => Some(s.try_write(bytes)),
            Stream::Accepted(_) | Stream::Connected(_) => None,
        }
    }

    /// True when the connection is idle and still open: nothing to read
    /// and no end of stream. (A PostgreSQL server idle in a pool only
    /// speaks to say it is closing the connection.) Never waits.
    pub fn is_idle_and_open(&mut self) -> bool {
        let would_block = |read: io::Result<usize>| matches!(read, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        let mut probe = [0u8; 1];
        match self {
            Stream::Plain(s) => return would_block(s.try_read(&mut probe)),
            Stream::Unix(s) => return would_block(s.try_read(&mut probe)),
            Stream::Accepted(_) | Stream::Connected(_) => {}
        }
        // TLS: one read attempt that must not wait. Records without data
        // (a TLS 1.3 session ticket) are consumed and still count as idle.
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(self).poll_read(&mut cx, &mut buf).is_pending()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Connected(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Connected(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(_) | Stream::Unix(_) => Poll::Ready(Ok(())),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Connected(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Connected(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn a_plain_stream_is_no_bigger_than_its_socket() {
        assert_eq!(
            std::mem::size_of::<Stream>(),
            std::mem::size_of::<TcpStream>()
        );
    }

    #[tokio::test]
    async fn plain_idle_check_sees_data_and_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut peer = TcpStream::connect(addr).await.unwrap();
        let mut ours = Stream::Plain(listener.accept().await.unwrap().0);
        assert!(ours.is_idle_and_open());
        peer.write_all(b"x").await.unwrap();
        std::future::poll_fn(|cx| ours.poll_read_ready(cx))
            .await
            .unwrap();
        assert!(!ours.is_idle_and_open(), "unexpected data is not idle");
        drop(peer);
        let mut rest = Vec::new();
        let _ = ours.read_to_end(&mut rest).await;
        assert!(!ours.is_idle_and_open(), "closed");
    }
}
