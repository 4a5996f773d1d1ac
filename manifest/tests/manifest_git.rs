//! The manifest's `git:` block: its defaults, its rules (each with its message and
//! position), and that a manifest without one reads as before.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regatta_manifest::manifest::{ManifestErrorKind, RefProblem, RepoProblem};
use regatta_manifest::{GitSpec, Manifest, ManifestErrors, MergeMode};

const BASE: &str = "/srv/batches";
const SHA1: &str = "0123456789abcdef0123456789abcdef01234567";

fn parse(yaml: &str) -> Result<Manifest, ManifestErrors> {
    Manifest::parse(yaml, "m.yaml", Path::new(BASE))
}

/// Parses text expected to be refused; returns each error as printed.
fn refused(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Ok(manifest) => panic!("expected errors, got {manifest:#?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// A manifest whose `git:` block holds `git_lines` (each indented by two spaces);
/// the block's keys start on line 3.
fn with_git(git_lines: &str) -> String {
    format!("batch: b\ngit:\n{git_lines}playbook: {{run: ./go.sh}}\nunits:\n  - id: a\n")
}

/// The parsed `git:` block of a valid manifest.
fn git_of(git_lines: &str) -> GitSpec {
    let manifest = parse(&with_git(git_lines)).expect("valid");
    manifest.git.expect("a git block")
}

const MINIMAL: &str = "  repo: ../shop.git\n  base: main\n  integration: make test\n";

#[test]
fn a_full_block_is_read_as_written() {
    let git = git_of(
        "  repo: ../shop.git
  base: main
  target: release
  integration: make test
  integration_timeout: 45m
  window: 8
  merge: manual
  strict_writes: false
",
    );
    assert_eq!(
        git,
        GitSpec {
            repo: "/srv/shop.git".into(),
            base: "main".into(),
            target: "release".into(),
            integration: "make test".into(),
            integration_timeout: Duration::from_secs(45 * 60),
            window: 8,
            merge: MergeMode::Manual,
            strict_writes: false,
        }
    );
}

#[test]
fn a_minimal_block_gets_its_defaults() {
    let manifest = parse(&with_git(MINIMAL)).expect("valid");
    // No workdir in git mode: sessions run in worktrees, which do not exist yet.
    assert_eq!(manifest.workdir, PathBuf::new());
    let git = manifest.git.expect("a git block");
    assert_eq!(git.target, "main", "target follows a branch base");
    assert_eq!(git.integration_timeout, Duration::from_secs(30 * 60));
    assert_eq!(git.window, 4);
    assert_eq!(git.merge, MergeMode::Auto);
    assert!(git.strict_writes);
}

#[test]
fn a_relative_repo_is_resolved_against_the_manifest_folder() {
    assert_eq!(git_of(MINIMAL).repo, "/srv/shop.git");
    let git = git_of("  repo: ./repos/./shop\n  base: main\n  integration: x\n");
    assert_eq!(git.repo, "/srv/batches/repos/shop");
    let git = git_of("  repo: /opt/shop.git\n  base: main\n  integration: x\n");
    assert_eq!(git.repo, "/opt/shop.git");
    // A relative base folder is made absolute against the current folder.
    let manifest =
        Manifest::parse(&with_git(MINIMAL), "m.yaml", Path::new("rel/dir")).expect("valid");
    let repo = manifest.git.expect("a git block").repo;
    assert!(Path::new(&repo).is_absolute(), "{repo}");
    assert!(repo.ends_with("rel/shop.git"), "{repo}");
}

#[test]
fn remote_urls_are_kept_as_written() {
    for repo in [
        "file:///srv/shop.git",
        "ssh://git@example.com/team/shop.git",
        "https://example.com/team/shop.git",
        "http://example.com/team/shop.git",
        "git@example.com:team/shop.git",
    ] {
        let git = git_of(&format!(
            "  repo: '{repo}'\n  base: main\n  integration: x\n"
        ));
        assert_eq!(git.repo, repo);
    }
}

#[test]
fn other_schemes_are_refused_naming_the_scheme() {
    assert_eq!(
        refused(&with_git(
            "  repo: git://example.com/shop.git\n  base: main\n  integration: x\n"
        )),
        vec![
            "m.yaml:3:9: git.repo 'git://example.com/shop.git' uses the unsupported scheme \
             'git': give a path, a file://, ssh://, https:// or http:// URL, or user@host:path"
        ]
    );
    let errors = parse(&with_git(
        "  repo: ftp://example.com/shop.git\n  base: main\n  integration: x\n",
    ))
    .expect_err("refused");
    assert_eq!(errors.errors[0].kind.code(), "invalid-git-repo");
    assert_eq!(
        errors.errors[0].kind,
        ManifestErrorKind::InvalidGitRepo {
            repo: "ftp://example.com/shop.git".into(),
            reason: RepoProblem::UnsupportedScheme {
                scheme: "ftp".into()
            },
        }
    );
}

#[test]
fn required_keys_are_named_at_the_block() {
    assert_eq!(
        refused(&with_git("  window: 2\n")),
        vec![
            "m.yaml:3:3: missing required field 'git.repo'",
            "m.yaml:3:3: missing required field 'git.base'",
            "m.yaml:3:3: missing required field 'git.integration'",
        ]
    );
    // An empty block has no key of its own: the `git` key stands for it.
    let yaml = "batch: b\ngit: {}\nplaybook: {run: x}\nunits: [{id: a}]\n";
    let errors = parse(yaml).expect_err("refused");
    assert_eq!(errors.len(), 3);
    for error in &errors {
        assert_eq!((error.line, error.column), (Some(2), Some(1)), "{error}");
        assert_eq!(error.kind.code(), "missing-field");
    }
    assert_eq!(
        refused(&with_git("  repo: ''\n  base: main\n  integration: '  '\n")),
        vec![
            "m.yaml:3:9: missing required field 'git.repo'",
            "m.yaml:5:16: missing required field 'git.integration'",
        ]
    );
}

#[test]
fn the_block_must_be_a_mapping() {
    assert_eq!(
        refused("batch: b\ngit: ../shop.git\nplaybook: {run: x}\nunits: [{id: a}]\n"),
        vec![
            "m.yaml:2:1: 'git' must be a mapping with at least 'repo', 'base' and \
             'integration', found '../shop.git'"
        ]
    );
    let errors = parse("batch: b\ngit:\nplaybook: {run: x}\nunits: [{id: a}]\n")
        .expect_err("an empty git key is refused, not taken for no git mode");
    assert_eq!(errors.errors[0].kind.code(), "wrong-type");
}

#[test]
fn bad_ref_names_are_refused_with_the_rule_they_break() {
    let cases = [
        (
            "'my branch'",
            "'my branch' is not a valid git ref name: it contains a space",
        ),
        (
            "a..b",
            "'a..b' is not a valid git ref name: it contains '..'",
        ),
        (
            "'main~1'",
            "'main~1' is not a valid git ref name: it contains '~'",
        ),
        (
            "'a:b'",
            "'a:b' is not a valid git ref name: it contains ':'",
        ),
        (
            "'-main'",
            "'-main' is not a valid git ref name: it starts with '-'",
        ),
        (
            "main.lock",
            "'main.lock' is not a valid git ref name: it has a component that ends \
                       with '.lock'",
        ),
        (
            "main/",
            "'main/' is not a valid git ref name: it starts or ends with '/', or \
                   contains '//'",
        ),
        (
            "'a@{1}'",
            "'a@{1}' is not a valid git ref name: it contains '@{'",
        ),
        (
            "\"a\\tb\"",
            "'a\tb' is not a valid git ref name: it contains a control character",
        ),
    ];
    for (written, message) in cases {
        let yaml = with_git(&format!(
            "  repo: ../r\n  base: {written}\n  integration: x\n"
        ));
        // The target follows the base: only the base is reported.
        assert_eq!(
            refused(&yaml),
            vec![format!("m.yaml:4:9: git.base {message}")]
        );
        let yaml = with_git(&format!(
            "  repo: ../r\n  base: main\n  target: {written}\n  integration: x\n"
        ));
        assert_eq!(
            refused(&yaml),
            vec![format!("m.yaml:5:11: git.target {message}")]
        );
    }
    let errors =
        parse(&with_git("  repo: ../r\n  base: 'a b'\n  integration: x\n")).expect_err("refused");
    assert_eq!(errors.errors[0].kind.code(), "invalid-git-ref");
    assert_eq!(
        errors.errors[0].kind,
        ManifestErrorKind::InvalidGitRef {
            field: "base",
            name: "a b".into(),
            reason: RefProblem::Space,
        }
    );
}

#[test]
fn a_commit_base_needs_a_target_branch() {
    let yaml = with_git(&format!("  repo: ../r\n  base: {SHA1}\n  integration: x\n"));
    assert_eq!(
        refused(&yaml),
        vec![
            "m.yaml:3:3: git.target is required when git.base is a commit id: name the branch \
             the merge train advances"
        ]
    );
    let git = git_of(&format!(
        "  repo: ../r\n  base: {SHA1}\n  target: main\n  integration: x\n"
    ));
    assert_eq!((git.base.as_str(), git.target.as_str()), (SHA1, "main"));
    // A 64-digit (SHA-256) id is a commit id too; an abbreviated one is a ref name.
    let sha256 = SHA1.repeat(2)[..64].to_owned();
    let yaml = with_git(&format!(
        "  repo: ../r\n  base: {sha256}\n  integration: x\n"
    ));
    let errors = parse(&yaml).expect_err("refused");
    assert_eq!(errors.errors[0].kind.code(), "git-target-required");
    let git = git_of("  repo: ../r\n  base: 0123abc\n  integration: x\n");
    assert_eq!(git.target, "0123abc");
    // The target is a branch, never a commit.
    let yaml = with_git(&format!(
        "  repo: ../r\n  base: main\n  target: {SHA1}\n  integration: x\n"
    ));
    assert_eq!(
        refused(&yaml),
        vec![format!(
            "m.yaml:5:11: git.target '{SHA1}' is a commit id: the merge train advances a \
             branch, name one"
        )]
    );
}

#[test]
fn numbers_durations_and_modes_are_checked() {
    let yaml = with_git(
        "  repo: ../r
  base: main
  integration: x
  integration_timeout: 0s
  window: 0
  merge: sometimes
  strict_writes: maybe
",
    );
    assert_eq!(
        refused(&yaml),
        vec![
            "m.yaml:6:24: 'integration_timeout' must be longer than zero",
            "m.yaml:7:11: git.window must be from 1 to 1000 units per merge candidate, found 0",
            "m.yaml:8:10: 'merge' must be 'auto' or 'manual', found 'sometimes'",
            "m.yaml:9:18: 'strict_writes' must be true or false, found 'maybe'",
        ]
    );
    let yaml = with_git(
        "  repo: ../r
  base: main
  integration: x
  integration_timeout: soon
  window: 1001
",
    );
    assert_eq!(
        refused(&yaml),
        vec![
            "m.yaml:6:24: invalid duration 'soon' for 'integration_timeout': expected a whole \
             number followed by a unit (ms, s, m, h or d), e.g. '90s', '1h30m'",
            "m.yaml:7:11: git.window must be from 1 to 1000 units per merge candidate, \
             found 1001",
        ]
    );
    assert_eq!(
        refused(&with_git(&format!("{MINIMAL}  window: -1\n"))),
        vec!["m.yaml:6:11: 'window' must be a whole number of 0 or more, found -1"]
    );
    assert_eq!(git_of(&format!("{MINIMAL}  window: 1000\n")).window, 1000);
    assert_eq!(
        git_of(&format!("{MINIMAL}  integration_timeout: 1h30m\n")).integration_timeout,
        Duration::from_secs(90 * 60)
    );
}

#[test]
fn unknown_and_repeated_keys_are_refused_with_suggestions() {
    assert_eq!(
        refused(&with_git(&format!(
            "{MINIMAL}  windw: 3\n  colour: blue\n  base: dev\n"
        ))),
        vec![
            "m.yaml:6:3: unknown git field 'windw' (did you mean 'window'?)",
            "m.yaml:7:3: unknown git field 'colour'",
            "m.yaml:8:3: field 'base' is given more than once",
        ]
    );
    // `gti:` at the top level finds `git`.
    assert_eq!(
        refused("batch: b\ngti: {}\nplaybook: {run: x}\nunits: [{id: a}]\n"),
        vec!["m.yaml:2:1: unknown manifest field 'gti' (did you mean 'git'?)"]
    );
}

#[test]
fn a_workdir_is_refused_in_git_mode() {
    let yaml = format!(
        "batch: b\nworkdir: ../repo\ngit:\n{MINIMAL}playbook: {{run: x}}\nunits: [{{id: a}}]\n"
    );
    let errors = parse(&yaml).expect_err("refused");
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec![
            "m.yaml:2:10: 'workdir' cannot be given with a 'git' block: sessions run in a fresh \
             worktree of git.repo, and unit paths are relative to the repository's root"
        ]
    );
    assert_eq!(errors.errors[0].kind.code(), "workdir-in-git-mode");
}

#[test]
fn load_does_not_look_for_a_workdir_in_git_mode() {
    let dir = tempfile::tempdir().expect("a scratch folder");
    let path = dir.path().join("manifest.yaml");
    std::fs::write(&path, with_git(MINIMAL)).expect("write the manifest");
    let manifest = Manifest::load(&path).expect("valid without a workdir");
    assert_eq!(manifest.workdir, PathBuf::new());
    let repo = manifest.git.expect("a git block").repo;
    let parent = dir.path().parent().expect("the temp folder's parent");
    assert_eq!(Path::new(&repo), parent.join("shop.git"));
    // Without git mode, the same folder still needs its workdir.
    std::fs::write(
        &path,
        "batch: b\nworkdir: nowhere\nplaybook: {run: x}\nunits: [{id: a}]\n",
    )
    .expect("write the manifest");
    let errors = Manifest::load(&path).expect_err("refused");
    assert_eq!(errors.errors[0].kind.code(), "workdir-not-found");
}

#[test]
fn unit_paths_stay_relative_to_the_repository() {
    let yaml = format!(
        "batch: b\ngit:\n{MINIMAL}playbook: {{run: x}}\nunits:\n  - id: a\n    touches: [src/./a.rs]\n    outputs: [../escape]\n"
    );
    assert_eq!(
        refused(&yaml),
        vec!["m.yaml:10:15: unit 'a': path '../escape' in 'outputs' leaves the workdir"]
    );
    let yaml = format!(
        "batch: b\ngit:\n{MINIMAL}playbook: {{run: x}}\nunits:\n  - id: a\n    touches: [src/./a.rs]\n"
    );
    let manifest = parse(&yaml).expect("valid");
    assert_eq!(manifest.units[0].touches, vec!["src/a.rs"]);
}

#[test]
fn a_git_manifest_round_trips_through_json_and_checks() {
    let yaml = format!(
        "batch: rt\ngit:\n  repo: ssh://git@example.com/shop.git\n  base: {SHA1}\n  target: main\n  integration: make test\n  integration_timeout: 1h30m\n  window: 2\n  merge: manual\n  strict_writes: false\nplaybook: {{run: x}}\nunits: [{{id: a}}]\n"
    );
    let manifest = parse(&yaml).expect("valid");
    let json = serde_json::to_value(&manifest).expect("serialises");
    assert_eq!(
        json["git"],
        serde_json::json!({
            "repo": "ssh://git@example.com/shop.git",
            "base": SHA1,
            "target": "main",
            "integration": "make test",
            "integration_timeout": "1h30m",
            "window": 2,
            "merge": "manual",
            "strict_writes": false,
        })
    );
    assert!(
        json.get("workdir").is_none(),
        "no workdir in git mode: {json}"
    );
    let back: Manifest = serde_json::from_value(json.clone()).expect("deserialises");
    assert_eq!(back, manifest);
    assert_eq!(back.sha256(), manifest.sha256());
    back.check().expect("still valid");
    // The JSON form is itself a manifest `parse` accepts.
    let text = serde_json::to_string(&json).expect("text");
    let reparsed = Manifest::parse(&text, "rt.json", Path::new(BASE)).expect("parses");
    assert_eq!(reparsed, manifest);
    // Defaults fill in the keys a stored block left out.
    let mut sparse = json;
    for key in ["integration_timeout", "window", "merge", "strict_writes"] {
        sparse["git"]
            .as_object_mut()
            .expect("an object")
            .remove(key);
    }
    let back: Manifest = serde_json::from_value(sparse).expect("deserialises");
    let git = back.git.expect("a git block");
    assert_eq!(
        (
            git.integration_timeout,
            git.window,
            git.merge,
            git.strict_writes
        ),
        (Duration::from_secs(1800), 4, MergeMode::Auto, true)
    );
}

#[test]
fn check_applies_the_git_rules_without_positions() {
    let mut manifest = parse(&with_git(MINIMAL)).expect("valid");
    manifest.source = String::new();
    let git = manifest.git.as_mut().expect("a git block");
    git.repo = "shop.git".into();
    git.window = 0;
    git.target = SHA1.into();
    manifest.workdir = PathBuf::from("/srv/code");
    let errors = manifest.check().expect_err("refused");
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        vec![
            "manifest: 'workdir' cannot be given with a 'git' block: sessions run in a fresh \
             worktree of git.repo, and unit paths are relative to the repository's root",
            "manifest: git.repo 'shop.git' is a relative path: it must be absolute once resolved",
            format!(
                "manifest: git.target '{SHA1}' is a commit id: the merge train advances a \
                 branch, name one"
            )
            .as_str(),
            "manifest: git.window must be from 1 to 1000 units per merge candidate, found 0",
        ]
    );
}

