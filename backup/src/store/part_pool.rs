//! A fixed set of multipart part buffers. A full part is handed to the HTTP client as [`Bytes`]
//! that own the buffer; when the client drops the last copy (after the final attempt), the
//! buffer comes back here instead of to the allocator. That bounds memory at
//! `buffers × part_size` whatever the object's size, and avoids asking the allocator for fresh
//! multi-MiB blocks per part (glibc keeps freed blocks of that size in per-thread arenas, which
//! showed up as tens of MiB of extra peak RSS).

use bytes::Bytes;
use tokio::sync::mpsc;

pub struct PartPool {
    part_size: usize,
    /// Buffers not yet allocated; allocation is lazy so a small object costs one buffer.
    unallocated: usize,
    returned: mpsc::UnboundedReceiver<Vec<u8>>,
    home: mpsc::UnboundedSender<Vec<u8>>,
}

/// A buffer on loan to the HTTP client; it goes back to its pool when dropped.
struct LoanedPart {
    data: Vec<u8>,
    home: mpsc::UnboundedSender<Vec<u8>>,
}

impl AsRef<[u8]> for LoanedPart {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for LoanedPart {
    fn drop(&mut self) {
        // A closed pool (the upload is over) simply lets the buffer be freed.
        let _ = self.home.send(std::mem::take(&mut self.data));
    }
}

impl PartPool {
    pub fn new(part_size: usize, buffers: usize) -> PartPool {
        let (home, returned) = mpsc::unbounded_channel();
        PartPool {
            part_size,
            unallocated: buffers.max(1),
            returned,
            home,
        }
    }

    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// An empty buffer with room for one part, waiting for one to come back when all are out.
    pub async fn take(&mut self) -> Vec<u8> {
        if let Ok(mut buffer) = self.returned.try_recv() {
            buffer.clear();
            return buffer;
        }
        if self.unallocated > 0 {
            self.unallocated -= 1;
            return Vec::with_capacity(self.part_size);
        }
        // The pool holds a sender itself, so this cannot end while it waits.
        let mut buffer = self.returned.recv().await.unwrap_or_default();
        buffer.clear();
        buffer.reserve_exact(self.part_size);
        buffer
    }

    /// Hand a filled buffer out as [`Bytes`]; it returns to the pool when the last copy drops.
    pub fn lend(&self, data: Vec<u8>) -> Bytes {
        Bytes::from_owner(LoanedPart {
            data,
            home: self.home.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn buffers_are_bounded_and_come_back_when_the_last_copy_drops() {
        let mut pool = PartPool::new(1024, 2);
        let mut first = pool.take().await;
        first.extend_from_slice(b"part one");
        let first_ptr = first.as_ptr();
        let lent = pool.lend(first);
        let copy = lent.clone();
        assert_eq!(&copy[..], b"part one");
        let second = pool.take().await;
        assert!(second.capacity() >= 1024);

        // Both buffers are out: the next take waits until every copy of one is dropped.
        let waiting = tokio::time::timeout(Duration::from_millis(50), pool.take()).await;
        assert!(waiting.is_err(), "a third buffer was handed out");
        drop(lent);
        let waiting = tokio::time::timeout(Duration::from_millis(50), pool.take()).await;
        assert!(waiting.is_err(), "the buffer came back while a copy was alive");
        drop(copy);
        let reused = tokio::time::timeout(Duration::from_secs(5), pool.take())
            .await
            .expect("the dropped buffer returns");
        assert!(reused.is_empty());
        assert_eq!(reused.as_ptr(), first_ptr, "the same allocation is reused");
        drop(second);
    }
}
