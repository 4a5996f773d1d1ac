//! The session supervisor (worker/src/supervisor.rs): commands run under
//! leaders it forks behave as under exec'd leaders (exit codes, output,
//! deadlines, stops, heartbeats), its leaders are its children, and killing
//! it takes their sessions down. Runs the real leader binary; no services.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regatta_worker::command::{run_command, Beats, CommandSpec, Ending, Stop};
use regatta_worker::containment::Containment;
use regatta_worker::session_log::SessionLog;
use regatta_worker::supervisor::client::{ForkError, Supervisor};
use regatta_worker::supervisor::Request;

fn leader_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_regatta-session-leader"))
}

fn supervisor() -> Arc<Supervisor> {
    match Supervisor::start(&leader_exe(), &regatta_worker::command::WITHHELD) {
        Ok(supervisor) => supervisor,
        Err(e) => panic!("cannot start the supervisor: {e}"),
    }
}

/// A spec for `command` in a fresh folder, under `supervisor` when given.
fn spec(
    command: &str,
    supervisor: Option<Arc<Supervisor>>,
    dir: &tempfile::TempDir,
) -> CommandSpec {
    let mut containment = Containment::leader(leader_exe());
    containment.supervisor = supervisor;
    CommandSpec {
        command: command.to_owned(),
        workdir: dir.path().to_path_buf(),
        env: vec![("REGATTA_TEST_WORD".to_owned(), "tern".to_owned())],
        timeout: Duration::from_secs(20),
        log: SessionLog::new(1 << 20, None),
        grace: Duration::from_millis(500),
        containment,
        beats: None,
        meter: None,
    }
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temporary folder: {e}"))
}

async fn run(spec: &CommandSpec) -> Ending {
    match run_command(spec, &Stop::default()).await {
        Ok((ending, _)) => ending,
        Err(e) => panic!("{:?} did not run: {e}", spec.command),
    }
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for this purpose: state Z in /proc/<pid>/stat.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_forked_leader_runs_the_command_as_an_execd_one_does() {
    let dir = temp();
    let supervisor = supervisor();
    let command = "echo out $REGATTA_TEST_WORD; echo err >&2; pwd; exit 3";
    for with in [Some(supervisor.clone()), None] {
        let spec = spec(command, with.clone(), &dir);
        let started = Instant::now();
        assert_eq!(
            run(&spec).await,
            Ending::Exited(3),
            "under supervisor: {}",
            with.is_some()
        );
        // A hang guard, not a timing: a write end of the log's pipe left
        // open in the worker holds the capture for its 5 s timeout.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the log's capture waited {:?}: a copy of its pipe was left open",
            started.elapsed()
        );
        let log = spec.log.tail(50);
        assert!(log.contains("out tern"), "the session's environment: {log}");
        assert!(log.contains("err"), "stderr goes to the log: {log}");
        assert!(
            log.contains(&dir.path().display().to_string()),
            "the working folder: {log}"
        );
    }
    // A plain command line (no shell) and a missing program, through the supervisor.
    let spec_plain = spec("/bin/false", Some(supervisor.clone()), &dir);
    assert_eq!(run(&spec_plain).await, Ending::Exited(1));
    let missing = spec("no-such-program-here", Some(supervisor.clone()), &dir);
    assert_eq!(run(&missing).await, Ending::Exited(127));
    let log = missing.log.tail(50);
    assert!(log.contains("not found"), "the shell's own message: {log}");
    assert!(supervisor.is_alive());
}

#[tokio::test]
async fn a_command_starts_with_no_signal_blocked_and_sigpipe_at_its_default() {
    let dir = temp();
    // The leader blocks signals for its own use; the command must not
    // inherit that (a deadline's SIGTERM would never reach it), nor the
    // ignored SIGPIPE of a Rust process. Plain words, so no shell (which
    // clears its own mask) stands between.
    let masks = spec("grep Sig /proc/self/status", Some(supervisor()), &dir);
    assert_eq!(run(&masks).await, Ending::Exited(0));
    let log = masks.log.tail(5);
    let mask = |name: &str| {
        log.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no {name} in {log}"))
    };
    assert_eq!(mask("SigBlk:"), 0, "{log}");
    let sigpipe = 1u64 << (nix::sys::signal::Signal::SIGPIPE as i32 - 1);
    assert_eq!(mask("SigIgn:") & sigpipe, 0, "{log}");
}

#[tokio::test]
async fn deadlines_and_stops_end_a_forked_leaders_session() {
    let dir = temp();
    let supervisor = supervisor();
    let mut slow = spec("sleep 30", Some(supervisor.clone()), &dir);
    slow.timeout = Duration::from_millis(300);
    let started = Instant::now();
    assert_eq!(run(&slow).await, Ending::TimedOut);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the deadline took {:?}",
        started.elapsed()
    );

    let stopped = spec("sleep 30", Some(supervisor.clone()), &dir);
    let stop = Stop::default();
    let now = stop.now.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        now.cancel();
    });
    let (ending, _) = run_command(&stopped, &stop)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ending, Ending::Stopped);
}

