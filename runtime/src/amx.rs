//! AMX tile permission. Linux enables the AMX tile-data state per process
//! only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`);
//! without it the first tile instruction kills the process with SIGILL.
//! The request covers every thread of the process and is idempotent.
//! Models compiled with `--fast-math bf16` for an AMX target make the same
//! request at the start of every run (status 4 when refused); the JIT and
//! C programs can ask earlier, for a clear error before any run.

/// `arch_prctl` option: request permission for a dynamically enabled
/// XSAVE feature.
pub const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
/// The XSAVE feature number of AMX tile data.
pub const XFEATURE_XTILEDATA: u64 = 18;

/// Asks the kernel for AMX tile permission; the error says why it was
/// refused.
pub fn request_permission() -> Result<(), String> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        // SAFETY: arch_prctl with these arguments only changes the
        // process's permitted XSAVE features; it reads no memory.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            let e = std::io::Error::last_os_error();
            Err(format!(
                "the kernel refused AMX tile permission (arch_prctl ARCH_REQ_XCOMP_PERM): {e}"
            ))
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        Err("AMX tiles need x86-64 Linux".to_string())
    }
}

/// C entry: 0 when AMX tiles may be used, -1 when the kernel refused.
#[unsafe(no_mangle)]
pub extern "C" fn cpucc_amx_init() -> i32 {
    if request_permission().is_ok() { 0 } else { -1 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn amx_host_grants_permission() {
        let amx = std::fs::read_to_string("/proc/cpuinfo")
            .is_ok_and(|s| s.split_whitespace().any(|w| w == "amx_tile"));
        if amx {
            super::request_permission().expect("AMX host grants permission");
            assert_eq!(super::cpucc_amx_init(), 0);
        }
    }
}
