//! Fixed-capacity storage: the core's tables never allocate, and a full table is an
//! answer (an error the caller turns into a counted drop), never a panic.

/// Up to `N` values in slots that keep their index while occupied (so an index plus a
/// generation can name an entry from elsewhere).
pub(crate) struct Slots<T, const N: usize> {
    slots: [Option<T>; N],
}

impl<T, const N: usize> Slots<T, N> {
    /// An empty slot, as a constant: the array repeat below takes it for any `T`.
    const NONE: Option<T> = None;

    /// An empty table; `const` so that a whole interface can be a constant written into
    /// its allocation (the kernel's stacks are too small to build it on).
    pub(crate) const fn new() -> Self {
        Slots {
            slots: [Self::NONE; N],
        }
    }

    /// Empties every slot, in place.
    pub(crate) fn clear(&mut self) {
        for slot in self.slots.iter_mut() {
            *slot = None;
        }
    }

    /// Puts `value` in a free slot; gives it back when every slot is taken.
    pub(crate) fn insert(&mut self, value: T) -> Result<usize, T> {
        match self.slots.iter().position(Option::is_none) {
            Some(index) => {
                if let Some(slot) = self.slots.get_mut(index) {
                    *slot = Some(value);
                }
                Ok(index)
            }
            None => Err(value),
        }
    }

    pub(crate) fn get(&self, index: usize) -> Option<&T> {
        self.slots.get(index).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.slots.get_mut(index).and_then(Option::as_mut)
    }

    pub(crate) fn remove(&mut self, index: usize) -> Option<T> {
        self.slots.get_mut(index).and_then(Option::take)
    }

    /// The index of the first entry `matches` accepts.
    pub(crate) fn find(&self, mut matches: impl FnMut(&T) -> bool) -> Option<usize> {
        self.slots
            .iter()
            .position(|slot| slot.as_ref().is_some_and(&mut matches))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| slot.as_ref().map(|value| (index, value)))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(index, slot)| slot.as_mut().map(|value| (index, value)))
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.iter().filter(|slot| slot.is_some()).count()
    }
}

/// Up to `N` values in arrival order; values leave in that order.
pub(crate) struct FifoPool<T, const N: usize> {
    items: [Option<T>; N],
    len: usize,
}

impl<T, const N: usize> FifoPool<T, N> {
    /// An empty slot, as a constant: the array repeat below takes it for any `T`.
    const NONE: Option<T> = None;

    /// An empty pool; `const` for the reason [`Slots::new`] is.
    pub(crate) const fn new() -> Self {
        FifoPool {
            items: [Self::NONE; N],
            len: 0,
        }
    }

    /// Empties the pool, in place.
    pub(crate) fn clear(&mut self) {
        for item in self.items.iter_mut() {
            *item = None;
        }
        self.len = 0;
    }

    /// Appends `value`; gives it back when the pool is full.
    pub(crate) fn push(&mut self, value: T) -> Result<(), T> {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(value);
                self.len += 1;
                Ok(())
            }
            None => Err(value),
        }
    }

    pub(crate) fn count(&self, mut matches: impl FnMut(&T) -> bool) -> usize {
        self.items
            .iter()
            .flatten()
            .filter(|item| matches(item))
            .count()
    }

    /// Hands every value `matches` accepts to `take`, oldest first, and keeps the rest
    /// in their order.
    pub(crate) fn take_where(
        &mut self,
        mut matches: impl FnMut(&T) -> bool,
        mut take: impl FnMut(T),
    ) {
        let mut kept = 0;
        for index in 0..self.len {
            let Some(item) = self.items.get_mut(index).and_then(Option::take) else {
                continue;
            };
            if matches(&item) {
                take(item);
            } else {
                if let Some(slot) = self.items.get_mut(kept) {
                    *slot = Some(item);
                }
                kept += 1;
            }
        }
        self.len = kept;
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn slots_refuse_the_value_past_capacity_and_reuse_freed_slots() {
        let mut slots: Slots<u32, 2> = Slots::new();
        assert_eq!(slots.insert(1), Ok(0));
        assert_eq!(slots.insert(2), Ok(1));
        assert_eq!(slots.insert(3), Err(3));
        assert_eq!(slots.remove(0), Some(1));
        assert_eq!(slots.insert(4), Ok(0));
        assert_eq!(slots.find(|v| *v == 2), Some(1));
        assert_eq!(slots.len(), 2);
        assert_eq!(slots.get(7), None);
    }

    #[test]
    fn pool_takes_matching_values_oldest_first_and_keeps_the_order_of_the_rest() {
        let mut pool: FifoPool<u32, 6> = FifoPool::new();
        for v in [1, 2, 3, 4, 5, 6] {
            pool.push(v).unwrap();
        }
        assert_eq!(pool.push(7), Err(7));
        let mut odd = Vec::new();
        pool.take_where(|v| v % 2 == 1, |v| odd.push(v));
        assert_eq!(odd, [1, 3, 5]);
        assert_eq!(pool.len(), 3);
        pool.push(8).unwrap();
        let mut rest = Vec::new();
        pool.take_where(|_| true, |v| rest.push(v));
        assert_eq!(rest, [2, 4, 6, 8]);
        assert_eq!(pool.len(), 0);
    }
}
