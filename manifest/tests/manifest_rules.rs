//! The manifest's rules, one behaviour per test, without services.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use regatta_manifest::manifest::ManifestErrorKind;
use regatta_manifest::{Dag, Manifest, ManifestErrors, Plan};

const BASE: &str = "/srv/batches";

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

fn codes(yaml: &str) -> Vec<&'static str> {
    match parse(yaml) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.kind.code()).collect(),
    }
}

/// Wraps unit lines in a minimal valid manifest.
fn with_units(units: &str) -> String {
    format!("batch: b\nplaybook: {{run: ./go.sh}}\nunits:\n{units}")
}

/// A fresh folder under the system's temporary folder.
fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "regatta-manifest-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

#[test]
fn minimal_manifest_gets_defaults() {
    let manifest = parse(&with_units("  - id: a\n")).expect("valid");
    assert_eq!(manifest.batch, "b");
    assert_eq!(manifest.workdir, PathBuf::from(BASE));
    assert_eq!(manifest.concurrency, 10);
    assert_eq!(manifest.retries, 1);
    assert_eq!(manifest.playbook.name, "b");
    assert_eq!(manifest.units[0].task, "");
    assert_eq!(manifest.units[0].priority, 0);
    assert_eq!(manifest.units[0].verify, None);
    assert_eq!(manifest.source, "m.yaml");
    assert_eq!(
        manifest.effective_timeout(&manifest.units[0]),
        Duration::from_secs(3600)
    );
}

#[test]
fn reports_every_problem_at_once_in_file_order() {
    let yaml = "\
batch: six
concurrency: 0
playbook: {run: ./go.sh}
resources:
  db: 2
units:
  - id: a
    depends_on: [bb]
    uses: [dbb]
  - id: a
    timeout: 4 hours
    outputs: [../escape.txt]
  - id: c
    depends_on: [c]
";
    let errors = refused(yaml);
    assert_eq!(
        errors,
        vec![
            "m.yaml:2:14: concurrency must be at least 1",
            "m.yaml:8:18: unit 'a': unknown dependency 'bb'",
            "m.yaml:9:12: unit 'a': unknown resource 'dbb' (did you mean 'db'?)",
            "m.yaml:10:9: unit 'a': duplicate unit id 'a' (first defined at 7:9)",
            "m.yaml:11:14: unit 'a': invalid duration '4 hours' for 'timeout': expected a whole \
             number followed by a unit (ms, s, m, h or d), e.g. '90s', '1h30m'",
            "m.yaml:12:15: unit 'a': path '../escape.txt' in 'outputs' leaves the workdir",
            "m.yaml:14:18: unit 'c': unit depends on itself",
        ]
    );
}

#[test]
fn unknown_fields_are_all_reported_with_suggestions() {
    let yaml = "\
batch: b
playbok: {run: x}
playbook:
  run: ./go.sh
  gates:
    - name: test
      runn: make test
units:
  - id: a
    dependson: []
    colour: blue
";
    assert_eq!(
        refused(yaml),
        vec![
            "m.yaml:2:1: unknown manifest field 'playbok' (did you mean 'playbook'?)",
            "m.yaml:6:7: missing required field 'run'",
            "m.yaml:7:7: unknown gate field 'runn' (did you mean 'run'?)",
            "m.yaml:10:5: unit 'a': unknown unit field 'dependson' (did you mean 'depends_on'?)",
            "m.yaml:11:5: unit 'a': unknown unit field 'colour'",
        ]
    );
}

#[test]
fn wrong_types_are_reported_and_reading_goes_on() {
    let yaml = "\
batch: b
playbook: {run: ./go.sh}
retries: two
concurrency: -3
calibration_auto: half
units:
  - id: a
    priority: high
    depends_on: b
    uses: 7
  - just-a-string
  - id: c
";
    assert_eq!(
        refused(yaml),
        vec![
            "m.yaml:3:10: 'retries' must be a whole number of 0 or more, found 'two'",
            "m.yaml:4:14: 'concurrency' must be a whole number of 0 or more, found -3",
            "m.yaml:5:19: 'calibration_auto' must be a number, found 'half'",
            "m.yaml:6:1: 'units[1]' must be a mapping with at least an 'id', found \
             'just-a-string'",
            "m.yaml:8:15: unit 'a': 'priority' must be a whole number, found 'high'",
            "m.yaml:9:5: unit 'a': 'depends_on' must be a list, found 'b'",
            "m.yaml:10:5: unit 'a': 'uses' must be a list of resource names or a mapping of \
             resource names to weights, found 7",
        ]
    );
}

