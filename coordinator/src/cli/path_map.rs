//! `--path-map HOST=FLEET`: enqueueing from a machine that sees the project
//! at another path than the fleet does.
//!
//! A manifest's workdir (and a git mode `repo` path) becomes absolute on
//! enqueue, against the folders of the machine the CLI runs on. When the
//! fleet mounts that folder elsewhere (`docker compose` mounts
//! `REGATTA_PROJECT_DIR` at `/srv/regatta/project` in every container), the
//! map rewrites the host's prefix into the fleet's before the manifest is
//! sent, and refuses a manifest whose paths lie outside the mapped folder:
//! the fleet could not see them.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use regatta_coordinator::manifest::Manifest;

/// One folder as the host sees it and as the fleet sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMap {
    host: PathBuf,
    fleet: PathBuf,
}

impl FromStr for PathMap {
    type Err = String;

    /// `HOST=FLEET`, both absolute (the host side may be relative to the
    /// current folder).
    fn from_str(text: &str) -> Result<PathMap, String> {
        let (host, fleet) = text
            .split_once('=')
            .ok_or_else(|| format!("'{text}' is not HOST=FLEET"))?;
        if host.is_empty() || !fleet.starts_with('/') {
            return Err(format!(
                "'{text}': HOST must be a folder and FLEET an absolute path"
            ));
        }
        let host = std::path::absolute(host).map_err(|e| format!("'{host}': {e}"))?;
        // Loaded workdirs have their symlinks resolved: the prefix must too.
        let host = std::fs::canonicalize(&host).unwrap_or(host);
        Ok(PathMap {
            host,
            fleet: PathBuf::from(fleet),
        })
    }
}

impl PathMap {
    /// `path` as the fleet sees it, or `None` when it is outside the host folder.
    pub fn fleet_path(&self, path: &Path) -> Option<PathBuf> {
        let rest = path.strip_prefix(&self.host).ok()?;
        Some(if rest.as_os_str().is_empty() {
            self.fleet.clone()
        } else {
            self.fleet.join(rest)
        })
    }

    /// Rewrites the manifest's workdir and a git mode `repo` path into the
    /// fleet's view; an error naming the path when one is outside the map.
    pub fn apply(&self, manifest: &mut Manifest) -> anyhow::Result<()> {
        let outside = |path: &Path| {
            anyhow::anyhow!(
                "{} is outside {}, the folder --path-map gives the fleet: the fleet \
                 cannot see it (move the project under it, or map its folder)",
                path.display(),
                self.host.display()
            )
        };
        if !manifest.workdir.as_os_str().is_empty() {
            manifest.workdir = self
                .fleet_path(&manifest.workdir)
                .ok_or_else(|| outside(&manifest.workdir))?;
        }
        if let Some(git) = manifest.git.as_mut() {
            let repo = Path::new(&git.repo);
            if repo.is_absolute() {
                let mapped = self.fleet_path(repo).ok_or_else(|| outside(repo))?;
                git.repo = mapped.display().to_string();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_under_the_host_folder_runs_at_the_fleets_path() {
        let project = tempfile::tempdir().expect("temp dir");
        let host = std::fs::canonicalize(project.path()).expect("canonical");
        let folder = host.join("migration");
        std::fs::create_dir_all(&folder).expect("mkdir");
        let path = folder.join("manifest.yaml");
        std::fs::write(
            &path,
            "batch: b\nplaybook: {name: p, run: 'true'}\nunits:\n  - id: a\n",
        )
        .expect("write");
        let mut manifest = Manifest::load(&path).expect("valid manifest");

        let map: PathMap = format!("{}=/srv/regatta/project", host.display())
            .parse()
            .expect("a map");
        map.apply(&mut manifest).expect("inside the map");
        assert_eq!(
            manifest.workdir,
            Path::new("/srv/regatta/project/migration")
        );
        assert_eq!(
            map.fleet_path(&host),
            Some(PathBuf::from("/srv/regatta/project"))
        );

        let elsewhere: PathMap = "/nowhere=/srv/regatta/project".parse().expect("a map");
        let mut manifest = Manifest::load(&path).expect("valid manifest");
        let error = elsewhere.apply(&mut manifest).expect_err("outside the map");
        assert!(error.to_string().contains("--path-map"), "{error}");
    }

    #[test]
    fn a_map_needs_both_sides_and_an_absolute_fleet_path() {
        for bad in ["/srv", "=/srv", "/home=relative"] {
            assert!(bad.parse::<PathMap>().is_err(), "{bad} is refused");
        }
    }
}
