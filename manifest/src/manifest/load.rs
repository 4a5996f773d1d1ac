//! Reading a manifest end to end: format detection, the reading, defaults and path
//! resolution, the playbook file, the semantic rules, and positions for the report.
//!
//! Small YAML manifests are read once with positions on. Big ones, and JSON (read by
//! serde_json, which has no spans), are read fast without positions; only if there is
//! something to report is the text read again, as YAML (JSON is YAML's subset for
//! manifests), recording the positions of just the places the problems name.

use std::borrow::Cow;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use super::errors::{ManifestErrorKind, ManifestErrors};
use super::git::{
    is_commit_id, repo_form, GitSpec, RepoForm, DEFAULT_INTEGRATION_TIMEOUT, DEFAULT_WINDOW,
};
use super::position::{wanted_locators, Document, Locator, Node, PositionTable, Problem, Resolver};
use super::raw::{self, Draft, Format, GitBlock, GitDraft, Notes, PlaybookSpec, Reading, Wanted};
use super::validate::{self, normalize_path};
use super::{Manifest, Playbook, DEFAULT_CONCURRENCY, DEFAULT_RETRIES};

/// Largest YAML text read with positions on from the start (about 10,000 units): beyond
/// it, recording positions costs more than a second reading on the error path.
const POSITIONS_FIRST_LIMIT: usize = 1 << 20;

pub(super) fn load(path: &Path) -> Result<Manifest, ManifestErrors> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| {
        let kind = ManifestErrorKind::Unreadable {
            path: path.to_path_buf(),
            reason: error.to_string(),
        };
        ManifestErrors::single(&source, kind)
    })?;
    let base_dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    read(&text, &source, &base_dir, true)
}

pub(super) fn parse(text: &str, source: &str, base_dir: &Path) -> Result<Manifest, ManifestErrors> {
    read(text, source, base_dir, false)
}

pub(super) fn check(manifest: &Manifest) -> Result<(), ManifestErrors> {
    let notes = Notes::default();
    let context = validate::Context {
        notes: &notes,
        playbook_known: true,
    };
    let problems = validate::check(manifest, &context);
    if problems.is_empty() {
        return Ok(());
    }
    let resolver = Resolver {
        manifest: Document {
            source: manifest.source_name(),
            positions: None,
        },
        playbook_file: None,
        unit_id: &|index| unit_id(manifest.units.get(index).map(|u| u.id.as_str())),
    };
    Err(resolver.resolve(problems))
}

/// How a text was recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Detected {
    format: Format,
    /// Recognised by its first character rather than its name: may still be YAML.
    guessed: bool,
}

/// Tells JSON from YAML by the source's extension, else by the first character.
fn detect_format(source: &str, text: &str) -> Detected {
    let extension = Path::new(source)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("json") => Detected {
            format: Format::Json,
            guessed: false,
        },
        Some("yaml" | "yml") => Detected {
            format: Format::Yaml,
            guessed: false,
        },
        _ => {
            let first = text
                .trim_start_matches('\u{feff}')
                .trim_start()
                .chars()
                .next();
            let format = if matches!(first, Some('{')) {
                Format::Json
            } else {
                Format::Yaml
            };
            Detected {
                format,
                guessed: true,
            }
        }
    }
}

/// The manifest's text and where it came from.
struct Input<'a> {
    text: &'a str,
    source: &'a str,
    base_dir: PathBuf,
    format: Format,
    /// Whether the first reading recorded every position.
    positions_first: bool,
    /// Whether to check that the workdir exists (`load` does; `parse` is pure).
    check_workdir: bool,
}

