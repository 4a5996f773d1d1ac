//! Every example manifest meant to be valid loads, and every one under
//! `examples/invalid/` fails with the messages its `# expect:` comments name.

use std::path::{Path, PathBuf};

use regatta_manifest::{Dag, Manifest, Plan};

fn examples_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    dir.canonicalize().expect("the examples folder exists")
}

/// Finds every manifest under `examples/` outside `invalid/`.
fn valid_manifests(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable examples folder") {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name != "invalid") {
                valid_manifests(&path, found);
            }
        } else if path
            .file_name()
            .is_some_and(|name| name == "manifest.yaml" || name == "manifest.json")
        {
            found.push(path);
        }
    }
}

#[test]
fn valid_examples_load_build_and_plan() {
    let mut manifests = Vec::new();
    valid_manifests(&examples_dir(), &mut manifests);
    assert!(!manifests.is_empty(), "no example manifests found");
    for path in manifests {
        let manifest = Manifest::load(&path)
            .unwrap_or_else(|errors| panic!("{} should load:\n{errors}", path.display()));
        let dag = Dag::build(&manifest).expect("a valid manifest builds");
        let plan = Plan::of(&manifest, &dag);
        assert_eq!(plan.units, manifest.units.len());
        assert!(manifest.summary(&dag).contains(": valid: batch '"));
    }
}

#[test]
fn hello_example_resolves_workdir_and_playbook() {
    let path = examples_dir().join("hello/manifest.yaml");
    let manifest = Manifest::load(&path).expect("hello loads");
    assert_eq!(manifest.workdir, examples_dir().join("hello"));
    assert_eq!(manifest.playbook.name, "hello");
    assert_eq!(manifest.playbook.run, "./scripts/greet.sh");
    assert_eq!(manifest.playbook.gates.len(), 2);
    assert!(!manifest.playbook.gates[1].required);
    let dag = Dag::build(&manifest).expect("hello builds");
    assert_eq!(
        manifest.summary(&dag),
        format!(
            "{}: valid: batch 'hello', 3 units, 2 dependencies, 2 levels, 1 resource",
            path.display()
        )
    );
    let plan = Plan::of(&manifest, &dag);
    assert_eq!(plan.serialised_groups.len(), 1);
    assert_eq!(plan.serialised_groups[0].file, "out/greetings.log");
    assert_eq!(plan.serialised_groups[0].units.len(), 3);
}

#[test]
fn invalid_examples_fail_with_their_expected_messages() {
    let dir = examples_dir().join("invalid");
    let mut checked = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("readable invalid examples")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "json"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).expect("readable example");
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no '# expect:' line",
            path.display()
        );
        let errors = match Manifest::load(&path) {
            Ok(_) => panic!("{} should be refused", path.display()),
            Err(errors) => errors,
        };
        let shown = errors.to_string();
        for message in &expected {
            assert!(
                shown.contains(message),
                "{}: expected a line containing\n  {message}\ngot:\n{shown}",
                path.display()
            );
        }
        if let Some(count) = text
            .lines()
            .find_map(|line| line.strip_prefix("# expect-count: "))
        {
            let count: usize = count.trim().parse().expect("a number after expect-count");
            assert_eq!(errors.len(), count, "{}:\n{shown}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} invalid examples found");
}
