//! Number allocators over fixed storage (`mlx4_bitmap_*` in `alloc.c`): the UAR, PD, EQ
//! and MTT tables hand out numbers above the ones the firmware reserves.
//!
//! No `alloc`: the capacity is a const parameter, in 64-bit words. A table whose device
//! count is larger than the capacity is clamped to it (see [`IdBitmap::new`]).

/// Numbers `reserved..num` handed out one or a range at a time.
#[derive(Clone, Debug)]
pub struct IdBitmap<const WORDS: usize> {
    words: [u64; WORDS],
    num: u32,
    reserved: u32,
    /// Where the next search starts (`bitmap->last`): numbers are handed out round-robin,
    /// so a freed number is not reused at once.
    last: u32,
    used: u32,
}

/// Why a table could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitmapError {
    /// The table's size after clamping to the capacity.
    pub num: u32,
    /// The reserved numbers asked for.
    pub reserved: u32,
}

impl<const WORDS: usize> IdBitmap<WORDS> {
    /// The most numbers this storage holds.
    pub const CAPACITY: u32 = (WORDS * 64) as u32;

    /// A table of `num` numbers (at most [`Self::CAPACITY`]), the first `reserved` of
    /// them the firmware's (`mlx4_bitmap_init`'s `reserved_bot`). At least one number
    /// must be left to hand out.
    pub fn new(num: u64, reserved: u64) -> Result<Self, BitmapError> {
        let num = num.min(u64::from(Self::CAPACITY)) as u32;
        let reserved = u32::try_from(reserved).unwrap_or(u32::MAX);
        if reserved >= num {
            return Err(BitmapError { num, reserved });
        }
        Ok(Self {
            words: [0; WORDS],
            num,
            reserved,
            last: reserved,
            used: 0,
        })
    }

    /// The table's size.
    pub fn num(&self) -> u32 {
        self.num
    }

    /// Numbers handed out and not yet freed.
    pub fn in_use(&self) -> u32 {
        self.used
    }

    fn get(&self, n: u32) -> bool {
        self.words
            .get((n / 64) as usize)
            .is_some_and(|w| w & (1u64 << (n % 64)) != 0)
    }

    fn set(&mut self, n: u32, on: bool) {
        if let Some(w) = self.words.get_mut((n / 64) as usize) {
            if on {
                *w |= 1u64 << (n % 64);
            } else {
                *w &= !(1u64 << (n % 64));
            }
        }
    }

    /// Hands out one number (`mlx4_bitmap_alloc`); `None` when all are taken.
    pub fn alloc(&mut self) -> Option<u32> {
        self.alloc_range(1, 1)
    }

    /// Hands out `count` consecutive numbers starting at a multiple of `align` (a power
    /// of two), as `mlx4_bitmap_alloc_range` does; returns the first.
    pub fn alloc_range(&mut self, count: u32, align: u32) -> Option<u32> {
        if count == 0 || !align.is_power_of_two() {
            return None;
        }
        let span = self.num - self.reserved;
        // Two laps at most: from `last` to the end, then from the start.
        let mut start = self.last.max(self.reserved);
        for lap in 0..2 {
            if lap == 1 {
                start = self.reserved;
            }
            let mut n = start.checked_next_multiple_of(align)?;
            while n.checked_add(count)? <= self.num {
                if let Some(busy) = (n..n + count).find(|&i| self.get(i)) {
                    n = (busy + 1).checked_next_multiple_of(align)?;
                    continue;
                }
                for i in n..n + count {
                    self.set(i, true);
                }
                self.used += count;
                self.last = if n + count >= self.num {
                    self.reserved
                } else {
                    n + count
                };
                return Some(n);
            }
            if span == 0 {
                break;
            }
        }
        None
    }

    /// Gives back `count` numbers from `first`; false (and nothing freed) if any of them
    /// was not handed out.
    pub fn free_range(&mut self, first: u32, count: u32) -> bool {
        let Some(end) = first.checked_add(count) else {
            return false;
        };
        if first < self.reserved || end > self.num || !(first..end).all(|i| self.get(i)) {
            return false;
        }
        for i in first..end {
            self.set(i, false);
        }
        self.used -= count;
        true
    }

    /// Whether `n` is handed out (reserved numbers are not).
    pub fn is_allocated(&self, n: u32) -> bool {
        n >= self.reserved && self.get(n)
    }

    /// Gives back one number.
    pub fn free(&mut self, n: u32) -> bool {
        self.free_range(n, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_start_above_the_reserved_and_come_round_robin() {
        let mut b = IdBitmap::<1>::new(8, 3).unwrap();
        assert_eq!(b.alloc(), Some(3));
        assert_eq!(b.alloc(), Some(4));
        assert!(b.free(3));
        assert!(!b.free(3), "a double free is refused");
        assert_eq!(b.alloc(), Some(5));
        assert_eq!(b.alloc(), Some(6));
        assert_eq!(b.alloc(), Some(7));
        assert_eq!(b.alloc(), Some(3), "wraps to the freed number");
        assert_eq!(b.alloc(), None);
        assert_eq!(b.in_use(), 5);
        assert!(!b.free(1), "a reserved number is never handed out");
    }

    #[test]
    fn ranges_are_aligned_and_clamped_to_capacity() {
        let mut b = IdBitmap::<2>::new(1 << 20, 16).unwrap();
        assert_eq!(b.num(), 128);
        assert_eq!(b.alloc_range(4, 4), Some(16));
        assert_eq!(b.alloc(), Some(20));
        assert_eq!(b.alloc_range(4, 4), Some(24));
        assert!(b.free_range(16, 4));
        assert_eq!(b.in_use(), 5);
        assert!(IdBitmap::<1>::new(4, 4).is_err());
    }
}
