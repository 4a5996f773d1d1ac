//! Keeping the secret from the other processes of the same user.
//!
//! A session runs as the worker's user unless `--session-user` says
//! otherwise, and Linux lets a process read `/proc/<pid>/environ` and
//! `/proc/<pid>/mem` of any *dumpable* process of its user. So both
//! binaries turn dumpability off (those files become root's) and wipe the
//! secret and the connection URLs from their environment before any thread
//! exists.

/// The variables that carry the fleet's credentials: the signing secret,
/// the API token, and the broker and Redis URLs (which may hold passwords).
pub const FLEET_VARIABLES: &[&str] = &[
    "REGATTA_SECRET",
    "REGATTA_API_TOKEN",
    "REGATTA_AMQP_URL",
    "REGATTA_REDIS_URL",
];

/// Makes this process non-dumpable: its `/proc/<pid>/environ`, `mem`,
/// `maps` and the like become root's, it cannot be ptraced by its own
/// user, and it leaves no core dump. `execve` resets this, so every binary
/// calls it itself; the programs it starts stay dumpable as usual.
pub fn keep_memory_private() -> Result<(), nix::Error> {
    nix::sys::prctl::set_dumpable(false)
}

/// Removes `names` from the environment, and first overwrites their values
/// where the kernel keeps the environment the process started with: that
/// block, not libc's copy, is what `/proc/<pid>/environ` shows, so
/// `remove_var` alone would leave the secret there.
///
/// # Safety
///
/// No other thread may run (nor read the environment) meanwhile: call it
/// at the start of `main`, before any runtime or logger starts threads.
pub unsafe fn scrub_environment(names: &[&str]) {
    for name in names {
        let Ok(c_name) = std::ffi::CString::new(*name) else {
            continue;
        };
        // SAFETY: single-threaded by the caller's contract; `getenv`
        // returns a pointer to the NUL-terminated value inside the
        // environment block, which is writable process memory (the initial
        // stack, or a string libc allocated); we overwrite only the bytes
        // before its terminator.
        unsafe {
            let value = nix::libc::getenv(c_name.as_ptr());
            if !value.is_null() {
                let len = nix::libc::strlen(value);
                std::ptr::write_bytes(value, b'x', len);
            }
            std::env::remove_var(name);
        }
    }
}
