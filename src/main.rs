fn main() -> std::process::ExitCode {
    limit_allocator_hoarding();
    zt_janitor::cli::main()
}

/// A daemon that sleeps between cycles should not keep each cycle's peak. glibc gives every
/// thread that allocates an arena of its own (up to 8 per core) and raises its mmap threshold
/// each time a large block is freed, so page buffers and candidate lists end up in arenas
/// that are seldom returned. Two arenas and a fixed 1 MiB threshold took the 100k-registration
/// apply cycle from about 38 to 33 MiB peak RSS (see README, Benchmark).
fn limit_allocator_hoarding() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