#[test]
fn repeated_keys_are_reported() {
    let yaml = "batch: b\nbatch: c\nplaybook: {run: ./go.sh}\nunits:\n  - id: a\n    id: b\n";
    assert_eq!(
        refused(yaml),
        vec![
            "m.yaml:2:1: field 'batch' is given more than once",
            "m.yaml:6:5: unit 'a': field 'id' is given more than once",
        ]
    );
}

#[test]
fn syntax_errors_are_clean_and_positioned() {
    let errors = refused("batch: b\nunits: [\n  {id: a\n");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("m.yaml:"), "{}", errors[0]);
    assert!(errors[0].contains("invalid YAML"), "{}", errors[0]);
    assert_eq!(codes("batch: [unclosed\n"), vec!["syntax"]);
    assert_eq!(codes(""), vec!["syntax"]);
    assert_eq!(codes("just a string"), vec!["wrong-type"]);
    assert_eq!(codes("- a list\n"), vec!["wrong-type"]);
    assert_eq!(codes("\t- bad: [indent\n:"), vec!["syntax"]);
}

#[test]
fn missing_batch_units_and_playbook() {
    assert_eq!(
        codes("units:\n  - id: a\n"),
        vec!["missing-field", "missing-playbook"]
    );
    assert_eq!(codes("batch: b\nplaybook: {run: x}\n"), vec!["no-units"]);
    assert_eq!(
        codes("batch: b\nplaybook: {run: x}\nunits: []\n"),
        vec!["no-units"]
    );
    assert_eq!(
        refused("batch: b\nplaybook: {name: p}\nunits: [{id: a}]\n"),
        vec!["m.yaml:2:12: missing required field 'run'"]
    );
    assert_eq!(
        codes("batch: b\nplaybook: 12\nunits: [{id: a}]\n"),
        vec!["wrong-type"]
    );
}

#[test]
fn ids_must_be_unique_and_key_safe() {
    assert_eq!(
        codes(&with_units("  - id: a\n  - id: a\n  - id: a\n")),
        vec!["duplicate-id", "duplicate-id"]
    );
    for bad in ["'a b'", "a/b", "'a:b'", "'..'", "é"] {
        assert_eq!(
            codes(&with_units(&format!("  - id: {bad}\n"))),
            vec!["invalid-id"],
            "{bad}"
        );
    }
    assert_eq!(codes(&with_units("  - id: ''\n")), vec!["missing-id"]);
    assert_eq!(codes(&with_units("  - task: no id\n")), vec!["missing-id"]);
    assert_eq!(codes(&with_units("  - id: A.b_c-9\n")), Vec::<&str>::new());
    // Numbers keep their spelling as ids.
    let manifest = parse(&with_units("  - id: 007\n")).expect("valid");
    assert_eq!(manifest.units[0].id, "007");
}

#[test]
fn dependencies_suggest_only_close_ids() {
    let errors = refused(&with_units(
        "  - id: customer-pkg\n  - id: orders-pkg\n    depends_on: [custmer-pkg, billing, orders-pkg]\n",
    ));
    assert_eq!(
        errors,
        vec![
            "m.yaml:6:18: unit 'orders-pkg': unknown dependency 'custmer-pkg' (did you mean \
             'customer-pkg'?)",
            "m.yaml:6:31: unit 'orders-pkg': unknown dependency 'billing'",
            "m.yaml:6:40: unit 'orders-pkg': unit depends on itself",
        ]
    );
    assert_eq!(
        codes(&with_units(
            "  - id: a\n  - id: b\n    depends_on: [a, a]\n"
        )),
        vec!["duplicate-dependency"]
    );
}

#[test]
fn cycles_are_printed_once_as_the_cycle() {
    let errors = refused(&with_units(
        "  - id: a\n    depends_on: [b]\n  - id: b\n    depends_on: [c]\n  - id: c\n    \
         depends_on: [a]\n  - id: x\n    depends_on: [y]\n  - id: y\n    depends_on: [x]\n  \
         - id: after\n    depends_on: [a, x]\n",
    ));
    assert_eq!(
        errors,
        vec![
            "m.yaml:5:18: unit 'a': dependency cycle: a -> b -> c -> a",
            "m.yaml:11:18: unit 'x': dependency cycle: x -> y -> x",
        ]
    );
}

#[test]
fn uses_accepts_a_list_or_a_map() {
    let yaml = "\
batch: b
playbook: {run: ./go.sh}
resources: {orders-db: 4, billing-api: 10}
units:
  - id: a
    uses: [orders-db, billing-api]
  - id: b
    uses: {orders-db: 3}
  - id: c
    uses:
      billing-api: 10
";
    let manifest = parse(yaml).expect("valid");
    assert_eq!(manifest.units[0].uses.get("orders-db"), Some(&1));
    assert_eq!(manifest.units[0].uses.get("billing-api"), Some(&1));
    assert_eq!(manifest.units[1].uses.get("orders-db"), Some(&3));
    assert_eq!(manifest.units[2].uses.get("billing-api"), Some(&10));
}

