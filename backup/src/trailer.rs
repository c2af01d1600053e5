//! etcd's snapshot integrity trailer: the Maintenance snapshot stream ends with the SHA-256 of
//! everything before it, and `etcdutl snapshot restore` checks it. [`TrailerCheck`] verifies
//! it on the fly, so a truncated or corrupted snapshot is caught while streaming.

use sha2::{Digest, Sha256};

pub const TRAILER_LEN: usize = 32;

#[derive(Clone, Default)]
pub struct TrailerCheck {
    hasher: Sha256,
    /// The last bytes seen, which may turn out to be the trailer.
    tail: Vec<u8>,
    total: u64,
}

/// The outcome at the end of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrailerOutcome {
    Valid,
    TooShort { size: u64 },
    Mismatch { expected: String, actual: String },
}

impl TrailerCheck {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if data.len() >= TRAILER_LEN {
            self.hasher.update(&self.tail);
            self.hasher.update(&data[..data.len() - TRAILER_LEN]);
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - TRAILER_LEN..]);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > TRAILER_LEN {
                let excess = self.tail.len() - TRAILER_LEN;
                self.hasher.update(&self.tail[..excess]);
                self.tail.drain(..excess);
            }
        }
    }

    /// The SHA-256 of everything seen, the held-back tail included: with [`Self::finish`], the
    /// whole stream's hash and etcd's check from one pass over the bytes.
    pub fn sha256(&self) -> [u8; 32] {
        let mut whole = self.hasher.clone();
        whole.update(&self.tail);
        whole.finalize().into()
    }

    pub fn finish(self) -> TrailerOutcome {
        if self.tail.len() < TRAILER_LEN || self.total == TRAILER_LEN as u64 {
            return TrailerOutcome::TooShort { size: self.total };
        }
        let actual = hex::encode(self.hasher.finalize());
        let expected = hex::encode(&self.tail);
        if actual == expected {
            TrailerOutcome::Valid
        } else {
            TrailerOutcome::Mismatch { expected, actual }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_trailer(body: &[u8]) -> Vec<u8> {
        let mut data = body.to_vec();
        data.extend_from_slice(&Sha256::digest(body));
        data
    }

    fn check_in_chunks(data: &[u8], chunk: usize) -> TrailerOutcome {
        let mut check = TrailerCheck::new();
        for part in data.chunks(chunk) {
            check.update(part);
        }
        check.finish()
    }

    #[test]
    fn valid_trailer_is_accepted_whatever_the_chunking() {
        let data = with_trailer(&(0..1000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
        for chunk in [1, 5, 31, 32, 33, 64, 999, 5000] {
            assert_eq!(check_in_chunks(&data, chunk), TrailerOutcome::Valid, "chunk {chunk}");
        }
    }

    #[test]
    fn flipped_byte_and_truncation_are_detected() {
        let mut data = with_trailer(b"some snapshot bytes, more than thirty-two of them");
        data[3] ^= 1;
        assert!(matches!(check_in_chunks(&data, 7), TrailerOutcome::Mismatch { .. }));
        data[3] ^= 1;
        let truncated = &data[..data.len() - 1];
        assert!(matches!(check_in_chunks(truncated, 7), TrailerOutcome::Mismatch { .. }));
        assert_eq!(check_in_chunks(&data[..10], 3), TrailerOutcome::TooShort { size: 10 });
    }
}
