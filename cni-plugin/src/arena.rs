//! The plugin's allocator: a bump arena in the binary's zero-filled data,
//! never given back. A CNI call lives for about a millisecond and allocates
//! a few dozen KiB; a general-purpose allocator spends that millisecond's
//! share on `mmap`/`munmap` calls and on fresh pages it maps one by one
//! (each first touch of an anonymous page is a fault, about 2 µs in a VM),
//! where the arena packs everything into the few pages it touches. Freeing
//! the newest block gives its space back, and growing it grows in place,
//! so reading stdin into a growing buffer does not copy. What does not fit
//! goes to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The least alignment of a block: malloc's, which code relies on beyond
/// what it asks (nix builds a control message's header in a byte buffer,
/// and a debug build checks the header's alignment).
const MIN_ALIGN: usize = 16;

/// The arena's size: several times what the largest call allocates (a GC
/// with its attachment list), less than one huge network configuration
/// (stdin is capped at 1 MiB), which the system allocator then takes.
const ARENA_BYTES: usize = 512 * 1024;

/// The bump arena.
#[derive(Debug)]
pub struct Arena {
    bytes: UnsafeCell<[u8; ARENA_BYTES]>,
    /// The offset of the first free byte.
    next: AtomicUsize,
}

// SAFETY: every block is handed out at most once (the offset only moves by
// compare-and-swap), so no two threads ever share one.
unsafe impl Sync for Arena {}

impl Arena {
    /// An empty arena.
    pub const fn new() -> Arena {
        Arena {
            bytes: UnsafeCell::new([0; ARENA_BYTES]),
            next: AtomicUsize::new(0),
        }
    }

    fn base(&self) -> usize {
        self.bytes.get() as usize
    }

    fn owns(&self, ptr: *mut u8) -> bool {
        let p = ptr as usize;
        p >= self.base() && p < self.base() + ARENA_BYTES
    }

    /// A block of `layout` from the arena, or null when it is full.
    fn bump(&self, layout: Layout) -> *mut u8 {
        let base = self.base();
        let align = layout.align().max(MIN_ALIGN);
        let mut next = self.next.load(Ordering::Acquire);
        loop {
            let start = (base + next).next_multiple_of(align) - base;
            let Some(end) = start.checked_add(layout.size()) else {
                return std::ptr::null_mut();
            };
            if end > ARENA_BYTES {
                return std::ptr::null_mut();
            }
            match self
                .next
                .compare_exchange_weak(next, end, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return (base + start) as *mut u8,
                Err(now) => next = now,
            }
        }
    }

    /// Moves the free offset from the end of the block at `ptr` (of `old`
    /// bytes) to `new_end`, if that block is the newest one.
    fn resize_last(&self, ptr: *mut u8, old: usize, new_end: usize) -> bool {
        let end = ptr as usize - self.base() + old;
        new_end <= ARENA_BYTES
            && self
                .next
                .compare_exchange(end, new_end, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

impl Default for Arena {
    fn default() -> Arena {
        Arena::new()
    }
}

// SAFETY: blocks come from the arena's own bytes, sized as asked, aligned
// at least as asked and never handed out twice, or from the system allocator; each is
// given back to where it came from.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = self.bump(layout);
        if p.is_null() {
            // SAFETY: the caller's layout, passed on.
            unsafe { System.alloc(layout) }
        } else {
            p
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = self.bump(layout);
        if p.is_null() {
            // SAFETY: the caller's layout, passed on.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: `p` is `layout.size()` bytes of the arena, ours alone;
        // they may have been used by a block freed before.
        unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.owns(ptr) {
            // The newest block's space is reused; any other stays.
            self.resize_last(ptr, layout.size(), ptr as usize - self.base());
        } else {
            // SAFETY: a block the system allocator gave with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.owns(ptr) {
            let start = ptr as usize - self.base();
            if start
                .checked_add(new_size)
                .is_some_and(|end| self.resize_last(ptr, layout.size(), end))
            {
                return ptr;
            }
            if new_size <= layout.size() {
                return ptr;
            }
        }
        // SAFETY: `layout.align()` is a valid alignment and `new_size` was
        // checked by the caller not to overflow it.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a fresh block for the new layout.
        let fresh = unsafe { self.alloc(new_layout) };
        if !fresh.is_null() {
            // SAFETY: both blocks are at least `min(old, new)` bytes and
            // distinct.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).expect("layout")
    }

    #[test]
    fn every_block_is_aligned_as_malloc_would_align_it() {
        let a = Box::new(Arena::new());
        // SAFETY: layouts of non-zero size, blocks not used.
        unsafe {
            for size in [1, 3, 7, 24] {
                let p = a.alloc(layout(size, 1));
                assert_eq!(p as usize % MIN_ALIGN, 0, "a block of {size} bytes");
            }
        }
    }

    #[test]
    fn blocks_are_aligned_and_distinct() {
        let a = Box::new(Arena::new());
        // SAFETY: layouts of non-zero size; blocks used within their size.
        unsafe {
            let p = a.alloc(layout(3, 1));
            let q = a.alloc(layout(16, 16));
            assert_eq!(q as usize % 16, 0);
            assert!(q as usize >= p as usize + 3);
            q.write_bytes(7, 16);
            assert_eq!(*q.add(15), 7);
        }
    }

    #[test]
    fn the_newest_block_grows_in_place_and_its_space_comes_back() {
        let a = Box::new(Arena::new());
        // SAFETY: as above; each block is freed with the layout it has.
        unsafe {
            let p = a.alloc(layout(8, 8));
            p.write_bytes(1, 8);
            let grown = a.realloc(p, layout(8, 8), 4096);
            assert_eq!(grown, p, "the newest block grows where it is");
            assert_eq!(*grown.add(7), 1);
            a.dealloc(grown, layout(4096, 8));
            let again = a.alloc(layout(8, 8));
            assert_eq!(again, p, "its space is handed out again");
        }
    }

    #[test]
    fn an_older_block_moves_when_it_grows_and_keeps_its_bytes() {
        let a = Box::new(Arena::new());
        // SAFETY: as above.
        unsafe {
            let p = a.alloc(layout(4, 1));
            p.copy_from(b"abcd".as_ptr(), 4);
            let _q = a.alloc(layout(4, 1));
            let moved = a.realloc(p, layout(4, 1), 8);
            assert_ne!(moved, p);
            assert_eq!(std::slice::from_raw_parts(moved, 4), b"abcd");
        }
    }

    #[test]
    fn what_does_not_fit_comes_from_the_system_and_goes_back_there() {
        let a = Box::new(Arena::new());
        // SAFETY: as above.
        unsafe {
            let big = a.alloc(layout(ARENA_BYTES + 1, 8));
            assert!(!big.is_null());
            assert!(!a.owns(big));
            big.write_bytes(0, ARENA_BYTES + 1);
            a.dealloc(big, layout(ARENA_BYTES + 1, 8));
            let z = a.alloc_zeroed(layout(64, 8));
            assert!(a.owns(z));
            assert!(std::slice::from_raw_parts(z, 64).iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn a_block_grown_past_the_arena_moves_to_the_system() {
        let a = Box::new(Arena::new());
        // SAFETY: as above.
        unsafe {
            let p = a.alloc(layout(16, 8));
            p.write_bytes(9, 16);
            let big = a.realloc(p, layout(16, 8), ARENA_BYTES * 2);
            assert!(!a.owns(big));
            assert_eq!(*big.add(15), 9);
            a.dealloc(big, layout(ARENA_BYTES * 2, 8));
        }
    }
}
