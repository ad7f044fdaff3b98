//! SipHash (Aumasson and Bernstein), for hashes that are stored and must not change between
//! releases: `std`'s hashers promise no stable output, and SHA-256 costs several times more for
//! the short inputs hashed here (idempotency keys, once per user message).

/// An incremental SipHash-c-d with a 128-bit key.
pub struct SipHasher<const C: usize, const D: usize> {
    v: [u64; 4],
    /// Bytes not yet compressed (fewer than 8).
    tail: u64,
    tail_len: usize,
    total: usize,
}

/// SipHash-1-3: the variant Rust's own `HashMap` uses; plenty for 64-bit fingerprints.
pub type SipHasher13 = SipHasher<1, 3>;

impl<const C: usize, const D: usize> SipHasher<C, D> {
    pub fn new(k0: u64, k1: u64) -> Self {
        Self {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            tail_len: 0,
            total: 0,
        }
    }

    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        for _ in 0..C {
            Self::round(&mut self.v);
        }
        self.v[0] ^= m;
    }

    pub fn write(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len();
        while !bytes.is_empty() {
            if self.tail_len == 0 && bytes.len() >= 8 {
                let mut word = [0u8; 8];
                word.copy_from_slice(&bytes[..8]);
                self.compress(u64::from_le_bytes(word));
                bytes = &bytes[8..];
                continue;
            }
            self.tail |= u64::from(bytes[0]) << (8 * self.tail_len);
            self.tail_len += 1;
            bytes = &bytes[1..];
            if self.tail_len == 8 {
                let m = std::mem::take(&mut self.tail);
                self.tail_len = 0;
                self.compress(m);
            }
        }
    }

    pub fn finish(mut self) -> u64 {
        let last = self.tail | ((self.total as u64 & 0xff) << 56);
        self.compress(last);
        self.v[2] ^= 0xff;
        for _ in 0..D {
            Self::round(&mut self.v);
        }
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K0: u64 = 0x0706_0504_0302_0100;
    const K1: u64 = 0x0f0e_0d0c_0b0a_0908;

    /// The reference vectors of SipHash-2-4 (key 00..0f, message 00..n-1), whatever the split.
    #[test]
    fn siphash_2_4_matches_the_reference_vectors() {
        let message: Vec<u8> = (0..15).collect();
        for (len, expected) in [(0, 0x726f_db47_dd0e_0e31), (15, 0xa129_ca61_49be_45e5)] {
            let mut whole = SipHasher::<2, 4>::new(K0, K1);
            whole.write(&message[..len]);
            assert_eq!(whole.finish(), expected, "length {len}");
            let mut split = SipHasher::<2, 4>::new(K0, K1);
            for byte in &message[..len] {
                split.write(std::slice::from_ref(byte));
            }
            assert_eq!(split.finish(), expected, "length {len}, byte by byte");
        }
    }

    /// Against `std`'s SipHash-2-4 for every length up to five words, written in two pieces: the
    /// rounds are generic, so SipHash-1-3 runs the same code with other counts.
    #[test]
    #[allow(deprecated)]
    fn siphash_2_4_agrees_with_std_for_every_length() {
        use std::hash::Hasher;
        let message: Vec<u8> = (0..40).collect();
        for len in 0..message.len() {
            let mut theirs = std::hash::SipHasher::new_with_keys(K0, K1);
            theirs.write(&message[..len]);
            let mut ours = SipHasher::<2, 4>::new(K0, K1);
            ours.write(&message[..len / 3]);
            ours.write(&message[len / 3..len]);
            assert_eq!(ours.finish(), theirs.finish(), "length {len}");
        }
    }
}