#[test]
fn a_manifest_without_git_is_unchanged() {
    let yaml = "batch: b\nplaybook: {run: x}\nunits: [{id: a}]\n";
    let manifest = parse(yaml).expect("valid");
    assert_eq!(manifest.git, None);
    assert_eq!(manifest.workdir, PathBuf::from(BASE));
    let json = serde_json::to_value(&manifest).expect("serialises");
    assert!(json.get("git").is_none(), "{json}");
    assert_eq!(json["workdir"], BASE);
    // A manifest stored before git mode existed still reads, and hashes the same.
    let stored = serde_json::json!({
        "batch": "b",
        "workdir": BASE,
        "playbook": {"name": "b", "run": "x"},
        "concurrency": 10,
        "retries": 1,
        "units": [{"id": "a"}],
    });
    let back: Manifest = serde_json::from_value(stored).expect("an old manifest reads");
    assert_eq!(back, manifest);
    assert_eq!(back.sha256(), manifest.sha256());
}

#[test]
fn json_manifests_report_git_problems_with_positions() {
    let json = r#"{
  "batch": "b",
  "git": {
    "repo": "../shop.git",
    "base": "main",
    "integration": "make test",
    "window": 0,
    "mrege": "auto"
  },
  "playbook": {"run": "x"},
  "units": [{"id": "a"}]
}"#;
    let errors = Manifest::parse(json, "m.json", Path::new(BASE)).expect_err("refused");
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        vec![
            "m.json:7:15: git.window must be from 1 to 1000 units per merge candidate, found 0",
            "m.json:8:5: unknown git field 'mrege' (did you mean 'merge'?)",
        ]
    );
}
