//! What keeps a session inside its bounds: the leader it runs under, the
//! user it runs as, and the cgroup that takes all of it down at its end.

use std::path::PathBuf;

use crate::cgroup::CgroupParent;
use crate::supervisor::client::Supervisor;
use crate::Error;

/// How the worker starts a session's leader, and what contains the session.
#[derive(Debug, Clone)]
pub struct Containment {
    /// The leader executable (see [`crate::leader::executable`]).
    pub leader_exe: PathBuf,
    /// The user sessions run as (`--session-user`); the worker's own when `None`.
    pub session_user: Option<SessionUser>,
    /// Where each session gets a cgroup of its own, killed whole when the
    /// session ends; `None` where the machine has no writable cgroup v2,
    /// and then the leader, a subreaper, kills what its command left.
    pub cgroups: Option<CgroupParent>,
    /// The process that forks each command's leader (see
    /// [`crate::supervisor`]); `None`, or one that has died, and the
    /// worker exec's `leader_exe` per command instead.
    pub supervisor: Option<std::sync::Arc<Supervisor>>,
}

impl Containment {
    /// The leader alone: no other user, no cgroup (tests that run commands).
    pub fn leader(leader_exe: PathBuf) -> Self {
        Containment {
            leader_exe,
            session_user: None,
            cgroups: None,
            supervisor: None,
        }
    }

    /// One line for the worker's start-up log: what contains its sessions.
    pub fn describe(&self) -> String {
        let user = match &self.session_user {
            Some(user) => format!("as uid {} gid {}", user.uid, user.gid),
            None => "as the worker's user".to_owned(),
        };
        match &self.cgroups {
            Some(parent) => format!(
                "sessions run {user}, each in a cgroup v2 of its own under {} (cgroup.kill at its end)",
                parent.dir().display()
            ),
            None => format!(
                "sessions run {user}, without cgroups of their own: each leader (a subreaper) kills and reaps every process its command left"
            ),
        }
    }
}

/// The uid and gid sessions run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionUser {
    pub uid: u32,
    pub gid: u32,
}

impl SessionUser {
    /// Parses `UID` or `UID:GID` (the gid defaults to the uid); refuses
    /// unless this process runs as root, the only one that may switch.
    pub fn parse(text: &str) -> Result<SessionUser, Error> {
        let bad = || {
            Error::Config(format!(
                "--session-user '{text}' must be UID or UID:GID in numbers, e.g. 65534:65534"
            ))
        };
        let (uid, gid) = match text.split_once(':') {
            Some((uid, gid)) => (uid, gid),
            None => (text, text),
        };
        let user = SessionUser {
            uid: uid.parse().map_err(|_| bad())?,
            gid: gid.parse().map_err(|_| bad())?,
        };
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::Config(format!(
                "--session-user {text} needs a worker running as root (only root may switch users); this one runs as uid {}",
                nix::unistd::geteuid()
            )));
        }
        Ok(user)
    }

    /// How the leader receives it on its command line.
    pub fn to_arg(self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }
}