#[test]
fn resource_rules() {
    let yaml = "\
batch: b
playbook: {run: ./go.sh}
resources:
  orders-db: 4
  empty:
  closed: 0
  negative: -2
  'file:x': 1
  'bad name': 1
units:
  - id: a
    uses: {orders-db: 5, closed: 3, ordersdb: 1}
  - id: b
    uses: {orders-db: 0}
  - id: c
    uses: [orders-db, orders-db]
";
    assert_eq!(
        refused(yaml),
        vec![
            "m.yaml:5:3: resource 'empty' needs a capacity of at least 1, found nothing",
            "m.yaml:6:3: resource 'closed' needs a capacity of at least 1, found 0",
            "m.yaml:7:3: resource 'negative' needs a capacity of at least 1, found -2",
            "m.yaml:8:3: resource name 'file:x' is reserved: names starting with 'file:' stand \
             for touched files",
            "m.yaml:9:3: invalid resource name 'bad name': use only letters, digits, '.', '_' \
             and '-' (names become Redis keys)",
            "m.yaml:12:12: unit 'a': uses 5 of resource 'orders-db', whose capacity is 4: the \
             unit could never run",
            "m.yaml:12:37: unit 'a': unknown resource 'ordersdb' (did you mean 'orders-db'?)",
            "m.yaml:14:12: unit 'b': weight of resource 'orders-db' must be at least 1",
            "m.yaml:16:23: unit 'c': resource 'orders-db' is listed more than once in 'uses'",
        ]
    );
}

#[test]
fn durations_accept_the_documented_forms_only() {
    for (text, expected) in [("90s", 90), ("30m", 1800), ("4h", 14400), ("1h30m", 5400)] {
        let yaml = format!("batch: b\ntimeout: {text}\nplaybook: {{run: x}}\nunits: [{{id: a}}]\n");
        let manifest = parse(&yaml).expect(text);
        assert_eq!(
            manifest.timeout,
            Some(Duration::from_secs(expected)),
            "{text}"
        );
    }
    let yaml = "batch: b\nplaybook: {run: x}\nunits: [{id: a, timeout: 500ms}]\n";
    let manifest = parse(yaml).expect("500ms");
    assert_eq!(manifest.units[0].timeout, Some(Duration::from_millis(500)));
    for bad in ["4 hours", "-1s", "90", "1.5h", "soon", "[1]"] {
        let yaml = format!("batch: b\ntimeout: {bad}\nplaybook: {{run: x}}\nunits: [{{id: a}}]\n");
        let codes = codes(&yaml);
        assert!(
            codes == ["invalid-duration"] || codes == ["wrong-type"],
            "{bad}: {codes:?}"
        );
    }
    assert_eq!(
        codes("batch: b\ntimeout: 0s\nplaybook: {run: x}\nunits: [{id: a}]\n"),
        vec!["zero-duration"]
    );
}

#[test]
fn effective_timeout_prefers_unit_then_manifest_then_playbook() {
    let yaml = "\
batch: b
timeout: 2h
playbook: {run: x, timeout: 3h}
units:
  - id: own
    timeout: 5m
  - id: batch-default
";
    let manifest = parse(yaml).expect("valid");
    assert_eq!(
        manifest.effective_timeout(&manifest.units[0]),
        Duration::from_secs(300)
    );
    assert_eq!(
        manifest.effective_timeout(&manifest.units[1]),
        Duration::from_secs(7200)
    );
    let yaml = "batch: b\nplaybook: {run: x, timeout: 3h}\nunits: [{id: a}]\n";
    let manifest = parse(yaml).expect("valid");
    assert_eq!(
        manifest.effective_timeout(&manifest.units[0]),
        Duration::from_secs(10800)
    );
}

#[test]
fn paths_must_stay_inside_the_workdir_and_are_normalised() {
    let manifest = parse(&with_units(
        "  - id: a\n    inputs: [src/./a.sql, src/tmp/../b.sql]\n    touches: [schema//c.sql]\n",
    ))
    .expect("valid");
    assert_eq!(manifest.units[0].inputs, vec!["src/a.sql", "src/b.sql"]);
    assert_eq!(manifest.units[0].touches, vec!["schema/c.sql"]);
    assert_eq!(
        refused(&with_units(
            "  - id: a\n    inputs: [/etc/passwd, a/../../b, ., a/..]\n    touches: [x, ./x]\n"
        )),
        vec![
            "m.yaml:5:14: unit 'a': path '/etc/passwd' in 'inputs' is absolute: paths are \
             relative to the workdir",
            "m.yaml:5:27: unit 'a': path 'a/../../b' in 'inputs' leaves the workdir",
            "m.yaml:5:38: unit 'a': path '.' in 'inputs' is empty or names the workdir itself",
            "m.yaml:5:41: unit 'a': path 'a/..' in 'inputs' is empty or names the workdir itself",
            "m.yaml:6:18: unit 'a': path './x' is listed more than once in 'touches'",
        ]
    );
}

