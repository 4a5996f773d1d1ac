//! What a session cannot do to its worker and its fleet: read the fleet's
//! secret (from the worker's environment, memory or command line, or from
//! its secret file), or leave a process running behind it.
//!
//! Tests run as root here, and root reads every `/proc/<pid>/environ`
//! whatever the process's dumpable flag. So the sessions of these tests
//! run as `nobody` (uid 65534): either the whole worker does (`setpriv`),
//! as a worker of an unprivileged user would, or a root worker runs them
//! with `--session-user`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regatta_coordinator::manifest::Manifest;
use regatta_coordinator::scheduler::{BatchState, UnitState};
use regatta_tests::{amqp_url, binary, new_secret, redis_url, write_file, Fleet};

/// `nobody`: the user the sessions of these tests run as.
const NOBODY: &str = "65534";

/// Everything a session could try to find the fleet's secret, written to
/// `seen.txt`: the worker's environment, command line and memory (every
/// 64-hex-digit string in its writable mappings), the leader's environment,
/// and the secret file when `SECRET_FILE` names one.
const PROBE: &str = r#"#!/bin/sh
W=$WORKER
{
  echo "== environ of the worker $W"; tr '\0' '\n' < /proc/$W/environ
  echo "== environ of the leader $PPID"; tr '\0' '\n' < /proc/$PPID/environ
  echo "== cmdline of the worker"; tr '\0' ' ' < /proc/$W/cmdline; echo
  if [ -n "$SECRET_FILE" ]; then echo "== secret file"; cat "$SECRET_FILE"; fi
  echo "== memory of the worker"
  grep ' rw-p ' /proc/$W/maps | while read -r range rest; do
    start=$((0x${range%-*})); end=$((0x${range#*-}))
    dd if=/proc/$W/mem bs=4096 skip=$((start / 4096)) count=$(((end - start) / 4096)) 2>/dev/null
  done | grep -a -o -E '[0-9a-f]{64}' | sort -u
  echo "== end"
} > seen.txt 2>&1
"#;

/// A double-forked daemon: `setsid` takes it out of the session's process
/// group, it keeps the session's stdout (the log pipe) open, and it keeps
/// writing a file, as a daemon holding a touched file would.
const DAEMON: &str = r#"#!/bin/sh
sh -c 'setsid sh -c "echo \$\$ > daemon.pid; while :; do echo tick; date +%s%N >> touched.txt; sleep 0.1; done" &'
while [ ! -s daemon.pid ]; do sleep 0.05; done
echo "daemon $(cat daemon.pid) started"
"#;

/// A worker started by the test itself (as another user, with flags the
/// fleet helper does not give); its log is printed if the test fails.
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    /// Starts `regatta-worker` for `fleet`'s namespace, through `prefix`
    /// (e.g. `setpriv ...`), with `args` and `env`; its log in `dir`.
    fn start(
        fleet: &Fleet,
        dir: &Path,
        prefix: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Worker {
        let log = dir.join("worker.log");
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary("regatta-worker"));
                command
            }
            None => Command::new(binary("regatta-worker")),
        };
        let child = command
            .args([
                "--slots",
                "1",
                "--lease-ttl",
                "30s",
                "--grace",
                "2s",
                "--name",
                "iso",
            ])
            .arg("--work-dir")
            .arg(dir.join("work"))
            .arg("--artifact-dir")
            .arg(dir.join("artifacts"))
            .args(args)
            .env_remove("REGATTA_SECRET")
            .env_remove("REGATTA_SECRET_FILE")
            .env("REGATTA_NAMESPACE", &fleet.namespace)
            .env("REGATTA_AMQP_URL", amqp_url())
            .env("REGATTA_REDIS_URL", redis_url())
            .env("REGATTA_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the worker's log"))
            .spawn()
            .expect("start regatta-worker");
        Worker { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the worker's log holds `text`, or fails the test.
    fn wait_for_log(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains(text) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the worker exited ({status}) before logging '{text}'");
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not log '{text}' within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- worker log ({}) ---\n{}",
                self.log.display(),
                self.log()
            );
        }
    }
}

