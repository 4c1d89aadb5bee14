//! Randomness sources for the generator: a seeded SplitMix64 PRNG and fuzzer bytes.

/// Where the generator's choices come from.
pub trait Source {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64;

    /// A value in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Fills `out` with the low bytes of successive `next_u64` values (one value per byte), in one
    /// call rather than one virtual call a byte.
    fn fill_low_bytes(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.next_u64() as u8;
        }
    }

    /// One element of a non-empty slice.
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T
    where
        Self: Sized,
    {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and the same stream on every host.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl Source for SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Choices taken from a fuzzer's bytes; once they run out, a PRNG seeded from what was read.
pub struct BytesSource<'a, 'b> {
    u: &'b mut arbitrary::Unstructured<'a>,
    tail: SplitMix,
}

impl<'a, 'b> BytesSource<'a, 'b> {
    /// Reads choices from `u`.
    pub fn new(u: &'b mut arbitrary::Unstructured<'a>) -> Self {
        BytesSource {
            u,
            tail: SplitMix(0x5eed),
        }
    }
}

impl Source for BytesSource<'_, '_> {
    fn next_u64(&mut self) -> u64 {
        match self.u.arbitrary::<u64>() {
            Ok(v) if !self.u.is_empty() => {
                self.tail.0 ^= v;
                v
            }
            _ => self.tail.next_u64(),
        }
    }
}
