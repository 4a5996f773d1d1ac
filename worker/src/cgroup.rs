//! One cgroup v2 per session, so that at its end every process it started
//! dies at once (`cgroup.kill`), however it detached (double fork,
//! `setsid`) and even if the session's leader was killed first.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The cgroup this worker runs in, under which it makes one child cgroup
/// per session.
#[derive(Debug, Clone)]
pub struct CgroupParent {
    dir: PathBuf,
    next: Arc<AtomicU64>,
}

impl CgroupParent {
    /// Finds this process's cgroup v2 and checks that it can make, kill and
    /// remove a child there; the reason when it cannot (no cgroup v2, a
    /// read-only mount, a kernel without `cgroup.kill`).
    pub fn probe() -> Result<CgroupParent, String> {
        let mount = cgroup2_mount().ok_or("no cgroup v2 file system is mounted")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let relative = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .ok_or("this process has no cgroup v2 (no 0:: line in /proc/self/cgroup)")?;
        let dir = mount.join(relative.trim_start_matches('/'));
        let parent = CgroupParent {
            dir,
            next: Arc::new(AtomicU64::new(0)),
        };
        let probe = parent
            .dir
            .join(format!("regatta-{}-probe", std::process::id()));
        std::fs::create_dir(&probe)
            .map_err(|e| format!("cannot make a cgroup under {}: {e}", parent.dir.display()))?;
        let killable = probe.join("cgroup.kill").exists();
        let _ = std::fs::remove_dir(&probe);
        if !killable {
            return Err(format!(
                "the kernel has no cgroup.kill (Linux 5.14+) under {}",
                parent.dir.display()
            ));
        }
        parent.remove_stale();
        Ok(parent)
    }

    /// Removes the empty session cgroups of workers that are gone (killed
    /// before they could remove them); a populated one stays.
    fn remove_stale(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("regatta-"))
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }

    /// Where the session cgroups are made.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes a new, empty cgroup for one session.
    pub fn create(&self) -> std::io::Result<SessionCgroup> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(format!("regatta-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir)?;
        match std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
        {
            Ok(procs) => Ok(SessionCgroup { dir, procs }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }
}

/// One session's cgroup: the leader joins it before it runs anything, so
/// every process of the session is in it.
#[derive(Debug)]
pub struct SessionCgroup {
    dir: PathBuf,
    procs: std::fs::File,
}

impl SessionCgroup {
    /// The open `cgroup.procs`: writing "0" to it moves the writer into the
    /// cgroup, which a child does between fork and exec ([`join`]).
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Kills every process left in the cgroup, waits (up to `within`) until
    /// it is empty, and removes it.
    pub async fn kill_and_remove(self, within: Duration) {
        let dir = self.dir.clone();
        let _ = tokio::task::spawn_blocking(move || kill_and_remove(&dir, within)).await;
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs_fd`. Async-signal-safe (one `write`), for a `pre_exec` hook.
pub fn join(procs_fd: RawFd) -> std::io::Result<()> {
    // SAFETY: the descriptor stays open in the parent until spawn returns.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(procs_fd) };
    nix::unistd::write(fd, b"0")
        .map(|_| ())
        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
}

fn kill_and_remove(dir: &Path, within: Duration) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
        .and_then(|mut kill| kill.write_all(b"1"));
    let started = Instant::now();
    // An empty cgroup (its killed processes may still be zombies) can go.
    while std::fs::remove_dir(dir).is_err() && started.elapsed() < within {
        std::thread::sleep(Duration::from_millis(5));
    }
    if dir.exists() {
        tracing::warn!(cgroup = %dir.display(), "a session's cgroup is still populated after cgroup.kill; left in place");
    }
}

/// Where the cgroup v2 hierarchy is mounted, from /proc/self/mountinfo
/// (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid machines).
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        let mount_point = before.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}