/// A folder every user may write, for a session of `nobody`.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

fn manifest(dir: &Path, yaml: &str) -> Manifest {
    write_file(dir, "manifest.yaml", yaml);
    Manifest::load(&dir.join("manifest.yaml"))
        .unwrap_or_else(|e| panic!("test manifest is valid: {e}"))
}

/// Runs the one-unit batch of `m` and returns its only attempt, which must
/// have succeeded.
async fn run_one(fleet: &Fleet, m: &Manifest) -> regatta_coordinator::scheduler::Attempt {
    let client = fleet.client();
    let batch = client.enqueue(m).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(120)).await;
    let units = client.units(&batch, None).await.expect("units");
    assert_eq!(summary.state, BatchState::Succeeded, "{units:#?}");
    assert_eq!(units[0].state, UnitState::Succeeded);
    units[0].history.last().cloned().expect("an attempt")
}

/// What the probe found, checked: it ran to its end, its reads of the
/// worker were refused, and the secret is nowhere in it nor in the log.
fn assert_nothing_leaked(
    dir: &Path,
    attempt: &regatta_coordinator::scheduler::Attempt,
    secret: &str,
) {
    let seen = std::fs::read_to_string(dir.join("seen.txt")).expect("the probe wrote seen.txt");
    assert!(seen.contains("== end"), "the probe did not finish:\n{seen}");
    assert!(
        !seen.contains("No such file"),
        "the probe looked at the wrong process:\n{seen}"
    );
    assert!(
        !seen.contains(secret),
        "the session read the fleet's secret:\n{seen}"
    );
    assert!(
        seen.contains("Permission denied"),
        "the probe's reads of the worker were not refused:\n{seen}"
    );
    assert!(
        !attempt.log_tail.contains(secret),
        "the secret is in the session's log"
    );
    let log = std::fs::read_to_string(&attempt.log_path).unwrap_or_default();
    assert!(!log.contains(secret), "the secret is in the session's log");
}

