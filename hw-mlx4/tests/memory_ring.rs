//! `MemoryRing`, the ring of the kernel module and the benchmarks, over heap memory: its
//! geometry checks, slot masking, and big-endian ownership words that stay inside their
//! entry (the kernel runs this code; the model's rings are other code).

use std::cell::UnsafeCell;

use hw_mlx4::fastpath::platform::DmaRing;
use hw_mlx4::ring::{MemoryRing, RingMemory};

/// Heap memory of 16-byte units (so 16-byte aligned), shared through an `UnsafeCell` as
/// the device would share it.
struct Heap(Box<[UnsafeCell<u128>]>);

impl Heap {
    fn new(bytes: usize) -> Self {
        Self(
            (0..bytes.div_ceil(16))
                .map(|_| UnsafeCell::new(0))
                .collect(),
        )
    }

    /// The memory as the device sees it, read past the ring.
    fn bytes(&self) -> Vec<u8> {
        // SAFETY: the test holds no reference into the memory while it reads it.
        let raw =
            unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), self.0.len() * 16) };
        raw.to_vec()
    }
}

// SAFETY: the boxed slice neither moves nor is freed while the `Heap` lives (the ring
// borrows it), its units are 16-byte aligned, and `UnsafeCell` makes writes through the
// pointer legal.
unsafe impl RingMemory for &Heap {
    fn as_ptr(&self) -> *mut u8 {
        self.0.as_ptr().cast_mut().cast()
    }

    fn size(&self) -> usize {
        self.0.len() * 16
    }
}

/// Memory that reports its pointer and size but is only ever asked its size.
struct SizeOnly(usize);

// SAFETY: `new` refuses every ring over it in these tests, so the pointer is never used.
unsafe impl RingMemory for SizeOnly {
    fn as_ptr(&self) -> *mut u8 {
        std::ptr::null_mut()
    }

    fn size(&self) -> usize {
        self.0
    }
}

#[test]
fn geometry_is_checked_and_reported() {
    // 8 entries of 64 bytes need 512 bytes.
    let (small, large) = (Heap::new(512), Heap::new(1024));
    let ring = MemoryRing::new(&small, 3, 6).expect("an exact fit");
    assert_eq!((ring.log_entries(), ring.entry_shift()), (3, 6));
    let ring = MemoryRing::new(&large, 4, 4).expect("16-byte entries");
    assert_eq!((ring.log_entries(), ring.entry_shift()), (4, 4));

    assert!(
        MemoryRing::new(SizeOnly(511), 3, 6).is_none(),
        "memory one byte short"
    );
    assert!(
        MemoryRing::new(SizeOnly(1 << 20), 3, 3).is_none(),
        "8-byte entries"
    );
    assert!(
        MemoryRing::new(SizeOnly(usize::MAX), 16, 16).is_none(),
        "a ring of 4 GiB"
    );
    assert!(
        MemoryRing::new(SizeOnly(usize::MAX), u32::MAX, 6).is_none(),
        "overflow"
    );
}

#[test]
fn words_are_big_endian_at_their_entry_and_offset() {
    let heap = Heap::new(512);
    let ring = MemoryRing::new(&heap, 3, 6).expect("ring");
    ring.write_word(1, 4, 0x1122_3344);
    ring.write_word(2, 60, 0xa1b2_c3d4); // the entry's last word
    let bytes = heap.bytes();
    assert_eq!(bytes[64 + 4..64 + 8], [0x11, 0x22, 0x33, 0x44]);
    assert_eq!(bytes[128 + 60..128 + 64], [0xa1, 0xb2, 0xc3, 0xd4]);
    assert_eq!(
        bytes.iter().filter(|b| **b != 0).count(),
        8,
        "nothing else written"
    );
    assert_eq!(ring.read_word(1, 4), 0x1122_3344);
    assert_eq!(ring.read_word(2, 60), 0xa1b2_c3d4);
    assert_eq!(ring.read_word(1, 0), 0);
}

#[test]
fn indexes_wrap_to_the_ring() {
    let heap = Heap::new(512);
    let ring = MemoryRing::new(&heap, 3, 6).expect("ring");
    // Free-running counters: 8 + 1 and 16 + 1 are slot 1, 8 + 6 is slot 6.
    ring.write_word(9, 8, 0x0102_0304);
    assert_eq!(ring.read_word(1, 8), 0x0102_0304);
    assert_eq!(ring.read_word(17, 8), 0x0102_0304);
    ring.write_word(14, 0, 0x0506_0708);
    assert_eq!(heap.bytes()[6 * 64..6 * 64 + 4], [5, 6, 7, 8]);
    // SAFETY: no other reference to the entry exists.
    unsafe { ring.with_entry_mut(8 + 7, |entry| entry.fill(0xee)) };
    let bytes = heap.bytes();
    assert!(bytes[7 * 64..].iter().all(|b| *b == 0xee));
    assert!(bytes[6 * 64 + 4..7 * 64].iter().all(|b| *b == 0));
    // SAFETY: as above.
    let seen = unsafe { ring.with_entry(7, |entry| (entry.len(), entry[0], entry[63])) };
    assert_eq!(seen, (64, 0xee, 0xee));
}

#[test]
fn a_word_outside_its_entry_or_unaligned_is_neither_read_nor_written() {
    let heap = Heap::new(512);
    let ring = MemoryRing::new(&heap, 3, 6).expect("ring");
    // SAFETY: no other reference to the entries exists.
    unsafe {
        ring.with_entry_mut(3, |entry| entry.fill(0x55));
        ring.with_entry_mut(4, |entry| entry.fill(0x66));
    }
    let before = heap.bytes();
    for offset in [1, 2, 3, 62, 64, 68, usize::MAX - 2] {
        ring.write_word(3, offset, 0xdead_beef);
        assert_eq!(ring.read_word(3, offset), 0, "offset {offset}");
    }
    assert_eq!(heap.bytes(), before, "a refused word wrote memory");
    assert_eq!(ring.read_word(3, 60), 0x5555_5555);
    assert_eq!(ring.read_word(4, 0), 0x6666_6666);
}