fn read(
    text: &str,
    source: &str,
    base_dir: &Path,
    check_workdir: bool,
) -> Result<Manifest, ManifestErrors> {
    let detected = detect_format(source, text);
    let mut input = Input {
        text,
        source,
        base_dir: absolute(base_dir),
        format: detected.format,
        positions_first: detected.format == Format::Yaml && text.len() <= POSITIONS_FIRST_LIMIT,
        check_workdir,
    };
    let first_wanted = if input.positions_first {
        Wanted::All
    } else {
        Wanted::Nothing
    };
    let mut reading = raw::read_manifest(text, input.format, first_wanted);
    if detected.guessed && detected.format == Format::Json && reading.value.is_none() {
        // `{batch: x}` is YAML, not JSON: a text guessed to be JSON gets a YAML chance.
        let small = text.len() <= POSITIONS_FIRST_LIMIT;
        let wanted = if small { Wanted::All } else { Wanted::Nothing };
        let yaml = raw::read_manifest(text, Format::Yaml, wanted);
        if yaml.value.is_some() {
            input.format = Format::Yaml;
            input.positions_first = small;
            reading = yaml;
        }
    }
    let Some(draft) = reading.value.take() else {
        return Err(report(&input, reading, true, Vec::new(), None, &|_| None));
    };
    let notes = std::mem::take(&mut reading.notes);
    let mut assembled = assemble(draft, &input);
    let context = validate::Context {
        notes: &notes,
        playbook_known: assembled.playbook_known,
    };
    let mut located = validate::check(&assembled.manifest, &context);
    located.append(&mut assembled.problems);
    if reading.problems.is_empty() && located.is_empty() {
        let mut manifest = assembled.manifest;
        normalize_unit_paths(&mut manifest);
        return Ok(manifest);
    }
    let manifest = &assembled.manifest;
    let unit_of = |index: usize| unit_id(manifest.units.get(index).map(|u| u.id.as_str()));
    let playbook_file = assembled.playbook_file.as_ref();
    Err(report(
        &input,
        reading,
        false,
        located,
        playbook_file,
        &unit_of,
    ))
}

/// A playbook read from its own file.
struct PlaybookFile {
    source: String,
    positions: PositionTable,
}

struct Assembled {
    manifest: Manifest,
    /// Problems found while assembling, located in the manifest or the playbook file.
    problems: Vec<Problem>,
    playbook_known: bool,
    playbook_file: Option<PlaybookFile>,
}

/// Applies defaults, resolves the workdir and reads the playbook file.
fn assemble(draft: Draft, input: &Input<'_>) -> Assembled {
    let mut problems = Vec::new();
    let batch = draft.batch.unwrap_or_default();
    // In git mode sessions run in worktrees that do not exist yet: there is no workdir
    // to default or to check, and a given one is refused by the rules. A malformed
    // block (already reported) still means git mode, but has no rules to satisfy.
    let git_mode = !matches!(draft.git, GitBlock::Absent);
    let workdir = match &draft.workdir {
        None if matches!(draft.git, GitBlock::Given(_)) => PathBuf::new(),
        None => input.base_dir.clone(),
        Some(workdir) => lexical_normal(&input.base_dir.join(workdir)),
    };
    let workdir = if input.check_workdir && !git_mode {
        match real_workdir(&workdir) {
            Some(real) => real,
            None => {
                let kind = ManifestErrorKind::WorkdirNotFound {
                    path: workdir.clone(),
                };
                problems.push(Problem::new(Locator::Value(Node::Top, "workdir"), kind));
                workdir
            }
        }
    } else {
        workdir
    };
    let mut playbook_file = None;
    let (playbook, playbook_known) = match draft.playbook {
        PlaybookSpec::Inline(playbook) => {
            let mut playbook = *playbook;
            if playbook.name.is_empty() {
                playbook.name = if batch.is_empty() {
                    "playbook".to_owned()
                } else {
                    batch.clone()
                };
            }
            (playbook, true)
        }
        PlaybookSpec::Invalid => (Playbook::default(), false),
        PlaybookSpec::Missing => {
            let locator = Locator::Value(Node::Top, "playbook");
            problems.push(Problem::new(locator, ManifestErrorKind::MissingPlaybook));
            (Playbook::default(), false)
        }
        PlaybookSpec::Path(path) => match read_playbook_file(&path, input) {
            Ok((playbook, file, file_problems)) => {
                let known = playbook.is_some();
                problems.extend(file_problems);
                playbook_file = Some(file);
                (playbook.unwrap_or_default(), known)
            }
            Err(problem) => {
                problems.push(*problem);
                (Playbook::default(), false)
            }
        },
    };
    let manifest = Manifest {
        source: input.source.to_owned(),
        batch,
        workdir,
        git: match draft.git {
            GitBlock::Given(git) => Some(assemble_git(git, &input.base_dir)),
            GitBlock::Absent | GitBlock::Invalid => None,
        },
        playbook,
        concurrency: draft.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
        calibration: draft.calibration,
        calibration_auto: draft.calibration_auto,
        retries: draft.retries.unwrap_or(DEFAULT_RETRIES),
        timeout: draft.timeout,
        resources: draft.resources,
        budget: draft.budget,
        units: draft.units,
    };
    Assembled {
        manifest,
        problems,
        playbook_known,
        playbook_file,
    }
}

