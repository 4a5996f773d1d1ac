//! Opening files of an evidence folder or an artifact store that may hold
//! anything someone planted there: only regular files are read, never
//! through a symlink, and never in a way that can block (a FIFO named like
//! a pack would hang a plain `open`).

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};

/// Why a file was not opened.
#[derive(Debug)]
pub enum Refusal {
    NotFound,
    /// A symlink, a FIFO, a device, a socket or a folder: named in words.
    NotRegular(&'static str),
    Io(io::Error),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotFound => write!(f, "missing"),
            Refusal::NotRegular(kind) => write!(f, "{kind}, not a regular file: refused"),
            Refusal::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => Refusal::NotFound,
            _ => match e.raw_os_error() {
                // O_NOFOLLOW on a symlink fails with ELOOP.
                Some(code) if code == nix::libc::ELOOP => Refusal::NotRegular("a symlink"),
                _ => Refusal::Io(e),
            },
        }
    }
}

/// Opens `path` for reading if it is a regular file: without following a
/// symlink in its last component and without blocking (`O_NONBLOCK`, then
/// `fstat` on what was opened, so nothing can be swapped in between).
pub fn open_regular(path: &Path) -> Result<File, Refusal> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        Ok(file)
    } else {
        Err(Refusal::NotRegular(kind_name(&kind)))
    }
}

/// Opens `base/relative` like [`open_regular`], refusing as well any
/// folder on the way that is a symlink: a planted `outputs -> /etc` must
/// not redirect reads out of the folder.
pub fn open_regular_beneath(base: &Path, relative: &Path) -> Result<File, Refusal> {
    let mut path = base.to_path_buf();
    let components: Vec<Component> = relative.components().collect();
    for (index, component) in components.iter().enumerate() {
        let Component::Normal(segment) = component else {
            return Err(Refusal::NotRegular("a path that leaves its folder"));
        };
        path.push(segment);
        if index + 1 < components.len() {
            let meta = std::fs::symlink_metadata(&path)?;
            if !meta.is_dir() {
                return Err(Refusal::NotRegular(kind_name(&meta.file_type())));
            }
        }
    }
    open_regular(&path)
}

/// What a file that is not regular is, in words for an error message.
fn kind_name(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_symlink() {
        "a symlink"
    } else if kind.is_dir() {
        "a folder"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}
