//! Where a session's files are in the artifact store, and the path rules
//! that keep them there. The worker writes this layout, the coordinator
//! reads logs and packs back from it; both take it from here.
//!
//! ```text
//! <store>/<batch_id>/<unit_id>/<session_id>/
//!     outputs/<path as declared>     stage "output"
//!     artifacts/<path in the dir>    stage "artifact"
//!     session.log                    stage "log"
//!     evidence-pack.json             the session pack
//! ```
//!
//! Pure: the functions look at the text of paths, never at the disk.

use std::path::{Component, Path, PathBuf};

/// The folder, inside a session's folder, that declared outputs are copied to.
pub const OUTPUTS_DIR: &str = "outputs";
/// The folder, inside a session's folder, that `REGATTA_ARTIFACT_DIR` files are copied to.
pub const ARTIFACTS_DIR: &str = "artifacts";
/// The session log's name inside a session's folder.
pub const LOG_FILE: &str = "session.log";
/// The session pack's file name inside a session's folder, in the artifact
/// store and in a batch pack's folder.
pub const PACK_FILE: &str = "evidence-pack.json";

/// A batch, unit or session id that is not one plain path segment, so it
/// names no folder of the store; the coordinator never issues one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' cannot name a folder of the artifact store (it must be one plain path segment)")]
pub struct UnsafeId(pub String);

/// Returns `<store>/<batch>/<unit>/<session>`, refusing any id that is not
/// one plain path segment. Pass an empty `store` for the path relative to
/// the store's root.
pub fn session_dir(
    store: &Path,
    batch_id: &str,
    unit_id: &str,
    session_id: &str,
) -> Result<PathBuf, UnsafeId> {
    let mut dir = store.to_path_buf();
    for id in [batch_id, unit_id, session_id] {
        dir.push(single_segment(id).ok_or_else(|| UnsafeId(id.to_owned()))?);
    }
    Ok(dir)
}

/// Returns `path` as plain relative segments (`.` dropped), or `None` when
/// it is empty, absolute, or climbs out with `..`: the only paths a pack may
/// list.
pub fn plain_relative(path: &str) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(segment) => relative.push(segment),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!relative.as_os_str().is_empty()).then_some(relative)
}

/// `id` when it is one plain path segment (batch, unit and session ids
/// become folder names).
pub fn single_segment(id: &str) -> Option<&str> {
    let mut components = Path::new(id).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(segment)), None) if segment == id => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_paths_and_ids_must_stay_plain() {
        assert_eq!(plain_relative("./a/./b"), Some(PathBuf::from("a/b")));
        for escaping in ["../a", "a/../b", "/a", "", "."] {
            assert_eq!(plain_relative(escaping), None, "{escaping}");
        }
        assert_eq!(single_segment("s-1"), Some("s-1"));
        for unsafe_id in ["a/b", "..", ".", "", "/a", "a/"] {
            assert_eq!(single_segment(unsafe_id), None, "{unsafe_id}");
        }
    }

    #[test]
    fn a_session_folder_is_three_plain_segments_under_the_store() {
        assert_eq!(
            session_dir(Path::new("/store"), "b", "u", "s"),
            Ok(PathBuf::from("/store/b/u/s"))
        );
        assert_eq!(
            session_dir(Path::new(""), "b", "u", "s"),
            Ok(PathBuf::from("b/u/s"))
        );
        for bad in ["..", "a/b", "/etc", "", "."] {
            let refused = Err(UnsafeId(bad.to_owned()));
            assert_eq!(session_dir(Path::new("/s"), bad, "u", "s"), refused);
            assert_eq!(session_dir(Path::new("/s"), "b", bad, "s"), refused);
            assert_eq!(session_dir(Path::new("/s"), "b", "u", bad), refused);
        }
    }
}