#[test]
fn touched_files_are_capacity_one_resources() {
    let yaml = "\
batch: b
playbook: {run: x}
resources: {db: 3}
units:
  - id: a
    uses: {db: 2}
    touches: [schema/./s.sql, z.txt]
";
    let manifest = parse(yaml).expect("valid");
    let unit = &manifest.units[0];
    assert_eq!(
        unit.resource_demands(),
        vec![
            ("db".to_string(), 2),
            ("file:schema/s.sql".to_string(), 1),
            ("file:z.txt".to_string(), 1),
        ]
    );
    assert_eq!(manifest.resource_capacity("file:z.txt"), Some(1));
    assert_eq!(manifest.resource_capacity("db"), Some(3));
    assert_eq!(manifest.resource_capacity("nope"), None);
}

#[test]
fn verify_names_existing_gates() {
    let yaml = "\
batch: b
playbook:
  run: x
  gates:
    - {name: build, run: make}
    - {name: test, run: make test, required: false}
    - {name: build, run: again}
    - {name: lint, run: lint, repairs: 2}
units:
  - id: a
    verify: [tset, build, build]
  - id: b
    verify: []
  - id: c
";
    assert_eq!(
        refused(yaml),
        vec![
            "m.yaml:7:14: duplicate gate name 'build' (first defined at 5:14)",
            "m.yaml:8:40: gate 'lint' sets 'repairs' but has no 'fix' command to repair with",
            "m.yaml:11:14: unit 'a': 'verify' names unknown gate 'tset' (did you mean 'test'?)",
            "m.yaml:11:27: unit 'a': gate 'build' is listed more than once in 'verify'",
        ]
    );
    let yaml = "\
batch: b
playbook:
  run: x
  gates: [{name: build, run: make}, {name: test, run: t}]
units:
  - {id: a, verify: [test]}
  - {id: b, verify: []}
  - {id: c}
";
    let manifest = parse(yaml).expect("valid");
    let gates = |index: usize| -> Vec<&str> {
        manifest
            .gates_for(&manifest.units[index])
            .map(|gate| gate.name.as_str())
            .collect()
    };
    assert_eq!(gates(0), vec!["test"]);
    assert!(gates(1).is_empty());
    assert_eq!(gates(2), vec!["build", "test"]);
}

#[test]
fn calibration_rules() {
    let head = "batch: b\nplaybook: {run: x}\nunits: [{id: a}]\n";
    assert_eq!(
        codes(&format!("{head}calibration_auto: 0\n")),
        vec!["calibration-auto-out-of-range"]
    );
    assert_eq!(
        codes(&format!("{head}calibration_auto: 1.01\n")),
        vec!["calibration-auto-out-of-range"]
    );
    assert_eq!(
        codes(&format!("{head}calibration: 3\ncalibration_auto: 1\n")),
        Vec::<&str>::new()
    );
    assert_eq!(
        codes(&format!("{head}calibration: 3\ncalibration_auto: 0.05\n")),
        Vec::<&str>::new()
    );
    assert_eq!(
        codes(&format!("{head}calibration: 0\n")),
        vec!["zero-calibration"]
    );
    assert_eq!(
        codes(&format!("{head}calibration_auto: 0.9\n")),
        vec!["calibration-auto-without-calibration"]
    );
}

#[test]
fn environment_names_are_checked() {
    let yaml = "\
batch: b
playbook: {run: x, env: {GOOD: 1, 1BAD: x}}
units:
  - id: a
    env: {REGATTA_UNIT_ID: x, PORT: 5432, EMPTY:}
";
    assert_eq!(
        refused(yaml),
        vec![
            "m.yaml:2:35: invalid environment variable name '1BAD': use letters, digits and \
             '_', not starting with a digit",
            "m.yaml:5:11: unit 'a': environment variable 'REGATTA_UNIT_ID' is reserved: \
             regatta sets REGATTA_* itself",
            "m.yaml:5:43: unit 'a': 'env.EMPTY' must be a string (write \"\" for an empty \
             value), found nothing",
        ]
    );
    let manifest = parse("batch: b\nplaybook: {run: x}\nunits: [{id: a, env: {PORT: 5432}}]\n")
        .expect("valid");
    assert_eq!(
        manifest.units[0].env.get("PORT").map(String::as_str),
        Some("5432")
    );
}