/// Applies the `git:` block's defaults and resolves a path `repo` against the
/// manifest's folder. A `target` left out follows `base`, unless `base` is a commit id:
/// then it stays empty, and the rules ask for it.
fn assemble_git(git: GitDraft, base_dir: &Path) -> GitSpec {
    let repo = git.repo.unwrap_or_default();
    let repo = match repo_form(&repo) {
        RepoForm::Path if !repo.trim().is_empty() => lexical_normal(&base_dir.join(&repo))
            .to_string_lossy()
            .into_owned(),
        _ => repo,
    };
    let base = git.base.unwrap_or_default();
    let target = match git.target {
        Some(target) => target,
        None if is_commit_id(&base) => String::new(),
        None => base.clone(),
    };
    GitSpec {
        repo,
        base,
        target,
        integration: git.integration.unwrap_or_default(),
        integration_timeout: git
            .integration_timeout
            .unwrap_or(DEFAULT_INTEGRATION_TIMEOUT),
        window: git.window.unwrap_or(DEFAULT_WINDOW),
        merge: git.merge.unwrap_or_default(),
        strict_writes: git.strict_writes.unwrap_or(true),
    }
}

/// The workdir with every symlink resolved, or `None` if it is not a folder:
/// touched files are named by their absolute path, so two workdirs that are
/// links to one folder must name its files alike, or one file gets two mutexes.
fn real_workdir(workdir: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(workdir)
        .ok()
        .filter(|real| real.is_dir())
}

/// Reads the playbook file a manifest names, relative to the manifest's folder. Its
/// problems carry positions in the playbook file; an unreadable file is one problem
/// located at the manifest's `playbook` field.
fn read_playbook_file(
    path: &str,
    input: &Input<'_>,
) -> Result<(Option<Playbook>, PlaybookFile, Vec<Problem>), Box<Problem>> {
    let locator = Locator::Value(Node::Top, "playbook");
    let full_path = lexical_normal(&input.base_dir.join(path));
    // Messages name the file as a user would reach it from where they ran the command.
    let shown = match Path::new(input.source).parent() {
        Some(parent) if !Path::new(path).is_absolute() => parent.join(path),
        _ => PathBuf::from(path),
    };
    let text = match std::fs::read_to_string(&full_path) {
        Ok(text) => text,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            let kind = ManifestErrorKind::PlaybookNotFound { path: shown };
            return Err(Box::new(Problem::new(locator, kind)));
        }
        Err(error) => {
            let kind = ManifestErrorKind::Unreadable {
                path: shown,
                reason: error.to_string(),
            };
            return Err(Box::new(Problem::new(locator, kind)));
        }
    };
    let source = shown.display().to_string();
    let format = detect_format(&source, &text).format;
    let mut reading = raw::read_playbook(&text, format, Wanted::All);
    if format == Format::Json && !reading.problems.is_empty() {
        // serde_json keeps no positions: read again as YAML for them, if that agrees.
        let again = raw::read_playbook(&text, Format::Yaml, Wanted::All);
        if again.problems.len() == reading.problems.len() {
            reading.positions = again.positions;
            reading.problems = again.problems;
        }
    }
    let mut playbook = reading.value;
    if let Some(playbook) = &mut playbook {
        if playbook.name.is_empty() {
            playbook.name = Path::new(path)
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
    }
    let file = PlaybookFile {
        source,
        positions: reading.positions,
    };
    Ok((playbook, file, reading.problems))
}

