//! Workspace memory: zeroed, 64-byte aligned; from 2 MiB up an anonymous
//! mapping aligned to 2 MiB and advised `MADV_HUGEPAGE`, so transparent
//! huge pages back it (when the kernel's THP mode is `always` or `madvise`)
//! and a model's activations cost a handful of TLB entries.
//!
//! Pages of a mapping are placed on a NUMA node when first written; a pool
//! bound to one node can fault them in from its own threads with
//! [`crate::Pool::first_touch`].

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::ptr::NonNull;

/// Size and alignment of a transparent huge page on x86-64 and on aarch64
/// with 4 KiB base pages.
pub const HUGE_PAGE: usize = 2 << 20;

/// An owned, zeroed, aligned byte buffer.
pub struct Arena {
    ptr: NonNull<u8>,
    len: usize,
    kind: Kind,
}

enum Kind {
    Heap(Layout),
    /// `mapped` bytes at `base`; `huge`: the kernel accepted MADV_HUGEPAGE.
    Map {
        base: *mut u8,
        mapped: usize,
        huge: bool,
    },
}

// SAFETY: the arena owns its memory exclusively; access goes through
// `&`/`&mut self`.
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

impl Arena {
    /// `len` zeroed bytes (at least 64 are reserved, so the pointer is never
    /// dangling).
    pub fn new(len: usize) -> io::Result<Arena> {
        if len >= HUGE_PAGE {
            return Self::mapped(len);
        }
        let layout = Layout::from_size_align(len.max(64), 64)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "workspace"))?;
        Ok(Arena {
            ptr,
            len,
            kind: Kind::Heap(layout),
        })
    }

    fn mapped(len: usize) -> io::Result<Arena> {
        let body = len.div_ceil(HUGE_PAGE) * HUGE_PAGE;
        let mapped = body + HUGE_PAGE;
        // SAFETY: an anonymous private mapping; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base.cast::<u8>();
        let start = (base as usize).next_multiple_of(HUGE_PAGE);
        let ptr = start as *mut u8;
        // SAFETY: [ptr, ptr + body) lies inside the mapping.
        let huge = unsafe { libc::madvise(ptr.cast(), body, libc::MADV_HUGEPAGE) } == 0;
        Ok(Arena {
            ptr: NonNull::new(ptr).expect("mmap returned a non-null address"),
            len,
            kind: Kind::Map { base, mapped, huge },
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes a mapped arena's pages read-only (an error for a small, heap
    /// arena, whose pages it shares with other allocations).
    pub fn make_read_only(&self) -> io::Result<()> {
        let Kind::Map { .. } = self.kind else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only a mapped arena can be made read-only",
            ));
        };
        let len = self.len.next_multiple_of(4096);
        // SAFETY: `[ptr, ptr + len)` lies inside the mapping (its body is
        // a whole number of huge pages from the page-aligned `ptr`).
        if unsafe { libc::mprotect(self.ptr.as_ptr().cast(), len, libc::PROT_READ) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the memory is advised for transparent huge pages.
    pub fn huge_pages(&self) -> bool {
        matches!(self.kind, Kind::Map { huge: true, .. })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` zeroed-or-written bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        match self.kind {
            // SAFETY: allocated in `new` with this layout.
            Kind::Heap(layout) => unsafe { dealloc(self.ptr.as_ptr(), layout) },
            // SAFETY: the mapping made in `mapped`.
            Kind::Map { base, mapped, .. } => unsafe {
                libc::munmap(base.cast(), mapped);
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_arenas_are_aligned_and_zeroed() {
        for len in [0, 1, 100, 4096, HUGE_PAGE - 1, HUGE_PAGE, 5 * HUGE_PAGE + 3] {
            let mut a = Arena::new(len).unwrap();
            assert_eq!(a.len(), len);
            assert_eq!(a.as_ptr() as usize % 64, 0);
            assert!(a.as_slice().iter().all(|&b| b == 0));
            a.as_mut_slice().fill(7);
            assert!(a.as_slice().iter().all(|&b| b == 7));
            if len >= HUGE_PAGE {
                assert_eq!(a.as_ptr() as usize % HUGE_PAGE, 0);
                let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                    .unwrap_or_default();
                if thp.contains("[always]") || thp.contains("[madvise]") {
                    assert!(a.huge_pages(), "THP is on ({thp:?}) but madvise failed");
                }
            } else {
                assert!(!a.huge_pages());
            }
        }
    }

    #[test]
    fn mapped_arenas_become_read_only() {
        let mut a = Arena::new(HUGE_PAGE + 5).unwrap();
        a.as_mut_slice()[0] = 7;
        a.make_read_only().unwrap();
        assert_eq!(a.as_slice()[0], 7);
        assert!(Arena::new(100).unwrap().make_read_only().is_err());
    }
}