#[test]
fn json_manifests_parse_and_report_positions() {
    let json = r#"{
  "batch": "j",
  "playbook": {"run": "./go.sh"},
  "resources": {"db": 2},
  "units": [
    {"id": "a", "uses": ["db"]},
    {"id": "b", "depends_on": ["a"], "uses": {"db": 2}, "timeout": "90s"}
  ]
}"#;
    let manifest = Manifest::parse(json, "m.json", Path::new(BASE)).expect("valid JSON");
    assert_eq!(manifest.units[1].timeout, Some(Duration::from_secs(90)));
    assert_eq!(manifest.units[1].uses.get("db"), Some(&2));
    // Recognised by content, too.
    assert!(Manifest::parse(json, "manifest", Path::new(BASE)).is_ok());

    let bad = r#"{
  "batch": "j",
  "playbook": {"run": "./go.sh"},
  "units": [
    {"id": "a", "colour": "red"},
    {"id": "b", "depends_on": ["aa"]}
  ]
}"#;
    let errors = Manifest::parse(bad, "m.json", Path::new(BASE)).expect_err("refused");
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        vec![
            "m.json:5:17: unit 'a': unknown unit field 'colour'",
            "m.json:6:32: unit 'b': unknown dependency 'aa'",
        ]
    );
    let broken = "{\"batch\": \"j\",\n \"units\": [}\n";
    let errors = Manifest::parse(broken, "m.json", Path::new(BASE)).expect_err("refused");
    assert_eq!(errors.len(), 1);
    let error = &errors.errors[0];
    assert_eq!(error.line, Some(2));
    assert!(error.to_string().contains("invalid JSON"), "{error}");
}

#[test]
fn flow_yaml_that_looks_like_json_is_still_yaml() {
    let text = "{batch: b, playbook: {run: x}, units: [{id: a}]}";
    let manifest = Manifest::parse(text, "manifest", Path::new(BASE)).expect("flow YAML");
    assert_eq!(manifest.units[0].id, "a");
}

#[test]
fn workdir_resolves_against_the_manifest_folder() {
    let head = "batch: b\nplaybook: {run: x}\nunits: [{id: a}]\n";
    let manifest = parse(&format!("{head}workdir: ../repo\n")).expect("valid");
    assert_eq!(manifest.workdir, PathBuf::from("/srv/repo"));
    let manifest = parse(&format!("{head}workdir: /opt/code\n")).expect("valid");
    assert_eq!(manifest.workdir, PathBuf::from("/opt/code"));
    let manifest = parse(&format!("{head}workdir: ./src/./x\n")).expect("valid");
    assert_eq!(manifest.workdir, PathBuf::from("/srv/batches/src/x"));
    // A relative base folder is made absolute against the current folder.
    let manifest = Manifest::parse(head, "m.yaml", Path::new("rel")).expect("valid");
    assert!(manifest.workdir.is_absolute());
    assert!(manifest.workdir.ends_with("rel"));
}

