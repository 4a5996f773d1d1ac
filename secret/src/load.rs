//! Where the secret comes from, and which secrets are refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::Error;

/// The shortest secret accepted, in bytes: what `openssl rand -hex 16`
/// prints; `openssl rand -hex 32` (64 bytes) is what the docs suggest.
pub const MIN_LEN: usize = 32;

/// Well-known values that must never sign a fleet's orders: the
/// placeholders of `deploy/example.env` and common stand-ins.
const PLACEHOLDERS: &[&str] = &["change-me", "changeme", "replace-me"];

/// The fleet's secret; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetSecret(String);

impl FleetSecret {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for FleetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FleetSecret({} bytes)", self.0.len())
    }
}

/// A secret that passed [`check`], with what the operator should hear
/// about how it was given.
#[derive(Debug)]
pub struct Loaded {
    pub secret: FleetSecret,
    /// Weaknesses that do not stop the process: a secret on the command
    /// line, a secret file other users may read.
    pub warnings: Vec<String>,
}

/// Reads the secret from `file` (`--secret-file`/`REGATTA_SECRET_FILE`) or
/// takes `value` (`--secret`/`REGATTA_SECRET`), and [`check`]s it.
///
/// `on_command_line` says that `value` came from the `--secret` flag,
/// which every process of the machine can read in `/proc/<pid>/cmdline`:
/// it still works, with a warning.
pub fn load(
    value: Option<&str>,
    file: Option<&Path>,
    on_command_line: bool,
) -> Result<Loaded, Error> {
    let mut warnings = Vec::new();
    let (secret, from) = match (value, file) {
        (Some(_), Some(_)) => return Err(Error::Ambiguous),
        (None, None) => return Err(Error::Missing),
        (Some(value), None) => {
            if on_command_line {
                warnings.push(
                    "the secret was given with --secret: every process of this machine can read it in /proc/<pid>/cmdline; use --secret-file or REGATTA_SECRET_FILE".to_owned(),
                );
                (value.to_owned(), "--secret".to_owned())
            } else {
                (value.to_owned(), "REGATTA_SECRET".to_owned())
            }
        }
        (None, Some(path)) => {
            let from = format!("the file {}", path.display());
            let file_error = |source| Error::File {
                path: path.display().to_string(),
                source,
            };
            let bytes = std::fs::read(path).map_err(file_error)?;
            let mode = std::fs::metadata(path)
                .map_err(file_error)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                warnings.push(format!(
                    "the secret file {} may be read by other users (mode {:o}): `chmod 600` it",
                    path.display(),
                    mode & 0o777
                ));
            }
            let text =
                String::from_utf8(bytes).map_err(|_| Error::NotText { from: from.clone() })?;
            // `openssl rand -hex 32 > file` ends the file with a newline.
            (text.trim_end_matches(['\n', '\r']).to_owned(), from)
        }
    };
    check(&secret, &from)?;
    Ok(Loaded {
        secret: FleetSecret(secret),
        warnings,
    })
}

/// Refuses a secret shorter than [`MIN_LEN`] bytes or a well-known
/// placeholder; `from` names where it came from, for the error.
pub fn check(secret: &str, from: &str) -> Result<(), Error> {
    let lower = secret.trim().to_ascii_lowercase();
    let placeholder = PLACEHOLDERS.iter().any(|p| lower.starts_with(p))
        || lower.bytes().all(|b| Some(b) == lower.bytes().next());
    if placeholder {
        return Err(Error::Placeholder {
            from: from.to_owned(),
        });
    }
    if secret.len() < MIN_LEN {
        return Err(Error::TooShort {
            from: from.to_owned(),
            len: secret.len(),
            min: MIN_LEN,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "3f9c1be0a7d24e59b1c8f06d2a4e7b913f9c1be0a7d24e59b1c8f06d2a4e7b91";

    #[test]
    fn the_example_env_placeholder_is_refused() {
        let example = include_str!("../../deploy/example.env");
        let line = example
            .lines()
            .find_map(|l| l.strip_prefix("REGATTA_SECRET="))
            .expect("deploy/example.env sets REGATTA_SECRET");
        let error = check(line, "REGATTA_SECRET").unwrap_err();
        assert!(matches!(error, Error::Placeholder { .. }), "{error}");
        assert!(error.to_string().contains("openssl rand -hex 32"));
    }

    #[test]
    fn short_and_trivial_secrets_are_refused_naming_their_source() {
        let error = check("s3cret-but-short", "REGATTA_SECRET").unwrap_err();
        assert!(error.to_string().contains("REGATTA_SECRET"), "{error}");
        assert!(error.to_string().contains("16 bytes"), "{error}");
        assert!(check(&"a".repeat(64), "x").is_err());
        assert!(check("", "x").is_err());
        assert!(check(GOOD, "x").is_ok());
    }

    #[test]
    fn a_secret_file_is_read_without_its_newline_and_a_flag_warns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("{GOOD}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let loaded = load(None, Some(&path), false).unwrap();
        assert_eq!(loaded.secret.as_str(), GOOD);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert!(!format!("{:?}", loaded.secret).contains(GOOD));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let loaded = load(None, Some(&path), false).unwrap();
        assert!(loaded.warnings[0].contains("chmod 600"));

        let flagged = load(Some(GOOD), None, true).unwrap();
        assert!(flagged.warnings[0].contains("/proc/<pid>/cmdline"));
        assert!(matches!(
            load(Some(GOOD), Some(&path), false),
            Err(Error::Ambiguous)
        ));
        assert!(matches!(load(None, None, false), Err(Error::Missing)));
        let missing = load(None, Some(&dir.path().join("nope")), false).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
