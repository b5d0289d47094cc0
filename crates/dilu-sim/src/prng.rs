//! A small, self-contained, seeded pseudo-random number generator.
//!
//! The trace generator must be reproducible bit for bit from a seed, on every
//! platform and for every future build, so it cannot depend on a third-party
//! crate whose stream may change between versions. This module implements
//! **xoshiro256\*\*** (Blackman & Vigna, 2018), seeded through **SplitMix64**
//! as its authors recommend. Both algorithms are public domain, tiny, fast and
//! statistically strong enough for simulation (they are *not* cryptographic).

/// One step of SplitMix64: advances `state` and returns the next output.
///
/// Used to expand a single `u64` seed into the 256-bit xoshiro state, so that
/// even similar seeds (0, 1, 2, ...) give unrelated streams.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seeded xoshiro256\*\* generator: deterministic for a given seed.
///
/// The same seed always yields the same sequence of values from every method,
/// which is what makes generated traces reproducible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prng {
    s: [u64; 4],
}

impl Prng {
    /// Creates a generator from a 64-bit seed (expanded with SplitMix64).
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut s = [0u64; 4];
        for word in &mut s {
            *word = splitmix64(&mut sm);
        }
        // SplitMix64 never yields four zeros in a row, but be safe: the
        // all-zero state is the one fixed point of xoshiro.
        if s == [0; 4] {
            s[0] = 1;
        }
        Self { s }
    }

    /// Returns the next 64 uniformly distributed random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Returns a uniform `f64` in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        // The top 53 bits scaled by 2^-53: every value k / 2^53 is equally likely.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Returns a uniform `f64` in `[lo, hi)` (or `lo` when `lo == hi`).
    ///
    /// Mirrors Python's `random.uniform(lo, hi)` as used by the Dilu
    /// reference generator: `lo + (hi - lo) * u` with `u` in `[0, 1)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Returns an unbiased uniform integer in `[0, n)`; returns 0 when `n == 0`.
    ///
    /// Uses Lemire's multiply-and-reject method, so there is no modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n; // (2^64 - n) mod n
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Returns a uniform integer in the closed range `[lo, hi]`.
    ///
    /// Bounds given in reverse order are swapped, so the call never fails.
    pub fn range_inclusive(&mut self, lo: i64, hi: i64) -> i64 {
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        let span = (i128::from(hi) - i128::from(lo) + 1) as u128;
        if span > u128::from(u64::MAX) {
            // The full i64 range: every 64-bit pattern is a valid answer.
            return self.next_u64() as i64;
        }
        let offset = self.below(span as u64);
        (i128::from(lo) + offset as i128) as i64
    }

    /// Returns a uniformly chosen element of `items`, or `None` if it is empty.
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        let idx = self.below(items.len() as u64) as usize;
        items.get(idx)
    }

    /// Shuffles `items` in place with the Fisher–Yates algorithm (all orders equally likely).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let mut a = Prng::new(42);
        let mut b = Prng::new(42);
        let mut c = Prng::new(43);
        let xa: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        let xc: Vec<u64> = (0..16).map(|_| c.next_u64()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
    }

    #[test]
    fn known_splitmix_values() {
        // Reference outputs of SplitMix64 seeded with 0 (from Vigna's C code).
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn f64_and_uniform_stay_in_range() {
        let mut r = Prng::new(7);
        for _ in 0..10_000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
            let u = r.uniform(0.2, 0.4);
            assert!((0.2..0.4).contains(&u));
        }
        assert_eq!(r.uniform(0.5, 0.5), 0.5);
    }

    #[test]
    fn range_inclusive_hits_both_ends_and_nothing_else() {
        let mut r = Prng::new(1);
        let mut seen = [false; 8];
        for _ in 0..5_000 {
            let v = r.range_inclusive(3, 10);
            assert!((3..=10).contains(&v));
            seen[(v - 3) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(r.range_inclusive(5, 5), 5);
        let v = r.range_inclusive(10, 3);
        assert!((3..=10).contains(&v));
        // The full range must not overflow.
        let _ = r.range_inclusive(i64::MIN, i64::MAX);
        let w = r.range_inclusive(i64::MAX - 1, i64::MAX);
        assert!(w >= i64::MAX - 1);
    }

    #[test]
    fn choose_and_shuffle() {
        let mut r = Prng::new(9);
        let empty: [u8; 0] = [];
        assert!(r.choose(&empty).is_none());
        let items = [2, 4];
        for _ in 0..100 {
            let c = r.choose(&items).copied();
            assert!(c == Some(2) || c == Some(4));
        }
        let mut v: Vec<u32> = (0..100).collect();
        r.shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn below_is_roughly_uniform() {
        let mut r = Prng::new(3);
        let mut counts = [0u32; 5];
        for _ in 0..50_000 {
            counts[r.below(5) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(r.below(0), 0);
    }
}