#[test]
fn load_checks_that_the_workdir_exists() {
    let dir = scratch_dir();
    let path = dir.join("manifest.yaml");
    std::fs::write(
        &path,
        "batch: b\nworkdir: nowhere\nplaybook: {run: x}\nunits: [{id: a}]\n",
    )
    .expect("write");
    let errors = Manifest::load(&path).expect_err("refused");
    assert_eq!(errors.errors[0].kind.code(), "workdir-not-found");
    assert_eq!(errors.errors[0].line, Some(2));
    std::fs::create_dir(dir.join("nowhere")).expect("mkdir");
    let manifest = Manifest::load(&path).expect("valid now");
    assert_eq!(manifest.workdir, dir.join("nowhere"));
    let errors = Manifest::load(&dir.join("absent.yaml")).expect_err("refused");
    assert_eq!(errors.errors[0].kind.code(), "unreadable");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn playbook_by_path_is_read_relative_to_the_manifest() {
    let dir = scratch_dir();
    std::fs::create_dir(dir.join("playbooks")).expect("mkdir");
    std::fs::write(
        dir.join("playbooks/plsql-to-pg.yaml"),
        "run: ./scripts/migrate.sh\nenv: {PGHOST: 127.0.0.1}\ntimeout: 2h\ngates:\n  - name: build\n    run: make build\n",
    )
    .expect("write");
    let path = dir.join("manifest.yaml");
    std::fs::write(
        &path,
        "batch: b\nplaybook: playbooks/plsql-to-pg.yaml\nunits:\n  - id: a\n    verify: [build]\n",
    )
    .expect("write");
    let manifest = Manifest::load(&path).expect("valid");
    assert_eq!(manifest.playbook.name, "plsql-to-pg");
    assert_eq!(manifest.playbook.run, "./scripts/migrate.sh");
    assert_eq!(manifest.playbook.timeout, Some(Duration::from_secs(7200)));
    assert_eq!(manifest.playbook.gates[0].name, "build");
    assert!(manifest.playbook.gates[0].required);

    // Problems inside the playbook file are reported against that file.
    std::fs::write(
        dir.join("playbooks/plsql-to-pg.yaml"),
        "name: p\ngates:\n  - name: build\n    runn: make\n",
    )
    .expect("write");
    let errors = Manifest::load(&path).expect_err("refused");
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let playbook_file = dir.join("playbooks/plsql-to-pg.yaml");
    assert_eq!(
        shown,
        vec![
            format!(
                "{}:1:1: missing required field 'run'",
                playbook_file.display()
            ),
            format!(
                "{}:3:5: missing required field 'run'",
                playbook_file.display()
            ),
            format!(
                "{}:4:5: unknown gate field 'runn' (did you mean 'run'?)",
                playbook_file.display()
            ),
        ]
    );

    // A JSON playbook file works too, with positions in its problems.
    std::fs::write(
        dir.join("p.json"),
        "{\n  \"run\": \"x\",\n  \"gatez\": []\n}\n",
    )
    .expect("write");
    std::fs::write(&path, "batch: b\nplaybook: p.json\nunits: [{id: a}]\n").expect("write");
    let errors = Manifest::load(&path).expect_err("refused");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors.errors[0].line, errors.errors[0].column),
        (Some(3), Some(3))
    );

    std::fs::write(
        &path,
        "batch: b\nplaybook: missing.yaml\nunits: [{id: a, verify: [x]}]\n",
    )
    .expect("write");
    let errors = Manifest::load(&path).expect_err("refused");
    // Only the missing file: gate names cannot be checked against a playbook never read.
    assert_eq!(errors.len(), 1);
    assert!(errors.to_string().contains("missing.yaml' does not exist"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_manifest_round_trips_through_json_and_checks() {
    let yaml = "\
batch: rt
concurrency: 3
calibration: 1
calibration_auto: 0.1
retries: 0
timeout: 1h30m
playbook:
  name: p
  run: ./go.sh
  env: {A: b}
  timeout: 500ms
  gates:
    - {name: build, run: make, fix: make fix, repairs: 2, required: false, timeout: 90s}
resources: {db: 2}
units:
  - id: a
    task: do a
    inputs: [in/a]
    outputs: [out/a]
    touches: [shared]
    uses: {db: 2}
    env: {X: y}
    priority: -4
    verify: [build]
    run: ./special.sh
    timeout: 26h1m1s1ms
  - id: b
    depends_on: [a]
    verify: []
";
    let manifest = parse(yaml).expect("valid");
    let json = serde_json::to_string_pretty(&manifest).expect("serialises");
    let back: Manifest = serde_json::from_str(&json).expect("deserialises");
    assert_eq!(back, manifest);
    assert_eq!(back.sha256(), manifest.sha256());
    back.check().expect("still valid");
    // The JSON form is itself a manifest `parse` accepts.
    let reparsed = Manifest::parse(&json, "rt.json", Path::new(BASE)).expect("parses");
    assert_eq!(reparsed, manifest);
}

#[test]
fn check_applies_every_rule_without_positions() {
    let mut manifest =
        parse(&with_units("  - id: a\n  - id: b\n    depends_on: [a]\n")).expect("valid");
    manifest.check().expect("valid");
    manifest.units[0].depends_on.push("b".into());
    manifest.units[1].outputs.push("../x".into());
    manifest.units[1].uses.insert("ghost".into(), 1);
    manifest.concurrency = 0;
    manifest.source = String::new();
    let errors = manifest.check().expect_err("refused");
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        vec![
            "manifest: concurrency must be at least 1",
            "manifest: unit 'b': path '../x' in 'outputs' leaves the workdir",
            "manifest: unit 'b': unknown resource 'ghost'",
            "manifest: unit 'a': dependency cycle: a -> b -> a",
        ]
    );
    assert!(Dag::build(&manifest).is_err());
}

#[test]
fn sha256_ignores_the_source_and_tracks_content() {
    let text = with_units("  - id: a\n");
    let one = Manifest::parse(&text, "one.yaml", Path::new(BASE)).expect("valid");
    let two = Manifest::parse(&text, "two.yaml", Path::new(BASE)).expect("valid");
    assert_eq!(one, two);
    assert_eq!(one.sha256(), two.sha256());
    assert_eq!(one.sha256().len(), 64);
    let other =
        Manifest::parse(&with_units("  - id: b\n"), "one.yaml", Path::new(BASE)).expect("valid");
    assert_ne!(one.sha256(), other.sha256());
}

#[test]
fn errors_serialise_for_scripts() {
    let errors = parse(&with_units("  - id: a\n    depends_on: [zz]\n")).expect_err("refused");
    let json = serde_json::to_value(&errors).expect("serialises");
    assert_eq!(
        json,
        serde_json::json!({"errors": [{
            "source": "m.yaml",
            "line": 5,
            "column": 18,
            "unit": "a",
            "code": "unknown-dependency",
            "message": "unknown dependency 'zz'",
        }]})
    );
    assert!(errors.to_string().starts_with("m.yaml:5:18:"));
}

#[test]
fn error_kinds_carry_their_details() {
    let errors = parse(&with_units("  - id: a\n    depends_on: [aa]\n")).expect_err("refused");
    match &errors.errors[0].kind {
        ManifestErrorKind::UnknownDependency {
            dependency,
            suggestion,
        } => {
            assert_eq!(dependency, "aa");
            assert_eq!(suggestion, &None);
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Builds a YAML manifest with `count` units in a chain-and-fan shape.
fn big_yaml(count: usize, mistake_at: Option<usize>) -> String {
    let mut text = String::from("batch: big\nplaybook: {run: x}\nresources: {db: 4}\nunits:\n");
    for index in 0..count {
        text.push_str(&format!(
            "  - id: unit-{index:06}\n    task: migrate thing {index}\n"
        ));
        if index > 0 {
            let dependency = if Some(index) == mistake_at {
                format!("unit-{:06}x", index / 2)
            } else {
                format!("unit-{:06}", index / 2)
            };
            text.push_str(&format!("    depends_on: [{dependency}]\n    uses: [db]\n"));
        }
    }
    text
}

#[test]
fn big_manifests_read_fast_and_still_report_positions() {
    // Over the size read with positions first: the error path reads the text again.
    let count = 12_000;
    let text = big_yaml(count, None);
    assert!(text.len() > 1 << 20);
    let manifest = parse(&text).expect("valid");
    assert_eq!(manifest.units.len(), count);
    let text = big_yaml(count, Some(9_000));
    let errors = parse(&text).expect_err("refused");
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let line = 4 + 1 + 2 + 8_999 * 4 + 2;
    assert_eq!(
        shown,
        vec![format!(
            "m.yaml:{line}:18: unit 'unit-009000': unknown dependency 'unit-004500x' (did you \
             mean 'unit-004500'?)"
        )]
    );
    // The same in JSON, where positions come from reading the text as YAML.
    let manifest = parse(&big_yaml(count, None)).expect("valid");
    let mut broken = manifest.clone();
    broken.units[3].depends_on = vec!["nobody".into()];
    let json = serde_json::to_string_pretty(&broken).expect("serialises");
    let errors = Manifest::parse(&json, "big.json", Path::new(BASE)).expect_err("refused");
    assert_eq!(errors.len(), 1);
    assert!(errors.errors[0].line.is_some());
    assert_eq!(errors.errors[0].unit.as_deref(), Some("unit-000003"));
}

#[test]
fn dag_answers_graph_questions() {
    let manifest = parse(&with_units(
        "  - id: a\n  - id: b\n  - id: c\n    depends_on: [a, b]\n  - id: d\n    depends_on: [c]\n  - id: e\n    depends_on: [a]\n",
    ))
    .expect("valid");
    let dag = Dag::build(&manifest).expect("builds");
    assert_eq!(dag.len(), 5);
    assert_eq!(dag.edge_count(), 4);
    assert_eq!(dag.index_of("c"), Some(2));
    assert_eq!(dag.index_of("zz"), None);
    let mut deps: Vec<usize> = dag.dependencies(2).collect();
    deps.sort();
    assert_eq!(deps, vec![0, 1]);
    let mut dependents: Vec<usize> = dag.dependents(0).collect();
    dependents.sort();
    assert_eq!(dependents, vec![2, 4]);
    assert_eq!(dag.roots().collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(dag.descendants(0), vec![2, 3, 4]);
    assert_eq!(dag.descendants(3), Vec::<usize>::new());
    assert_eq!(dag.levels(), vec![vec![0, 1], vec![2, 4], vec![3]]);
    assert_eq!(dag.level_count(), 3);
    assert_eq!(dag.level_of(3), Some(2));
    assert_eq!(dag.level_of(99), None);
    assert!(dag.descendants(99).is_empty());
    let order: Vec<usize> = dag.topological_order().collect();
    for (position, unit) in order.iter().enumerate() {
        for dependency in dag.dependencies(*unit) {
            assert!(order[..position].contains(&dependency));
        }
    }
    assert_eq!(
        manifest.summary(&dag),
        "m.yaml: valid: batch 'b', 5 units, 4 dependencies, 3 levels, 0 resources"
    );
}

#[test]
fn plan_of_a_small_known_dag() {
    let yaml = "\
batch: known
concurrency: 4
timeout: 1h
playbook: {run: x}
resources: {db: 2, api: 5}
units:
  - id: a
    uses: [db]
    touches: [schema.sql]
  - id: b
    timeout: 3h
    uses: {db: 2, api: 1}
  - id: c
    depends_on: [a, b]
    touches: [./schema.sql, other.sql]
  - id: d
    depends_on: [c]
    timeout: 30m
  - id: e
    depends_on: [a]
    touches: [other.sql, schema.sql]
";
    let manifest = parse(yaml).expect("valid");
    let dag = Dag::build(&manifest).expect("builds");
    let plan = Plan::of(&manifest, &dag);
    assert_eq!(plan.units, 5);
    assert_eq!(plan.dependencies, 4);
    assert_eq!(plan.levels, vec![vec!["a", "b"], vec!["c", "e"], vec!["d"]]);
    assert_eq!(plan.widest_level, 2);
    // b (3h) -> c (1h) -> d (30m) outweighs a (1h) -> c -> d.
    assert_eq!(plan.critical_path.units, vec!["b", "c", "d"]);
    assert_eq!(plan.critical_path.length, 3);
    assert_eq!(
        plan.critical_path.total_timeout,
        Duration::from_secs(16_200)
    );
    let demand: Vec<(&str, u32, usize, u64)> = plan
        .resources
        .iter()
        .map(|r| (r.name.as_str(), r.capacity, r.units, r.total_weight))
        .collect();
    assert_eq!(demand, vec![("api", 5, 1, 1), ("db", 2, 2, 3)]);
    let groups: Vec<(&str, Vec<&str>)> = plan
        .serialised_groups
        .iter()
        .map(|g| {
            (
                g.file.as_str(),
                g.units.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        vec![
            ("other.sql", vec!["c", "e"]),
            ("schema.sql", vec!["a", "c", "e"]),
        ]
    );
    let text = plan.render_text();
    assert!(text.contains("batch 'known': 5 units, 4 dependencies, 3 levels, concurrency 4"));
    assert!(text.contains("critical path: 3 units, 4h30m of summed timeouts"));
    assert!(text.contains("b -> c -> d"));
    assert!(text.contains("schema.sql: a, c, e"));
    let json = serde_json::to_value(&plan).expect("serialises");
    assert_eq!(json["critical_path"]["total_timeout"], "4h30m");
    assert_eq!(json["levels"][0], serde_json::json!(["a", "b"]));
}

#[test]
fn anchors_merge_keys_and_extension_fields_work() {
    let yaml = "\
x-defaults: &defaults
  uses: [db]
  timeout: 5m
batch: b
playbook: {run: x}
resources: {db: 2}
units:
  - id: a
    <<: *defaults
  - id: b
    <<: *defaults
    timeout: 1m
";
    let manifest = parse(yaml).expect("valid");
    assert_eq!(manifest.units[0].uses.get("db"), Some(&1));
    assert_eq!(manifest.units[0].timeout, Some(Duration::from_secs(300)));
    assert_eq!(manifest.units[1].timeout, Some(Duration::from_secs(60)));
    // Only the top level takes extension fields; elsewhere `x-` is as unknown as any key.
    assert_eq!(
        codes("batch: b\nplaybook: {run: x}\nunits: [{id: a, x-note: hi}]\n"),
        vec!["unknown-field"]
    );
}

#[test]
fn fatal_problems_keep_what_came_before_and_name_the_unit() {
    let yaml = "\
batch: b
retries: lots
playbook: {run: x}
units:
  - id: a
  - id: b
    task: \"never closed
";
    let errors = refused(yaml);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(
        errors[0],
        "m.yaml:2:10: 'retries' must be a whole number of 0 or more, found 'lots'"
    );
    assert!(
        errors[1].starts_with("m.yaml:7:11: unit 'b': 'task': invalid YAML: unclosed quote"),
        "{}",
        errors[1]
    );
    assert_eq!(
        codes("batch: a\nplaybook: {run: x}\nunits: [{id: a}]\n---\nbatch: b\n"),
        vec!["syntax"]
    );
    let json = "{\"batch\": \"b\", \"playbook\": {\"run\": \"x\"},\n \"units\": [{\"id\": 5}]}";
    let errors = Manifest::parse(json, "m.json", Path::new(BASE)).expect_err("refused");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors.errors[0].line, Some(2));
    assert!(errors
        .to_string()
        .contains("'id': invalid JSON: invalid type: integer `5`"));
}

#[test]
fn empty_entries_and_repeated_map_keys_are_reported() {
    let yaml = "\
batch: b
playbook: {run: x, env: {A: '1', A: '2'}}
units:
  - id: a
  - id: b
    depends_on:
      - a
      -
";
    assert_eq!(
        refused(yaml),
        vec![
            "m.yaml:2:34: field 'env.A' is given more than once",
            "m.yaml:8:8: unit 'b': 'depends_on' has an empty entry",
        ]
    );
}
