//! Read buffers for the data path, recycled per worker thread.
//!
//! A transaction-mode client needs a read buffer only while it is sending a
//! request; between transactions it waits for readiness with no buffer at all
//! and gives its buffer back here. Taking and giving back is a `Vec` push/pop
//! on the current thread: no allocation and no lock per transaction, and an
//! idle client costs no buffer memory.

use std::cell::RefCell;

use bytes::BytesMut;

/// Size of a relay buffer.
pub(crate) const BUF_SIZE: usize = 16 * 1024;

/// Buffers kept per thread at most (4 MiB).
const KEEP: usize = 256;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least [`BUF_SIZE`] bytes.
pub(crate) fn take() -> BytesMut {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(BUF_SIZE))
}

/// Returns a buffer for reuse. Buffers that grew past twice the usual size
/// (a large message went through) are freed instead.
pub(crate) fn give(mut buf: BytesMut) {
    buf.clear();
    if buf.capacity() < BUF_SIZE || buf.capacity() > 2 * BUF_SIZE {
        return;
    }
    FREE.with(|f| {
        let mut free = f.borrow_mut();
        if free.len() < KEEP {
            free.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_recycled() {
        let b = take();
        assert!(b.capacity() >= BUF_SIZE);
        let ptr = b.as_ptr();
        give(b);
        assert_eq!(take().as_ptr(), ptr, "same allocation back");
        give(BytesMut::with_capacity(10 * BUF_SIZE));
        assert!(
            take().capacity() < 10 * BUF_SIZE,
            "oversized ones are dropped"
        );
    }
}
