//! A fixed-capacity hash map from non-zero `u64` keys to `u64` values, living in static memory.
//!
//! The interposer must not allocate inside other people's allocation and launch calls, and cannot know how
//! many allocations a process will make; these tables are sized for realistic programs (tens of thousands of
//! live allocations) and report `false` when full instead of growing. Open addressing with linear probing and
//! backward-shift deletion keeps lookups short without tombstones.

/// The map: `N` must be a power of two. A key of 0 marks an empty slot, so 0 cannot be stored.
pub(crate) struct FixedMap<const N: usize> {
    keys: [u64; N],
    values: [u64; N],
    len: usize,
}

impl<const N: usize> FixedMap<N> {
    const MASK: usize = N - 1;

    /// An empty map (all zero bytes, so a static of it costs nothing until touched).
    pub(crate) const fn new() -> Self {
        assert!(N.is_power_of_two());
        Self {
            keys: [0; N],
            values: [0; N],
            len: 0,
        }
    }

    fn home(key: u64) -> usize {
        // Fibonacci hashing: allocation addresses share low bits, so mix before masking.
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & Self::MASK
    }

    fn find(&self, key: u64) -> Option<usize> {
        if key == 0 {
            return None;
        }
        let mut index = Self::home(key);
        for _ in 0..N {
            match self.keys.get(index).copied() {
                Some(k) if k == key => return Some(index),
                Some(0) | None => return None,
                Some(_) => index = (index + 1) & Self::MASK,
            }
        }
        None
    }

    /// Inserts or replaces; `false` if `key` is 0 or the map is full (kept one slot short of full so probes end).
    pub(crate) fn insert(&mut self, key: u64, value: u64) -> bool {
        if key == 0 {
            return false;
        }
        if let Some(index) = self.find(key) {
            if let Some(v) = self.values.get_mut(index) {
                *v = value;
            }
            return true;
        }
        if self.len + 1 >= N {
            return false;
        }
        let mut index = Self::home(key);
        while self.keys.get(index).is_some_and(|&k| k != 0) {
            index = (index + 1) & Self::MASK;
        }
        if let (Some(k), Some(v)) = (self.keys.get_mut(index), self.values.get_mut(index)) {
            *k = key;
            *v = value;
            self.len += 1;
        }
        true
    }

    /// The value under `key`.
    pub(crate) fn get(&self, key: u64) -> Option<u64> {
        self.find(key).and_then(|i| self.values.get(i).copied())
    }

    /// Removes `key`, returning its value.
    pub(crate) fn remove(&mut self, key: u64) -> Option<u64> {
        let mut hole = self.find(key)?;
        let value = self.values.get(hole).copied();
        // Backward-shift: pull later members of the probe run into the hole so no tombstone is needed.
        let mut next = (hole + 1) & Self::MASK;
        while let Some(&k) = self.keys.get(next) {
            if k == 0 {
                break;
            }
            let home = Self::home(k);
            // Move `k` into the hole if its home is not cyclically within (hole, next].
            let distance_to_next = next.wrapping_sub(home) & Self::MASK;
            let distance_to_hole = hole.wrapping_sub(home) & Self::MASK;
            if distance_to_hole < distance_to_next {
                let v = self.values.get(next).copied().unwrap_or(0);
                if let (Some(hk), Some(hv)) = (self.keys.get_mut(hole), self.values.get_mut(hole)) {
                    *hk = k;
                    *hv = v;
                }
                hole = next;
            }
            next = (next + 1) & Self::MASK;
        }
        if let Some(k) = self.keys.get_mut(hole) {
            *k = 0;
        }
        self.len -= 1;
        value
    }

    /// Number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_hash_map_under_random_operations() {
        let mut map = Box::new(FixedMap::<64>::new());
        let mut model = HashMap::new();
        let mut state = 0x1234_5678_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Keys collide on purpose: few distinct values, many shared low bits.
            let key = (state % 97 + 1) << 8;
            if state.is_multiple_of(3) {
                assert_eq!(map.remove(key), model.remove(&key));
            } else if model.len() < 63 || model.contains_key(&key) {
                assert!(map.insert(key, state));
                model.insert(key, state);
            } else {
                assert!(!map.insert(key, state), "a full map refuses new keys");
            }
            assert_eq!(map.len(), model.len());
            for (k, v) in &model {
                assert_eq!(map.get(*k), Some(*v));
            }
        }
    }

    #[test]
    fn zero_key_is_refused() {
        let mut map = FixedMap::<8>::new();
        assert!(!map.insert(0, 1));
        assert_eq!(map.get(0), None);
    }
}
