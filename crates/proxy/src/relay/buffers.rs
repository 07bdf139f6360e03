//! Read buffers for the data path, recycled per worker thread.
//!
//! A transaction-mode client needs a read buffer only while it is sending a
//! request; between transactions it waits for readiness with no buffer at all
//! and gives its buffer back here. Taking and giving back is a `Vec` push/pop
//! on the current thread: no allocation and no lock per transaction, and an
//! idle client costs no buffer memory.
//!
//! A session may take a buffer on one worker thread and give it back on
//! another (tasks move between workers), so one thread's list can run dry
//! while another's fills up. Past [`KEEP_LOCAL`], buffers go to a shared
//! spare list that a dry thread takes from: a lock only when the threads
//! are out of balance, instead of an allocation (a profile showed 16 KiB
//! allocations per transaction before).

use std::cell::RefCell;
use std::sync::Mutex;

use bytes::BytesMut;

/// Size of a relay buffer.
pub(crate) const BUF_SIZE: usize = 16 * 1024;

/// Buffers kept per thread at most (1 MiB).
const KEEP_LOCAL: usize = 64;
/// Buffers kept in the shared spare list at most (4 MiB).
const KEEP_SPARE: usize = 256;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

static SPARE: Mutex<Vec<BytesMut>> = Mutex::new(Vec::new());

fn spare() -> std::sync::MutexGuard<'static, Vec<BytesMut>> {
    SPARE.lock().unwrap_or_else(|e| e.into_inner())
}

/// An empty buffer with room for at least [`BUF_SIZE`] bytes.
pub(crate) fn take() -> BytesMut {
    FREE.with(|f| f.borrow_mut().pop())
        .or_else(|| spare().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(BUF_SIZE))
}

/// Returns a buffer for reuse. Buffers that grew past twice the usual size
/// (a large message went through) are freed instead.
pub(crate) fn give(mut buf: BytesMut) {
    buf.clear();
    // The relay consumes a buffer from the front, which leaves its
    // capacity short by what was consumed; the space is still there (a
    // profile showed a 16 KiB malloc per transaction for want of this).
    if buf.capacity() < BUF_SIZE && !buf.try_reclaim(BUF_SIZE) {
        return;
    }
    if buf.capacity() > 2 * BUF_SIZE {
        return;
    }
    let overflow = FREE.with(|f| {
        let mut free = f.borrow_mut();
        if free.len() < KEEP_LOCAL {
            free.push(buf);
            None
        } else {
            Some(buf)
        }
    });
    if let Some(buf) = overflow {
        let mut spare = spare();
        if spare.len() < KEEP_SPARE {
            spare.push(buf);
        }
    }
}

/// Copies of requests kept per thread at most, and the largest one kept.
const KEEP_COPIES: usize = 256;
const MAX_KEPT_COPY: usize = 4 * 1024;

thread_local! {
    // The boxes are what is recycled (a relay holds a copy as a box).
    #[allow(clippy::vec_box)]
    static COPIES: RefCell<Vec<Box<BytesMut>>> = const { RefCell::new(Vec::new()) };
}

/// A copy of `bytes` (a request that may have to be sent again), in a
/// recycled box and buffer: a transaction's copy costs a `memcpy`, not two
/// allocations and two frees. Boxed, so a relay holds 8 bytes for it.
pub(crate) fn copy(bytes: &[u8]) -> Box<BytesMut> {
    let mut copy = COPIES
        .with(|c| c.borrow_mut().pop())
        .unwrap_or_else(|| Box::new(BytesMut::new()));
    copy.extend_from_slice(bytes);
    copy
}

/// Returns a [`copy`] for reuse; large ones are freed.
pub(crate) fn give_copy(mut copy: Box<BytesMut>) {
    if copy.capacity() > MAX_KEPT_COPY {
        return;
    }
    copy.clear();
    COPIES.with(|c| {
        let mut copies = c.borrow_mut();
        if copies.len() < KEEP_COPIES {
            copies.push(copy);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_recycled() {
        let c = copy(b"request");
        assert_eq!(&c[..], b"request");
        let (boxed, data) = (&*c as *const BytesMut, c.as_ptr());
        give_copy(c);
        let again = copy(b"other");
        assert_eq!(&again[..], b"other");
        assert_eq!(&*again as *const BytesMut, boxed, "same box");
        assert_eq!(again.as_ptr(), data, "same buffer");
        give_copy(again);
        let kept = || COPIES.with(|c| c.borrow().len());
        let before = kept();
        give_copy(Box::new(BytesMut::with_capacity(2 * MAX_KEPT_COPY)));
        assert_eq!(kept(), before, "a large one is freed, not kept");
    }

    #[test]
    fn a_buffer_consumed_from_the_front_is_reused() {
        let mut buf = take();
        let start = buf.as_ptr() as usize;
        buf.extend_from_slice(&[7; 300]);
        let _ = buf.split_to(300);
        assert!(buf.capacity() < BUF_SIZE);
        let kept = || FREE.with(|f| f.borrow().len());
        let before = kept();
        give(buf);
        assert_eq!(kept(), before + 1, "kept for reuse, not freed");
        let again = take();
        assert_eq!(again.as_ptr() as usize, start);
        assert!(again.capacity() >= BUF_SIZE);
    }

    #[test]
    fn a_thread_that_only_takes_uses_what_another_gave_back() {
        // One thread gives back more than it keeps; another, with none of
        // its own, gets those instead of new allocations.
        let given: Vec<usize> = std::thread::spawn(|| {
            let bufs: Vec<BytesMut> = (0..KEEP_LOCAL + 4).map(|_| take()).collect();
            let ptrs = bufs.iter().map(|b| b.as_ptr() as usize).collect();
            bufs.into_iter().for_each(give);
            ptrs
        })
        .join()
        .unwrap();
        let got = std::thread::spawn(|| take().as_ptr() as usize)
            .join()
            .unwrap();
        assert!(given.contains(&got), "a spare buffer was reused");
    }

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
