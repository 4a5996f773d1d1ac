//! CPU time of processes, read from `/proc`, so that the fleet scenarios can
//! say what each part of the fleet (coordinator, workers with their session
//! leaders, the broker, Redis) spent per unit or per second.
//!
//! Times are in seconds, from the clock ticks of `/proc/<pid>/stat`
//! (USER_HZ, 100 on Linux): good to 10 ms, so they are read over windows of
//! seconds. A process that is gone reads as 0.

use std::path::Path;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` after the command name, which may hold
/// spaces and so ends at the last ')'.
fn stat_fields(path: &Path) -> Vec<u64> {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    after
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .collect()
}

/// utime, stime, cutime and cstime (fields 14 to 17 of stat) in seconds.
fn times(path: &Path) -> [f64; 4] {
    let fields = stat_fields(path);
    let tick = |i: usize| fields.get(i).copied().unwrap_or(0) as f64 / TICKS_PER_SECOND;
    // Field 14 is the 12th after ')' (the state, field 3, is the first).
    [tick(11), tick(12), tick(13), tick(14)]
}

/// User plus system CPU time of a process itself, in seconds.
pub fn own(pid: u32) -> f64 {
    let [user, system, _, _] = times(&Path::new("/proc").join(pid.to_string()).join("stat"));
    user + system
}

/// CPU time of a process and of its children that it has waited for (a
/// worker's session leaders, and their `/bin/sh`), in seconds.
pub fn with_reaped_children(pid: u32) -> f64 {
    times(&Path::new("/proc").join(pid.to_string()).join("stat"))
        .iter()
        .sum()
}

/// CPU time of the children this process has waited for, in seconds.
pub fn reaped_children_of_self() -> f64 {
    let [_, _, user, system] = times(Path::new("/proc/self/stat"));
    user + system
}

/// The processes whose command name (`/proc/<pid>/comm`) is `name`, such as
/// `beam.smp` (RabbitMQ) or `redis-server`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// The longest-running process named `name`: the server itself, not the
/// short-lived tools of the same name (`rabbitmqctl` runs a `beam.smp` too).
pub fn oldest_named(name: &str) -> Option<u32> {
    pids_named(name)
        .into_iter()
        // Field 22, the start time, is the 20th after ')'.
        .min_by_key(|pid| {
            let fields = stat_fields(&Path::new("/proc").join(pid.to_string()).join("stat"));
            fields.get(19).copied().unwrap_or(u64::MAX)
        })
}

/// The machine's load averages over 1, 5 and 15 minutes.
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut values = text
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
    [
        values.next().unwrap_or(f64::NAN),
        values.next().unwrap_or(f64::NAN),
        values.next().unwrap_or(f64::NAN),
    ]
}

/// The live children of `parent` (a worker's session supervisor, whose
/// CPU and whose reaped leaders' the worker only counts once it reaps the
/// supervisor itself, at its exit).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // Field 4, the parent, is the 2nd after ')'.
            stat_fields(&Path::new("/proc").join(pid.to_string()).join("stat"))
                .get(1)
                .is_some_and(|ppid| *ppid == u64::from(parent))
        })
        .collect()
}

/// Peak resident memory of a process, in MB.
pub fn peak_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_grows_with_work_and_children_are_counted_once_reaped() {
        let me = std::process::id();
        let before = own(me);
        // Spin until the kernel has counted 100 ms of CPU (on a loaded
        // machine that takes longer than 100 ms of wall time), or give up.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while own(me) - before < 0.1 && started.elapsed() < std::time::Duration::from_secs(60) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        assert!(own(me) - before >= 0.1, "spinning shows as CPU");
        assert!(with_reaped_children(me) >= own(me));

        let children_before = reaped_children_of_self();
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .expect("run sh");
        assert!(status.success());
        assert!(reaped_children_of_self() > children_before);
    }

    #[test]
    fn finds_processes_by_name_and_reads_the_load() {
        let name = std::fs::read_to_string("/proc/self/comm").expect("comm");
        assert!(pids_named(name.trim_end()).contains(&std::process::id()));
        assert!(pids_named("no-such-process-name").is_empty());
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("start sleep");
        let started = |pid: u32| {
            stat_fields(&Path::new("/proc").join(pid.to_string()).join("stat"))
                .get(19)
                .copied()
        };
        // The kernel renames the child during exec after `spawn` has
        // returned (close-on-exec runs first), and `sleep` may be a
        // multi-call binary named otherwise: wait for the child's own name.
        let comm_of_child =
            || std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap_or_default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while comm_of_child() == name && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let comm = comm_of_child();
        assert_ne!(comm, name, "the child took its own name within 3 s");
        let oldest = oldest_named(comm.trim_end()).expect("the child is found by its name");
        assert!(started(oldest) <= started(child.id()));
        assert!(children_of(std::process::id()).contains(&child.id()));
        let _ = child.kill();
        let _ = child.wait();
        assert!(!children_of(std::process::id()).contains(&child.id()));
        assert!(load_average()[0] >= 0.0);
        assert!(peak_mb(std::process::id()) > 0.0);
    }
}