#[tokio::test]
async fn a_forked_leader_without_heartbeats_kills_its_session() {
    let dir = temp();
    let supervisor = supervisor();
    let mut stalled = spec("sleep 30", Some(supervisor), &dir);
    // Renewals that never come: the leader gives up after its deadline.
    let _renew = listen_for_renewals(&mut stalled);
    let started = Instant::now();
    assert_eq!(run(&stalled).await, Ending::Abandoned);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn heartbeats_keep_a_forked_leaders_session_alive() {
    let dir = temp();
    let supervisor = supervisor();
    let mut beating = spec("sleep 1; exit 4", Some(supervisor), &dir);
    let renew = listen_for_renewals(&mut beating);
    let beat = tokio::spawn(async move {
        for n in 1.. {
            if renew.send(n).is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(run(&beating).await, Ending::Exited(4));
    beat.abort();
}

#[tokio::test]
async fn leaders_are_the_supervisors_children_and_die_with_it() {
    let dir = temp();
    let supervisor = supervisor();
    let (stdout, stderr) = (pipe_writer(), pipe_writer());
    let request = Request {
        id: 0,
        // A detached grandchild too: the leader's sweep must take it.
        command: "setsid sleep 60 & echo $! > daemon.pid; sleep 60".to_owned(),
        workdir: dir.path().to_path_buf(),
        env: Vec::new(),
        deadline_ms: 0,
        user: None,
        stdin: false,
        cgroup: false,
    };
    use std::os::fd::AsFd;
    let forked = supervisor
        .fork(request, &[stdout.1.as_fd(), stderr.1.as_fd()])
        .await
        .unwrap_or_else(|e| panic!("not forked: {e}"));
    // A forked leader names itself (just after the fork, so wait for it).
    let comm = || std::fs::read_to_string(format!("/proc/{}/comm", forked.pid)).unwrap_or_default();
    wait_for("the leader's name", || {
        comm().trim_end() == "regatta-leader"
    })
    .await;
    assert_eq!(
        parent_of(forked.pid),
        Some(supervisor.pid() as i32),
        "a leader's parent is the supervisor"
    );
    let daemon = daemon_pid(&dir).await;
    assert!(alive(daemon));
    // The supervisor dies as when its worker is killed with -9.
    kill_supervisor(&supervisor);
    let ended = tokio::time::timeout(Duration::from_secs(10), forked.ended)
        .await
        .unwrap_or_else(|_| panic!("no end heard after the supervisor died"));
    assert!(
        ended.is_ok_and(|e| e.with_supervisor && e.signal == Some(9)),
        "the caller hears its leader was killed"
    );
    wait_for("the leader to die", || !alive(forked.pid)).await;
    wait_for("the detached daemon to die", || !alive(daemon)).await;
    wait_for("the supervisor to be seen gone", || !supervisor.is_alive()).await;
    // Commands go on, exec'ing their own leaders.
    let after = spec("exit 5", Some(supervisor.clone()), &dir);
    assert_eq!(run(&after).await, Ending::Exited(5));
}

#[tokio::test]
async fn a_missing_working_folder_is_refused_with_its_name() {
    let supervisor = supervisor();
    let (stdout, stderr) = (pipe_writer(), pipe_writer());
    let request = Request {
        id: 0,
        command: "true".to_owned(),
        workdir: PathBuf::from("/no/such/folder/here"),
        env: Vec::new(),
        deadline_ms: 0,
        user: None,
        stdin: false,
        cgroup: false,
    };
    use std::os::fd::AsFd;
    let refused = supervisor
        .fork(request.clone(), &[stdout.1.as_fd(), stderr.1.as_fd()])
        .await
        .err()
        .unwrap_or_else(|| panic!("a missing folder was not refused"));
    assert!(
        matches!(&refused, ForkError::Refused(why) if why.contains("/no/such/folder/here")),
        "{refused}"
    );
    // Descriptors that do not match the request are refused too.
    let refused = supervisor
        .fork(request, &[stdout.1.as_fd()])
        .await
        .err()
        .unwrap_or_else(|| panic!("a request short of descriptors was not refused"));
    assert!(
        matches!(&refused, ForkError::Refused(why) if why.contains("descriptors")),
        "{refused}"
    );
    assert!(supervisor.is_alive());
}

#[tokio::test]
async fn many_commands_at_once_each_get_their_own_end() {
    let dir = temp();
    let supervisor = supervisor();
    let runs = (0..40).map(|n| {
        let spec = spec(&format!("exit {}", n % 7), Some(supervisor.clone()), &dir);
        tokio::spawn(async move { (n, run(&spec).await) })
    });
    for handle in futures::future::join_all(runs).await {
        let (n, ending) = handle.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ending, Ending::Exited(n % 7));
    }
}

#[tokio::test]
async fn a_command_too_large_for_the_supervisor_runs_under_an_execd_leader() {
    let dir = temp();
    let supervisor = supervisor();
    let mut large = spec(
        // The parent of the leader ($PPID of the shell): this process
        // when the leader was exec'd, the supervisor when forked.
        "test ${#REGATTA_TEST_LARGE} -eq 100000 && cut -d' ' -f4 /proc/$PPID/stat",
        Some(supervisor.clone()),
        &dir,
    );
    large
        .env
        .push(("REGATTA_TEST_LARGE".to_owned(), "y".repeat(100_000)));
    assert_eq!(
        run(&large).await,
        Ending::Exited(0),
        "{}",
        large.log.tail(5)
    );
    let parent: u32 = large.log.tail(1).trim().parse().unwrap_or(0);
    assert_eq!(
        parent,
        std::process::id(),
        "the leader was exec'd by the worker: {}",
        large.log.tail(5)
    );
    assert!(supervisor.is_alive());
}

/// Makes the leader of `spec` expect a renewal every 300 ms; the sender
/// renews.
fn listen_for_renewals(spec: &mut CommandSpec) -> tokio::sync::watch::Sender<u64> {
    let (renew, renewals) = tokio::sync::watch::channel(0u64);
    spec.beats = Some(Beats {
        renewals,
        deadline: Duration::from_millis(300),
    });
    renew
}

#[tokio::test]
async fn a_stuck_supervisor_is_killed_and_its_command_given_up_not_run_twice() {
    let dir = temp();
    let supervisor = Supervisor::start_answering_within(
        &leader_exe(),
        &regatta_worker::command::WITHHELD,
        Duration::from_millis(500),
    )
    .unwrap_or_else(|e| panic!("cannot start the supervisor: {e}"));
    let pid = nix::unistd::Pid::from_raw(supervisor.pid() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP);
    let stuck = spec("echo ran >> runs.txt", Some(supervisor.clone()), &dir);
    assert_eq!(run(&stuck).await, Ending::SupervisorLost);
    wait_for("the stuck supervisor to be seen gone", || {
        !supervisor.is_alive()
    })
    .await;
    // Killed while stopped, it never forked: the command did not run.
    assert!(!dir.path().join("runs.txt").exists());
    let after = spec("echo ran >> runs.txt", Some(supervisor.clone()), &dir);
    assert_eq!(run(&after).await, Ending::Exited(0));
    let runs = std::fs::read_to_string(dir.path().join("runs.txt")).unwrap_or_default();
    assert_eq!(runs.lines().count(), 1, "{runs}");
}

#[tokio::test]
async fn a_session_whose_supervisor_dies_leaves_no_daemon_behind() {
    let dir = temp();
    let supervisor = supervisor();
    let session = spec(
        "setsid sleep 60 & echo $! > daemon.pid; sleep 60",
        Some(supervisor.clone()),
        &dir,
    );
    let running = tokio::spawn(async move {
        let ending = run(&session).await;
        (ending, session)
    });
    let daemon = daemon_pid(&dir).await;
    kill_supervisor(&supervisor);
    let (ending, _) = tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .unwrap_or_else(|_| panic!("the session did not end after its supervisor died"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ending, Ending::SupervisorLost);
    // Its leader swept the detached daemon before the worker moved on.
    assert!(!alive(daemon), "the daemon {daemon} outlived its session");
}

#[tokio::test]
async fn an_interrupt_to_the_workers_group_leaves_the_supervisor_running() {
    let dir = temp();
    let supervisor = supervisor();
    let pid = nix::unistd::Pid::from_raw(supervisor.pid() as i32);
    // Once it answers, it has set up its signals.
    let first = spec("exit 5", Some(supervisor.clone()), &dir);
    assert_eq!(run(&first).await, Ending::Exited(5));
    // As a Ctrl-C reaches every process of the worker's group.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
    let after = spec("exit 6", Some(supervisor.clone()), &dir);
    assert_eq!(run(&after).await, Ending::Exited(6));
    assert!(
        supervisor.is_alive(),
        "SIGINT or SIGQUIT ended the supervisor"
    );
}

/// The pid the session's command wrote to `daemon.pid`, once it has.
async fn daemon_pid(dir: &tempfile::TempDir) -> i32 {
    let file = dir.path().join("daemon.pid");
    let read = || {
        std::fs::read_to_string(&file)
            .ok()?
            .trim()
            .parse::<i32>()
            .ok()
    };
    wait_for("the daemon's pid", || read().is_some()).await;
    read().unwrap_or_else(|| panic!("no daemon pid in {}", file.display()))
}

/// Kills the supervisor as a `kill -9` of its worker would end it.
fn kill_supervisor(supervisor: &Supervisor) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn pipe_writer() -> (std::io::PipeReader, std::io::PipeWriter) {
    std::io::pipe().unwrap_or_else(|e| panic!("no pipe: {e}"))
}
