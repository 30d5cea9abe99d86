//! A small deterministic pseudo-random generator (xorshift64) for the randomised tests: the same
//! seed gives the same cases on every run and machine, with no dependency.

/// xorshift64; the seed must not be zero.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    /// The seed the randomised tests start from unless they need their own.
    pub const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