/// What root (the test) reads of the worker: its environment as the kernel
/// shows it (the block it started with) and its command line.
fn assert_gone_from_proc(pid: u32, secret: &str) {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read the worker's environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains("REGATTA_SECRET"),
        "the worker was not given REGATTA_SECRET by environment"
    );
    assert!(
        !environ.contains(secret),
        "the worker's /proc/<pid>/environ still shows the secret"
    );
    assert!(
        !environ.contains("guest:guest"),
        "the worker's /proc/<pid>/environ still shows the broker's password"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("read the worker's cmdline");
    assert!(!String::from_utf8_lossy(&cmdline).contains(secret));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_of_the_workers_own_user_cannot_read_the_secret_from_proc() {
    let fleet = Fleet::start("iso-env", 0, 1, "30s").await;
    let dir = open_dir();
    write_file(dir.path(), "probe.sh", PROBE);
    // The whole worker runs as nobody, so its sessions are of its own user:
    // only its being non-dumpable keeps /proc/<worker>/{environ,mem} closed.
    let worker = Worker::start(
        &fleet,
        dir.path(),
        &[
            "setpriv",
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ],
        &[],
        &[("REGATTA_SECRET", &fleet.secret)],
    );
    let m = manifest(
        dir.path(),
        &format!(
            "batch: iso\nplaybook:\n  name: p\n  run: exec ./probe.sh\n  env: {{WORKER: '{}'}}\nunits:\n  - id: probe\n",
            worker.pid()
        ),
    );
    let attempt = run_one(&fleet, &m).await;
    assert_nothing_leaked(dir.path(), &attempt, &fleet.secret);
    assert_gone_from_proc(worker.pid(), &fleet.secret);
    drop(worker);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_run_as_another_user_cannot_read_the_secret_file_nor_the_worker() {
    let fleet = Fleet::start("iso-file", 0, 1, "30s").await;
    let dir = open_dir();
    write_file(dir.path(), "probe.sh", PROBE);
    // The secret file, root's alone, as deployments should keep it.
    let private = tempfile::tempdir().expect("temp dir");
    let secret_file = private.path().join("secret");
    std::fs::write(&secret_file, format!("{}\n", fleet.secret)).expect("write the secret file");
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let file = secret_file.display().to_string();
    let mut worker = Worker::start(
        &fleet,
        dir.path(),
        &[],
        &[
            "--secret-file",
            &file,
            "--session-user",
            &format!("{NOBODY}:{NOBODY}"),
        ],
        &[],
    );
    worker.wait_for_log("sessions run as uid 65534 gid 65534");
    let m = manifest(
        dir.path(),
        &format!(
            "batch: iso\nplaybook:\n  name: p\n  run: exec ./probe.sh\n  env: {{WORKER: '{}', SECRET_FILE: '{file}'}}\nunits:\n  - id: probe\n",
            worker.pid()
        ),
    );
    let attempt = run_one(&fleet, &m).await;
    assert_nothing_leaked(dir.path(), &attempt, &fleet.secret);
    let seen = std::fs::read_to_string(dir.path().join("seen.txt")).expect("seen.txt");
    assert!(
        seen.contains("== secret file"),
        "the probe did not try the secret file:\n{seen}"
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", worker.pid())).expect("cmdline");
    assert!(!String::from_utf8_lossy(&cmdline).contains(&fleet.secret));
    drop(worker);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_on_the_command_line_still_works_with_a_warning() {
    let fleet = Fleet::start("iso-flag", 0, 1, "30s").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut worker = Worker::start(&fleet, dir.path(), &[], &["--secret", &fleet.secret], &[]);
    worker.wait_for_log("worker ready");
    assert!(
        worker.log().contains("/proc/<pid>/cmdline"),
        "no warning that --secret is visible to other processes:\n{}",
        worker.log()
    );
    drop(worker);
    fleet.stop().await;
}

#[test]
fn placeholder_and_short_secrets_are_refused_at_start() {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/example.env"),
    )
    .expect("read deploy/example.env");
    let placeholder = example
        .lines()
        .find_map(|line| line.strip_prefix("REGATTA_SECRET="))
        .expect("deploy/example.env sets REGATTA_SECRET");
    let short = "0123456789abcdef0123456789abcde"; // 31 bytes
    for secret in [placeholder, short, ""] {
        for (program, args) in [
            ("regatta", &["serve", "--listen", "127.0.0.1:0"][..]),
            ("regatta-worker", &[][..]),
        ] {
            let started = Instant::now();
            let output = Command::new(binary(program))
                .args(args)
                .env("REGATTA_SECRET", secret)
                .env(
                    "REGATTA_NAMESPACE",
                    regatta_tests::unique_namespace("iso-weak"),
                )
                .output()
                .expect("run the binary");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !output.status.success(),
                "{program} started with the secret {secret:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{program} did not refuse at once"
            );
            assert!(
                stderr.contains("REGATTA_SECRET"),
                "{program}: the error names no variable: {stderr}"
            );
            assert!(
                stderr.contains("openssl rand -hex 32"),
                "{program}: the error says not how to make a secret: {stderr}"
            );
        }
    }
    // A placeholder in a secret file is refused too, naming the file; a
    // good one gets both binaries past the secret (to a flag they refuse).
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("secret");
    for (secret, refused) in [(placeholder.to_owned(), true), (new_secret(), false)] {
        std::fs::write(&file, format!("{secret}\n")).expect("write the secret file");
        for (program, args) in [
            (
                "regatta",
                &["serve", "--listen", "127.0.0.1:0", "--lock-ttl", "0s"][..],
            ),
            ("regatta-worker", &["--slots", "0"][..]),
        ] {
            let output = Command::new(binary(program))
                .args(args)
                .arg("--secret-file")
                .arg(&file)
                .env_remove("REGATTA_SECRET")
                .output()
                .expect("run the binary");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success());
            if refused {
                assert!(
                    stderr.contains(&file.display().to_string()),
                    "{program}: {stderr}"
                );
                assert!(stderr.contains("placeholder"), "{program}: {stderr}");
            } else {
                assert!(stderr.contains(args[args.len() - 2]), "{program}: {stderr}");
            }
        }
    }
}

/// Runs the daemon unit on a worker with `--session-cgroups mode` and checks
/// that nothing of the session outlives it nor holds it up.
async fn a_daemon_dies_with_its_session(test: &str, mode: &str, contained_by: &str) {
    let fleet = Fleet::start(test, 0, 1, "30s").await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "daemon.sh", DAEMON);
    let mut worker = Worker::start(
        &fleet,
        dir.path(),
        &[],
        &["--session-cgroups", mode],
        &[("REGATTA_SECRET", &fleet.secret)],
    );
    worker.wait_for_log(contained_by);
    let containment = worker.log();
    let containment = containment
        .lines()
        .find(|l| l.contains("sessions run"))
        .unwrap_or_default();
    println!("{mode}: {containment}");
    let m = manifest(
        dir.path(),
        "batch: daemon\nplaybook:\n  name: p\n  run: ./daemon.sh\nunits:\n  - id: daemon\n    outputs: [daemon.pid]\n",
    );
    let attempt = run_one(&fleet, &m).await;
    let pid = std::fs::read_to_string(dir.path().join("daemon.pid")).expect("daemon.pid");
    let pid = pid.trim();
    let took = attempt.ended_at_ms.unwrap_or_default() - attempt.started_at_ms.unwrap_or_default();
    println!("{mode}: the session with a daemon on its stdout took {took} ms");
    // Right after the unit succeeded: the daemon is gone (or a zombie
    // waiting for its reaper).
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim().chars().next())
        })
        .flatten();
    assert!(
        matches!(state, None | Some('Z')),
        "the session's daemon {pid} outlived it (state {state:?})"
    );
    let touched = dir.path().join("touched.txt");
    let before = std::fs::metadata(&touched).map(|m| m.len()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = std::fs::metadata(&touched).map(|m| m.len()).unwrap_or(0);
    assert_eq!(
        before, after,
        "something of the session still writes its touched file"
    );
    // The log capture waits at most 5 s for a pipe still held open.
    assert!(took < 5_000, "the daemon held the session up: {took} ms");
    drop(worker);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_detached_daemon_dies_with_its_session_in_its_cgroup() {
    // A cgroup where this machine lets the worker make one; else the
    // leader alone (the worker's log, printed below, says which).
    a_daemon_dies_with_its_session("iso-cgroup", "auto", "sessions run").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_detached_daemon_dies_with_its_session_under_its_subreaper_leader() {
    a_daemon_dies_with_its_session("iso-reaper", "off", "leader (a subreaper) kills").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_kills_its_own_leader_leaves_nothing_behind_in_its_cgroup() {
    // Needs a writable cgroup v2 (root, or a delegated subtree): the worker
    // refuses to start otherwise and the test fails saying so.
    let fleet = Fleet::start("iso-orphan", 0, 1, "30s").await;
    let dir = tempfile::tempdir().expect("temp dir");
    write_file(dir.path(), "daemon.sh", DAEMON);
    let mut worker = Worker::start(
        &fleet,
        dir.path(),
        &[],
        &["--session-cgroups", "required"],
        &[("REGATTA_SECRET", &fleet.secret)],
    );
    worker.wait_for_log("each in a cgroup v2 of its own");
    // The command starts its daemon, then kills its leader (same user), so
    // no subreaper is left to kill the daemon: only the cgroup can.
    let m = manifest(
        dir.path(),
        "batch: orphan\nretries: 0\nplaybook:\n  name: p\n  run: ./daemon.sh && kill -9 $PPID && sleep 30\nunits:\n  - id: orphan\n",
    );
    let client = fleet.client();
    let batch = client.enqueue(&m).await.expect("enqueue");
    let summary = fleet.wait_for_end(&batch, Duration::from_secs(120)).await;
    assert_ne!(
        summary.state,
        BatchState::Succeeded,
        "the session's leader was killed"
    );
    let pid = std::fs::read_to_string(dir.path().join("daemon.pid")).expect("daemon.pid");
    let state = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim().chars().next())
        });
    assert!(
        matches!(state, None | Some('Z')),
        "the daemon {} of a session whose leader died outlived it (state {state:?})",
        pid.trim()
    );
    drop(worker);
    fleet.stop().await;
}