/// Turns the reading's problems and the located ones into the report, reading the text a
/// second time for positions when the first reading recorded none.
fn report(
    input: &Input<'_>,
    first: Reading<Draft>,
    fatal: bool,
    located: Vec<Problem>,
    playbook_file: Option<&PlaybookFile>,
    unit_of: &dyn Fn(usize) -> Option<String>,
) -> ManifestErrors {
    let mut read_problems = first.problems;
    let mut positions = first.positions;
    let mut read_ids = first.unit_ids;
    if !input.positions_first {
        let wanted = wanted_locators(&located);
        let second = raw::read_manifest(input.text, Format::Yaml, Wanted::Some(&wanted));
        // Only trust the second reading if it saw the same problems as the first.
        if second.problems.len() == read_problems.len() && second.value.is_none() == fatal {
            let json_fatal = if fatal && input.format == Format::Json {
                read_problems.pop()
            } else {
                None
            };
            read_problems = second.problems;
            if let Some(json_fatal) = json_fatal {
                // serde_json's own account of a JSON syntax error is the better one.
                read_problems.pop();
                read_problems.push(json_fatal);
            }
            positions = second.positions;
            read_ids = second.unit_ids;
        }
    }
    let mut problems = read_problems;
    problems.extend(located);
    let playbook_document = playbook_file.map(|file| Document {
        source: &file.source,
        positions: Some(&file.positions),
    });
    let unit_id_of =
        |index: usize| unit_of(index).or_else(|| unit_id(read_ids.get(index).map(String::as_str)));
    let resolver = Resolver {
        manifest: Document {
            source: input.source,
            positions: Some(&positions),
        },
        playbook_file: playbook_document,
        unit_id: &unit_id_of,
    };
    resolver.resolve(problems)
}

fn unit_id(id: Option<&str>) -> Option<String> {
    id.filter(|id| !id.is_empty()).map(str::to_owned)
}

/// Rewrites every unit's paths in normal form, once validation has shown they all have one.
fn normalize_unit_paths(manifest: &mut Manifest) {
    for unit in &mut manifest.units {
        for paths in [&mut unit.inputs, &mut unit.outputs, &mut unit.touches] {
            for path in paths.iter_mut() {
                let normal = match normalize_path(path) {
                    Ok(Cow::Owned(normal)) => Some(normal),
                    _ => None,
                };
                if let Some(normal) = normal {
                    *path = normal;
                }
            }
        }
    }
}

/// Makes a path absolute against the current folder, without touching the file system.
fn absolute(path: &Path) -> PathBuf {
    let joined = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    lexical_normal(&joined)
}

/// Removes `.` and resolves `..` lexically.
fn lexical_normal(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !normal.pop() {
                    normal.push(component);
                }
            }
            other => normal.push(other),
        }
    }
    normal
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_workdir_is_refused_with_its_path() {
        let root = tempfile::tempdir().expect("temp dir");
        let path = root.path().join("manifest.yaml");
        let text =
            "batch: b\nworkdir: nowhere\nplaybook: {name: p, run: 'true'}\nunits:\n  - id: a\n";
        std::fs::write(&path, text).expect("write the manifest");
        let errors = crate::Manifest::load(&path).expect_err("a missing workdir is refused");
        let shown = errors.to_string();
        assert!(
            shown.contains("nowhere") && shown.contains("workdir"),
            "{shown}"
        );
    }
}
