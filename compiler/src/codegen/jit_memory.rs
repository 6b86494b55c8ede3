//! Memory for the JIT: cranelift-jit's own provider for code and small
//! data, and a huge-page [`Arena`] of its own for each read-only object
//! of at least 2 MiB (weights).
//!
//! The weights must sit on huge pages before they are written: advised
//! after the copy, the kernel only collapses them in the background, and
//! the GEMMs that stream them from memory walk the page tables every
//! 4 KiB (MLP batch 32, one thread: 37.0 -> 34.5 ms; batch 1: 15.7 ->
//! 14.2 ms). `MADV_COLLAPSE` after the copy works too, but costs 0.6 s
//! per 172 MB of compile time.

use std::io;

use cpucc_runtime::{Arena, HUGE_PAGE};
use cranelift_jit::{BranchProtection, JITMemoryKind, JITMemoryProvider, SystemMemoryProvider};
use cranelift_module::{ModuleError, ModuleResult};

pub struct HugeWeights {
    system: SystemMemoryProvider,
    large: Vec<Arena>,
}

impl HugeWeights {
    pub fn new() -> HugeWeights {
        HugeWeights {
            system: SystemMemoryProvider::new(),
            large: Vec::new(),
        }
    }
}

impl JITMemoryProvider for HugeWeights {
    fn allocate(&mut self, size: usize, align: u64, kind: JITMemoryKind) -> io::Result<*mut u8> {
        if matches!(kind, JITMemoryKind::ReadOnly) && size >= HUGE_PAGE && align <= HUGE_PAGE as u64
        {
            let arena = Arena::new(size)?;
            let ptr = arena.as_ptr();
            self.large.push(arena);
            return Ok(ptr);
        }
        self.system.allocate(size, align, kind)
    }

    unsafe fn free_memory(&mut self) {
        self.large.clear();
        // SAFETY: the caller's contract (no code of the module runs after).
        unsafe { self.system.free_memory() };
    }

    fn finalize(&mut self, branch_protection: BranchProtection) -> ModuleResult<()> {
        for a in &self.large {
            a.make_read_only()
                .map_err(|err| ModuleError::Allocation { err })?;
        }
        self.system.finalize(branch_protection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_read_only_objects_get_huge_page_arenas() {
        let mut m = HugeWeights::new();
        let big = m
            .allocate(HUGE_PAGE + 64, 64, JITMemoryKind::ReadOnly)
            .unwrap();
        assert_eq!(big as usize % HUGE_PAGE, 0);
        assert_eq!(m.large.len(), 1);
        m.allocate(HUGE_PAGE - 64, 64, JITMemoryKind::ReadOnly)
            .unwrap();
        m.allocate(HUGE_PAGE + 64, 64, JITMemoryKind::Writable)
            .unwrap();
        assert_eq!(m.large.len(), 1);
        // SAFETY: the allocation is at least this long and not yet sealed.
        unsafe { big.write(9) };
        m.finalize(BranchProtection::None).unwrap();
        // SAFETY: still mapped (read-only) until `free_memory`.
        assert_eq!(unsafe { big.read() }, 9);
        // SAFETY: nothing uses the memory afterwards.
        unsafe { m.free_memory() };
        assert!(m.large.is_empty());
    }
}
