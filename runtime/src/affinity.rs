//! Thread CPU affinity through `sched_getaffinity` / `sched_setaffinity`
//! (pid 0 = the calling thread). Reading the mask, not the CPU count, is
//! what makes the pool respect `taskset`, cpusets and container limits.

use std::io;

/// The CPUs the calling thread may run on, ascending.
pub fn current() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel writes at
    // most `size_of::<cpu_set_t>()` bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// Restricts the calling thread to `cpus`.
pub fn set_current(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: as in `current`; CPU_SET is only called with in-range CPUs.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c >= libc::CPU_SETSIZE as usize {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("CPU {c} is beyond the affinity mask's size"),
                ));
            }
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_a_thread_reads_back() {
        let allowed = current().unwrap();
        assert!(!allowed.is_empty());
        let last = *allowed.last().unwrap();
        std::thread::spawn(move || {
            set_current(&[last]).unwrap();
            assert_eq!(current().unwrap(), vec![last]);
        })
        .join()
        .unwrap();
        // The spawning thread is unaffected.
        assert_eq!(current().unwrap(), allowed);
        assert!(set_current(&[1 << 20]).is_err());
    }
}
