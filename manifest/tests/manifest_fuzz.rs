//! Bounded fuzzing of manifest parsing, YAML and JSON, with proptest.
//!
//! - Arbitrary bytes, strings and soups of YAML tokens never panic: each is read, or
//!   refused with well-formed errors.
//! - Mutations of the examples' manifests (byte flips, cuts, repeated lines, anchors,
//!   aliases and merge keys, deep nesting, huge numbers, odd Unicode) never panic, and
//!   every error about a YAML manifest has a line (its unit's id is checked too).
//! - Generated manifests (random units, dependencies with cycles and unknown ids,
//!   resources, uses and weights) get the verdict of an independent oracle.
//!
//! Each input is parsed on a thread of its own under a deadline, so that a hang fails
//! naming its input instead of stalling the run. Case counts keep the whole file to a
//! few seconds in a debug build; `REGATTA_FUZZ_SCALE=20` runs twenty times as many.
//!
//! Regressions stay: proptest saves each failing case it finds (its seed, and the shrunk
//! input as a comment) in `tests/proptest-regressions/manifest_fuzz/<property>.txt`, and
//! replays those cases first on every later run; commit those files. Inputs that once
//! crashed, hung or blew up, and parser edge cases, are kept as plain files in
//! `tests/fuzz-regressions/`, read by `saved_inputs_are_read_or_refused_quickly`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::LazyLock;
use std::thread;
use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::FileFailurePersistence;
use regatta_manifest::{Dag, Manifest, ManifestErrorKind, ManifestErrors};

/// Longest a single input may take to read in a debug build. The slowest known input, a
/// merge-key bomb that serde-saphyr's node budget refuses, takes about 8 s unoptimised.
const INPUT_DEADLINE: Duration = Duration::from_secs(20);

/// The proptest configuration of one property: `cases` new cases (times
/// `REGATTA_FUZZ_SCALE`), after replaying the failures saved for `$property`.
macro_rules! fuzz_config {
    ($cases:expr, $property:literal) => {
        ProptestConfig {
            cases: scaled($cases),
            // `Direct`, with an absolute path. The default finds no `lib.rs` above
            // `tests/` and falls back to `WithSource`, which saves against the
            // workspace-relative `file!()` from the crate's folder (into
            // `manifest/manifest/tests/`) but loads from the right place.
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/proptest-regressions/manifest_fuzz/",
                $property,
                ".txt"
            )))),
            // A hang shrinks slowly (each attempt waits for the deadline): report it.
            max_shrink_time: 120_000,
            ..ProptestConfig::default()
        }
    };
}

fn scaled(cases: u32) -> u32 {
    let scale = std::env::var("REGATTA_FUZZ_SCALE")
        .ok()
        .and_then(|scale| scale.parse::<u32>().ok())
        .unwrap_or(1);
    cases.saturating_mul(scale.max(1))
}

/// Parses `text` as `source` (whose extension picks the format) on a thread of its own;
/// panics naming the input if that takes longer than [`INPUT_DEADLINE`], and passes on
/// the parser's own panic, so that proptest shrinks it.
fn parse_bounded(text: &str, source: &str, base_dir: &Path) -> Result<Manifest, ManifestErrors> {
    let (sender, receiver) = mpsc::channel();
    let (owned_text, owned_source, owned_dir) =
        (text.to_owned(), source.to_owned(), base_dir.to_path_buf());
    let parser = thread::Builder::new()
        .name("manifest-parse".into())
        .spawn(move || {
            let outcome = Manifest::parse(&owned_text, &owned_source, &owned_dir);
            // The receiver is gone only after a timeout, which already failed the test.
            let _ = sender.send(outcome);
        })
        .expect("a thread to parse on");
    match receiver.recv_timeout(INPUT_DEADLINE) {
        Ok(outcome) => {
            let _ = parser.join();
            outcome
        }
        Err(RecvTimeoutError::Timeout) => panic!(
            "reading {source} ({} bytes) took longer than {INPUT_DEADLINE:?}; it starts {:?}",
            text.len(),
            text.chars().take(2_000).collect::<String>()
        ),
        Err(RecvTimeoutError::Disconnected) => match parser.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("the parsing thread ended without an outcome"),
        },
    }
}

/// Checks what the error type guarantees for every refused input: at least one error;
/// a source; a line and a column together, the line 1-based (serde_json puts the end of
/// a line at column 0); and for the kinds that name a unit by its id (never empty
/// there), that id as the error's unit.
fn assert_well_formed(errors: &ManifestErrors) {
    assert!(!errors.is_empty(), "refused without a reason");
    for error in errors {
        let shown = error.to_string();
        assert!(!error.source.is_empty(), "no source: {shown}");
        assert_eq!(
            error.line.is_some(),
            error.column.is_some(),
            "a line without a column or the reverse: {shown}"
        );
        assert!(error.line.is_none_or(|line| line >= 1), "line 0: {shown}");
        assert!(!error.kind.code().is_empty());
        assert!(!error.kind.to_string().is_empty(), "no message: {shown}");
        match &error.kind {
            ManifestErrorKind::Cycle { path, .. } => {
                assert!(path.len() >= 3, "a cycle of one unit: {shown}");
                assert_eq!(path.first(), path.last(), "an open cycle: {shown}");
                assert_eq!(error.unit.as_ref(), path.first(), "{shown}");
            }
            ManifestErrorKind::DuplicateUnitId { id, .. } | ManifestErrorKind::InvalidId { id } => {
                assert_eq!(error.unit.as_ref(), Some(id), "{shown}");
            }
            ManifestErrorKind::MissingId => {
                assert_eq!(error.unit, None, "{shown}");
            }
            _ => {}
        }
    }
    serde_json::to_string(errors).expect("errors serialise for `validate --json`");
}

/// Checks what an accepted manifest guarantees: it passes every rule again (as one
/// received by the HTTP API would), builds a graph, and reads back equal from its JSON.
fn assert_sound(manifest: &Manifest, base_dir: &Path) {
    if let Err(errors) = manifest.check() {
        panic!("accepted, but `check` refuses it:\n{errors}");
    }
    if let Err(errors) = Dag::build(manifest) {
        panic!("accepted, but its graph is refused:\n{errors}");
    }
    let json = serde_json::to_string(manifest).expect("a manifest serialises");
    match parse_bounded(&json, "round-trip.json", base_dir) {
        Ok(again) => assert_eq!(&again, manifest, "the JSON round trip changed it: {json}"),
        Err(errors) => panic!("its own JSON is refused:\n{errors}\n{json}"),
    }
}

/// Checks the outcome of reading any input.
fn assert_read_or_refused(outcome: &Result<Manifest, ManifestErrors>, base_dir: &Path) {
    match outcome {
        Ok(manifest) => assert_sound(manifest, base_dir),
        Err(errors) => assert_well_formed(errors),
    }
}

/// Names that pick the format: by extension, or guessed from the first character.
const SOURCES: &[&str] = &["m.yaml", "m.json", "m"];

/// Bytes that mean something to YAML, JSON or the manifest's rules.
#[rustfmt::skip]
const TOKENS: &[&str] = &[
    // Structure.
    ":", ": ", "- ", "\n", "\n  ", "\n    ", "\t", "\r\n", "[", "]", "{", "}", ",", "'", "\"",
    "#", "? ", "|", ">-", "---\n", "...\n", "%YAML 1.2\n",
    // Anchors, aliases, merge keys and tags.
    "&a ", "*a", "&b ", "*b", "<<: *a", "<<: [*a, *b]", "<<: ", "!!str ", "!!binary ", "!!map ",
    "!!int ", "!x ",
    // Scalars: nulls, numbers past every type, durations, paths, names.
    "~", "null", "true", "0", "-1", "0x1f", "0o17", "1_000", "4294967296",
    "18446744073709551616", "-9223372036854775809", "1e999", "-.inf", ".nan", "0s", "90s",
    "1h30m", "-5m", "1ns", "99999999999999999999h", "..", "../", "/", "a//b", "file:", "x-",
    // Escapes and odd Unicode.
    "\\u0000", "\\ud800", "\u{feff}", "\u{0}", "é", "\u{202e}", "\u{10ffff}", "𝔘",
    // The manifest's own keys.
    "batch: ", "workdir: ", "playbook: ", "concurrency: ", "calibration: ", "calibration_auto: ",
    "retries: ", "timeout: ", "resources: ", "units:\n", "- id: ", "id: ", "depends_on: ",
    "uses: ", "touches: ", "inputs: ", "outputs: ", "verify: ", "env: ", "priority: ", "run: ",
    "gates:\n", "name: ", "fix: ", "repairs: ", "required: ",
    // The `git:` block's keys, and values at its rules' edges.
    "git:\n", "git: ", "repo: ", "base: ", "target: ", "integration: ", "integration_timeout: ",
    "window: ", "merge: ", "strict_writes: ", "manual", "auto", "main", "a..b", "x.lock",
    "git@h:r", "ssh://h/r", "ftp://h/r", "0123456789abcdef0123456789abcdef01234567",
];

proptest! {
    #![proptest_config(fuzz_config!(160, "arbitrary_bytes"))]

    /// Any bytes (made text the way a file reader would) are read or refused cleanly.
    #[test]
    fn arbitrary_bytes_are_read_or_refused(
        bytes in vec(any::<u8>(), 0..1_024),
        source in select(SOURCES),
    ) {
        let text = String::from_utf8_lossy(&bytes);
        let base = tempfile::tempdir().expect("a scratch folder");
        let outcome = parse_bounded(&text, source, base.path());
        assert_read_or_refused(&outcome, base.path());
    }
}

proptest! {
    #![proptest_config(fuzz_config!(160, "arbitrary_text"))]

    /// Any Unicode text is read or refused cleanly.
    #[test]
    fn arbitrary_text_is_read_or_refused(text in ".{0,400}", source in select(SOURCES)) {
        let base = tempfile::tempdir().expect("a scratch folder");
        let outcome = parse_bounded(&text, source, base.path());
        assert_read_or_refused(&outcome, base.path());
    }
}

proptest! {
    #![proptest_config(fuzz_config!(320, "token_soup"))]

    /// Text made of YAML's and the manifest's own tokens, which reaches far deeper into
    /// the reader than random bytes do, is read or refused cleanly.
    #[test]
    fn token_soup_is_read_or_refused(
        tokens in vec(select(TOKENS), 0..96),
        source in select(SOURCES),
    ) {
        let text = tokens.concat();
        let base = tempfile::tempdir().expect("a scratch folder");
        let outcome = parse_bounded(&text, source, base.path());
        assert_read_or_refused(&outcome, base.path());
    }
}

// ---------------------------------------------------------------------------
// Mutations of the examples' manifests.
// ---------------------------------------------------------------------------

/// A manifest to mutate, read as it would be from its own folder.
#[derive(Debug)]
struct Seed {
    /// The name given to the parser; its extension picks the format.
    source: String,
    text: String,
    /// The example's folder, holding its playbook file and scripts.
    base_dir: PathBuf,
}

impl Seed {
    fn is_json(&self) -> bool {
        self.source.ends_with(".json")
    }
}

/// A manifest in git mode, with every key of its `git:` block.
const GIT_SEED: &str = "\
batch: git-seed
git:
  repo: ../shop.git
  base: main
  target: release/1.x
  integration: make test
  integration_timeout: 30m
  window: 4
  merge: manual
  strict_writes: true
playbook: {run: ./go.sh}
units:
  - id: a
    touches: [src/a.rs]
  - id: b
    depends_on: [a]
    outputs: [docs/b.md]
";

/// Every example manifest (valid and invalid), and the valid ones again as JSON.
static SEEDS: LazyLock<Vec<Seed>> = LazyLock::new(|| {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seeds = Vec::new();
    for folder in ["hello", "gates", "demo", "invalid"] {
        let base_dir = examples.join(folder);
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&base_dir)
            .expect("the examples folder")
            .map(|entry| entry.expect("an examples entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
            .filter(|path| folder == "invalid" || path.ends_with("manifest.yaml"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).expect("an example manifest");
            let source = path.display().to_string();
            if let Ok(manifest) = Manifest::parse(&text, &source, &base_dir) {
                seeds.push(Seed {
                    source: base_dir.join("manifest.json").display().to_string(),
                    text: serde_json::to_string_pretty(&manifest).expect("JSON of a manifest"),
                    base_dir: base_dir.clone(),
                });
            }
            seeds.push(Seed {
                source,
                text,
                base_dir: base_dir.clone(),
            });
        }
    }
    // Git mode, which no example outside the git crate's own shows.
    let base_dir = examples.join("hello");
    let manifest = Manifest::parse(GIT_SEED, "git.yaml", &base_dir).expect("the git seed is valid");
    seeds.push(Seed {
        source: base_dir.join("git.json").display().to_string(),
        text: serde_json::to_string_pretty(&manifest).expect("JSON of a manifest"),
        base_dir: base_dir.clone(),
    });
    seeds.push(Seed {
        source: base_dir.join("git.yaml").display().to_string(),
        text: GIT_SEED.to_owned(),
        base_dir,
    });
    assert!(
        seeds.len() >= 30,
        "the examples are the seeds: {}",
        seeds.len()
    );
    seeds
});

/// One edit of a text; positions are proportions of its length, so that they shrink.
#[derive(Debug, Clone)]
enum Mutation {
    FlipByte(Index, u8),
    InsertToken(Index, &'static str),
    InsertChar(Index, char),
    Delete(Index, usize),
    Truncate(Index),
    /// Copies a line before another one: repeated keys, units, list items.
    DuplicateLine(Index, Index),
    /// Opens `depth` flow collections, block sequences or mappings, never closed.
    Nest(Index, &'static str, usize),
    /// Replaces a number with a huge one.
    HugeNumber(Index, &'static str),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::FlipByte(at, byte)),
        (any::<Index>(), select(TOKENS)).prop_map(|(at, token)| Mutation::InsertToken(at, token)),
        (any::<Index>(), any::<char>()).prop_map(|(at, c)| Mutation::InsertChar(at, c)),
        (any::<Index>(), 1usize..48).prop_map(|(at, len)| Mutation::Delete(at, len)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<Index>()).prop_map(|(from, to)| Mutation::DuplicateLine(from, to)),
        (
            any::<Index>(),
            select(&["[", "{", "- ", "[{a: ", "{a: "][..]),
            1usize..400
        )
            .prop_map(|(at, opener, depth)| Mutation::Nest(at, opener, depth)),
        (
            any::<Index>(),
            select(
                &[
                    "4294967296",
                    "18446744073709551616",
                    "-9223372036854775809",
                    "340282366920938463463374607431768211456",
                    "1e308",
                    "1e999",
                    "0.000000000000000000000000000001",
                    "99999999999999999999999999999999999999999999999999999999999999999999",
                ][..]
            )
        )
            .prop_map(|(at, number)| Mutation::HugeNumber(at, number)),
    ]
}

/// Returns the byte offset nearest `at` (as a proportion) that is a char boundary.
fn boundary(text: &str, at: &Index) -> usize {
    let mut offset = at.index(text.len() + 1);
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let mut text = text.to_owned();
    match mutation {
        Mutation::FlipByte(at, byte) => {
            let mut bytes = text.into_bytes();
            if !bytes.is_empty() {
                let at = at.index(bytes.len());
                bytes[at] ^= byte | 1;
            }
            // What a file reader makes of invalid UTF-8.
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        Mutation::InsertToken(at, token) => text.insert_str(boundary(&text, at), token),
        Mutation::InsertChar(at, c) => text.insert(boundary(&text, at), *c),
        Mutation::Delete(at, len) => {
            let start = boundary(&text, at);
            let mut end = (start + len).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            text.replace_range(start..end, "");
        }
        Mutation::Truncate(at) => text.truncate(boundary(&text, at)),
        Mutation::DuplicateLine(from, to) => {
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            if !lines.is_empty() {
                let copied = lines[from.index(lines.len())].to_owned();
                let at = to.index(lines.len() + 1);
                let mut edited: String = lines[..at].concat();
                edited.push_str(&copied);
                if !copied.ends_with('\n') {
                    edited.push('\n');
                }
                edited.push_str(&lines[at..].concat());
                text = edited;
            }
        }
        Mutation::Nest(at, opener, depth) => {
            text.insert_str(boundary(&text, at), &opener.repeat(*depth));
        }
        Mutation::HugeNumber(at, number) => {
            let digits: Vec<usize> = text
                .char_indices()
                .filter(|(_, c)| c.is_ascii_digit())
                .map(|(offset, _)| offset)
                .collect();
            if digits.is_empty() {
                text.insert_str(boundary(&text, at), number);
            } else {
                let start = digits[at.index(digits.len())];
                let end = text[start..]
                    .find(|c: char| !c.is_ascii_digit())
                    .map_or(text.len(), |length| start + length);
                text.replace_range(start..end, number);
            }
        }
    }
    text
}

/// Tells whether an error may go without a line: only one about the document as a
/// whole, which has no key to point at. An empty document, or one that is not a mapping
/// (reported without its position, though a syntax error after it has one); or an empty
/// mapping, whose missing fields have nowhere to be (and then no error has a line).
fn may_lack_a_line(kind: &ManifestErrorKind, any_error_has_a_line: bool) -> bool {
    match kind {
        ManifestErrorKind::Syntax { message } => message == "the manifest is empty",
        ManifestErrorKind::WrongType { field, .. } => field == "manifest",
        ManifestErrorKind::MissingField { field } => *field == "batch" && !any_error_has_a_line,
        ManifestErrorKind::MissingPlaybook | ManifestErrorKind::NoUnits => !any_error_has_a_line,
        _ => false,
    }
}

proptest! {
    #![proptest_config(fuzz_config!(600, "mutated_examples"))]

    /// Mutated example manifests are read or refused cleanly, and every error about a
    /// YAML manifest says where it is.
    #[test]
    fn mutated_examples_are_read_or_refused_with_locations(
        seed in any::<Index>(),
        mutations in vec(mutation(), 1..6),
    ) {
        let seed = seed.get(&SEEDS);
        let text = mutations.iter().fold(seed.text.clone(), |text, m| apply(&text, m));
        let outcome = parse_bounded(&text, &seed.source, &seed.base_dir);
        assert_read_or_refused(&outcome, &seed.base_dir);
        // A YAML manifest is read with positions on, and a problem with no place of its
        // own takes its enclosing place's, up to the first key of the document: so every
        // error has a line, unless the document has no key at all.
        // JSON has no positions of its own: they come from a second reading as YAML,
        // trusted only when it sees the same problems, so nothing is promised there.
        if let (Err(errors), false) = (&outcome, seed.is_json()) {
            let any_line = errors.iter().any(|error| error.line.is_some());
            for error in errors {
                prop_assert!(
                    error.line.is_some() || may_lack_a_line(&error.kind, any_line),
                    "an error without a line: {}\nin:\n{}",
                    error,
                    text
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Generated manifests against an oracle.
// ---------------------------------------------------------------------------

/// Resource names the generator uses; only the first three can be declared.
const RESOURCE_NAMES: [&str; 5] = ["db", "api", "gpu", "tape", "fax"];
const DECLARABLE: usize = 3;

/// A unit as generated, before its text.
#[derive(Debug, Clone)]
struct GeneratedUnit {
    /// Takes the id of an earlier unit (by index) instead of its own.
    same_id_as: Option<usize>,
    /// Targets: below the unit count a unit's id, above it an id nobody has.
    depends_on: Vec<usize>,
    /// (index into [`RESOURCE_NAMES`], weight).
    uses: Vec<(usize, u32)>,
    /// Spells `uses` as a list of names (weight 1 each) rather than a mapping.
    uses_as_list: bool,
    priority: i32,
}

#[derive(Debug, Clone)]
struct Generated {
    units: Vec<GeneratedUnit>,
    /// Capacities of the declared resources, `None` for undeclared.
    capacities: Vec<Option<u32>>,
}

impl Generated {
    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::with_capacity(self.units.len());
        for (at, unit) in self.units.iter().enumerate() {
            let id = match unit.same_id_as {
                Some(earlier) if earlier < at => ids[earlier].clone(),
                _ => format!("u{at}"),
            };
            ids.push(id);
        }
        ids
    }

    fn dependency_ids(&self, unit: &GeneratedUnit, ids: &[String]) -> Vec<String> {
        unit.depends_on
            .iter()
            .map(|target| match ids.get(*target) {
                Some(id) => id.clone(),
                None => format!("ghost{}", target - ids.len()),
            })
            .collect()
    }

    /// The entries of a unit's `uses` as written: (name, weight), weight 1 for a list.
    fn uses(&self, unit: &GeneratedUnit) -> Vec<(&'static str, u32)> {
        unit.uses
            .iter()
            .map(|(name, weight)| {
                let weight = if unit.uses_as_list { 1 } else { *weight };
                (RESOURCE_NAMES[*name], weight)
            })
            .collect()
    }

    fn declared(&self) -> Vec<(&'static str, u32)> {
        self.capacities
            .iter()
            .enumerate()
            .filter_map(|(at, capacity)| capacity.map(|capacity| (RESOURCE_NAMES[at], capacity)))
            .collect()
    }

    fn to_yaml(&self) -> String {
        let ids = self.ids();
        let mut text = String::from("batch: generated\nplaybook: {run: ./go.sh}\n");
        let declared = self.declared();
        if !declared.is_empty() {
            text.push_str("resources:\n");
            for (name, capacity) in declared {
                text.push_str(&format!("  {name}: {capacity}\n"));
            }
        }
        text.push_str("units:\n");
        for (unit, id) in self.units.iter().zip(&ids) {
            text.push_str(&format!("  - id: {id}\n"));
            let dependencies = self.dependency_ids(unit, &ids);
            if !dependencies.is_empty() {
                text.push_str(&format!("    depends_on: [{}]\n", dependencies.join(", ")));
            }
            let uses = self.uses(unit);
            if !uses.is_empty() {
                let entries: Vec<String> = if unit.uses_as_list {
                    uses.iter().map(|(name, _)| (*name).to_owned()).collect()
                } else {
                    uses.iter()
                        .map(|(name, weight)| format!("{name}: {weight}"))
                        .collect()
                };
                let (open, close) = if unit.uses_as_list {
                    ("[", "]")
                } else {
                    ("{", "}")
                };
                text.push_str(&format!("    uses: {open}{}{close}\n", entries.join(", ")));
            }
            if unit.priority != 0 {
                text.push_str(&format!("    priority: {}\n", unit.priority));
            }
        }
        text
    }

    /// Writes the JSON by hand: an object may repeat a name (in `uses`), as YAML may,
    /// which a `serde_json::Value` cannot hold. Every name is plain ASCII.
    fn to_json(&self) -> String {
        let ids = self.ids();
        let quoted = |names: &[String]| -> String {
            let quoted: Vec<String> = names.iter().map(|name| format!("\"{name}\"")).collect();
            quoted.join(", ")
        };
        let declared: Vec<String> = self
            .declared()
            .iter()
            .map(|(name, capacity)| format!("\"{name}\": {capacity}"))
            .collect();
        let mut units = Vec::new();
        for (unit, id) in self.units.iter().zip(&ids) {
            let uses = self.uses(unit);
            let uses = if unit.uses_as_list {
                let names: Vec<String> = uses.iter().map(|(name, _)| (*name).to_owned()).collect();
                format!("[{}]", quoted(&names))
            } else {
                let entries: Vec<String> = uses
                    .iter()
                    .map(|(name, weight)| format!("\"{name}\": {weight}"))
                    .collect();
                format!("{{{}}}", entries.join(", "))
            };
            units.push(format!(
                "    {{\"id\": \"{id}\", \"depends_on\": [{}], \"uses\": {uses}, \"priority\": {}}}",
                quoted(&self.dependency_ids(unit, &ids)),
                unit.priority
            ));
        }
        format!(
            "{{\n  \"batch\": \"generated\",\n  \"playbook\": {{\"run\": \"./go.sh\"}},\n  \
             \"resources\": {{{}}},\n  \"units\": [\n{}\n  ]\n}}\n",
            declared.join(", "),
            units.join(",\n")
        )
    }
}

fn generated() -> impl Strategy<Value = Generated> {
    (1usize..=8).prop_flat_map(|count| {
        let target = prop_oneof![9 => 0..count, 1 => count..count + 2];
        let weight = prop_oneof![8 => 1u32..3, 1 => Just(0u32), 1 => 3u32..6];
        let resource = prop_oneof![9 => 0..DECLARABLE, 1 => DECLARABLE..RESOURCE_NAMES.len()];
        let unit = (
            proptest::option::weighted(0.05, 0..count),
            vec(target, 0..3),
            vec((resource, weight), 0..3),
            any::<bool>(),
            prop_oneof![Just(0), any::<i32>()],
        )
            .prop_map(|(same_id_as, depends_on, uses, uses_as_list, priority)| {
                GeneratedUnit {
                    same_id_as,
                    depends_on,
                    uses,
                    uses_as_list,
                    priority,
                }
            });
        let capacity = prop_oneof![14 => 1u32..5, 1 => Just(0u32)];
        (
            vec(unit, count),
            vec(proptest::option::weighted(0.9, capacity), DECLARABLE),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(move |(mut units, mut capacities, acyclic, tidy)| {
                if acyclic {
                    // Only dependencies on earlier units (or on nobody): no cycles.
                    for (at, unit) in units.iter_mut().enumerate() {
                        unit.depends_on
                            .retain(|target| *target < at || *target >= count);
                    }
                }
                if tidy {
                    // No problem but cycles, so that valid manifests (to check round
                    // trips) and manifests whose only problem is a cycle are common.
                    for capacity in &mut capacities {
                        *capacity = Some(capacity.unwrap_or(2).max(1));
                    }
                    for (at, unit) in units.iter_mut().enumerate() {
                        unit.same_id_as = None;
                        let mut seen = Vec::new();
                        unit.depends_on.retain(|target| {
                            let keep = *target < count && *target != at && !seen.contains(target);
                            seen.push(*target);
                            keep
                        });
                        let mut seen = Vec::new();
                        unit.uses.retain(|(name, _)| {
                            let keep = *name < DECLARABLE && !seen.contains(name);
                            seen.push(*name);
                            keep
                        });
                        for (name, weight) in &mut unit.uses {
                            let capacity = capacities[*name].unwrap_or(1);
                            *weight = (*weight).clamp(1, capacity);
                        }
                    }
                }
                Generated { units, capacities }
            })
    })
}

/// What the oracle expects of a generated manifest.
#[derive(Debug, Default)]
struct Expected {
    /// (code, unit) of every problem but cycles, sorted.
    problems: Vec<(&'static str, Option<String>)>,
    /// The dependency graph's strongly connected components of more than one unit, each
    /// as sorted unit indices; self-dependencies are not edges.
    knots: Vec<Vec<usize>>,
    /// Edges as (unit index, index of the unit it depends on).
    edges: Vec<(usize, usize)>,
}

/// Works out, independently of the parser, what is wrong with a generated manifest.
fn oracle(generated: &Generated) -> Expected {
    let ids = generated.ids();
    let mut expected = Expected::default();
    for (_, capacity) in generated.declared() {
        if capacity == 0 {
            expected.problems.push(("invalid-capacity", None));
        }
    }
    // The first unit to hold an id is the one dependencies reach.
    let mut first_with: HashMap<&str, usize> = HashMap::new();
    for (at, id) in ids.iter().enumerate() {
        if first_with.contains_key(id.as_str()) {
            expected.problems.push(("duplicate-id", Some(id.clone())));
        } else {
            first_with.insert(id, at);
        }
    }
    let capacities: HashMap<&str, u32> = generated.declared().into_iter().collect();
    for (at, (unit, id)) in generated.units.iter().zip(&ids).enumerate() {
        let dependencies = generated.dependency_ids(unit, &ids);
        for (position, dependency) in dependencies.iter().enumerate() {
            let code = if dependency == id {
                "self-dependency"
            } else if dependencies[..position].contains(dependency) {
                "duplicate-dependency"
            } else if let Some(target) = first_with.get(dependency.as_str()) {
                expected.edges.push((at, *target));
                continue;
            } else {
                "unknown-dependency"
            };
            expected.problems.push((code, Some(id.clone())));
        }
        let mut seen: Vec<&str> = Vec::new();
        for (name, weight) in generated.uses(unit) {
            let code = if seen.contains(&name) {
                "duplicate-resource-use"
            } else {
                seen.push(name);
                match capacities.get(name) {
                    None => "unknown-resource",
                    Some(_) if weight == 0 => "zero-weight",
                    Some(&capacity) if capacity > 0 && weight > capacity => {
                        "weight-exceeds-capacity"
                    }
                    Some(_) => continue,
                }
            };
            expected.problems.push((code, Some(id.clone())));
        }
    }
    expected.problems.sort();
    expected.knots = knots(ids.len(), &expected.edges);
    expected
}

/// Finds the strongly connected components of more than one node by plain reachability
/// (the graphs are tiny): two nodes share one when each reaches the other.
fn knots(count: usize, edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut reaches = vec![vec![false; count]; count];
    for (from, to) in edges {
        reaches[*from][*to] = true;
    }
    for through in 0..count {
        let onwards = reaches[through].clone();
        for row in &mut reaches {
            if row[through] {
                for (reached, step) in row.iter_mut().zip(&onwards) {
                    *reached |= *step;
                }
            }
        }
    }
    let mut placed = vec![false; count];
    let mut knots = Vec::new();
    for start in 0..count {
        if placed[start] {
            continue;
        }
        let members: Vec<usize> = (0..count)
            .filter(|other| *other == start || (reaches[start][*other] && reaches[*other][start]))
            .collect();
        for member in &members {
            placed[*member] = true;
        }
        if members.len() > 1 {
            knots.push(members);
        }
    }
    knots
}

/// Compares the parser's verdict on a generated manifest with the oracle's.
fn assert_agrees(
    generated: &Generated,
    outcome: &Result<Manifest, ManifestErrors>,
    text: &str,
    base_dir: &Path,
    positions_expected: bool,
) {
    let expected = oracle(generated);
    let ids = generated.ids();
    let errors = match outcome {
        Ok(manifest) => {
            assert!(
                expected.problems.is_empty() && expected.knots.is_empty(),
                "accepted, but the oracle expects {expected:?}\n{text}"
            );
            assert_eq!(manifest.units.len(), generated.units.len());
            assert_sound(manifest, base_dir);
            let dag = Dag::build(manifest).expect("the graph of a valid manifest");
            for (unit, dependency) in &expected.edges {
                assert!(
                    dag.level_of(*dependency) < dag.level_of(*unit),
                    "unit {unit} does not come after its dependency {dependency}\n{text}"
                );
            }
            return;
        }
        Err(errors) => errors,
    };
    assert_well_formed(errors);
    let mut found: Vec<(&'static str, Option<String>)> = errors
        .iter()
        .filter(|error| error.kind.code() != "cycle")
        .map(|error| (error.kind.code(), error.unit.clone()))
        .collect();
    found.sort();
    assert_eq!(
        found, expected.problems,
        "problems other than cycles\n{errors}\n{text}"
    );
    let cycles: Vec<&Vec<String>> = errors
        .iter()
        .filter_map(|error| match &error.kind {
            ManifestErrorKind::Cycle { path, .. } => Some(path),
            _ => None,
        })
        .collect();
    assert_eq!(
        cycles.len(),
        expected.knots.len(),
        "one cycle reported per knot {:?}\n{errors}\n{text}",
        expected.knots
    );
    for path in cycles {
        // Each step is an edge of the graph (a unit depends on the next one), and the
        // whole cycle lies in one knot.
        let mut knot_of_cycle = None;
        for step in path.windows(2) {
            let edge = expected
                .edges
                .iter()
                .find(|(unit, dependency)| ids[*unit] == step[0] && ids[*dependency] == step[1]);
            let Some((unit, _)) = edge else {
                panic!("{step:?} is not a dependency, in cycle {path:?}\n{errors}\n{text}");
            };
            let knot = expected.knots.iter().position(|knot| knot.contains(unit));
            assert!(knot.is_some(), "{path:?} runs outside every knot\n{text}");
            assert!(
                knot_of_cycle.is_none() || knot_of_cycle == knot,
                "{path:?} spans two knots\n{text}"
            );
            knot_of_cycle = knot;
        }
    }
    if positions_expected {
        for error in errors {
            assert!(error.line.is_some(), "no line: {error}\n{text}");
        }
    }
}

proptest! {
    #![proptest_config(fuzz_config!(300, "generated_manifests"))]

    /// Generated manifests, in YAML and in JSON, get the oracle's verdict: cycles are
    /// reported iff the graph has one (once per knot), and unknown and repeated
    /// dependencies, self-dependencies, duplicate ids and every resource problem are
    /// reported on their unit; a valid one reads back equal from its own JSON.
    #[test]
    fn generated_manifests_agree_with_the_oracle(generated in generated()) {
        let base_dir = Path::new("/srv/generated");
        let yaml = generated.to_yaml();
        let outcome = parse_bounded(&yaml, "generated.yaml", base_dir);
        assert_agrees(&generated, &outcome, &yaml, base_dir, true);
        let json = generated.to_json();
        let outcome = parse_bounded(&json, "generated.json", base_dir);
        assert_agrees(&generated, &outcome, &json, base_dir, false);
    }
}

#[test]
fn the_oracle_sees_what_a_reader_sees() {
    // Guards the oracle itself: a two-unit cycle, an unknown id, a self-dependency.
    let generated = Generated {
        units: vec![
            GeneratedUnit {
                same_id_as: None,
                depends_on: vec![1, 0, 3],
                uses: vec![(0, 3), (3, 1)],
                uses_as_list: false,
                priority: 0,
            },
            GeneratedUnit {
                same_id_as: None,
                depends_on: vec![0],
                uses: vec![],
                uses_as_list: true,
                priority: 0,
            },
        ],
        capacities: vec![Some(2), None, Some(0)],
    };
    let expected = oracle(&generated);
    let u0 = Some("u0".to_owned());
    assert_eq!(
        expected.problems,
        vec![
            ("invalid-capacity", None),
            ("self-dependency", u0.clone()),
            ("unknown-dependency", u0.clone()),
            ("unknown-resource", u0.clone()),
            ("weight-exceeds-capacity", u0),
        ]
    );
    assert_eq!(expected.knots, vec![vec![0, 1]]);
    assert!(generated
        .to_yaml()
        .contains("    depends_on: [u1, u0, ghost1]\n"));
    let json: serde_json::Value =
        serde_json::from_str(&generated.to_json()).expect("generated JSON is JSON");
    assert_eq!(
        json["units"][0]["uses"],
        serde_json::json!({"db": 3, "tape": 1})
    );
}

// ---------------------------------------------------------------------------
// Saved inputs.
// ---------------------------------------------------------------------------

/// Longest a saved input may take, in a debug build; they are refused or read in well
/// under a second when optimised.
const SAVED_INPUT_DEADLINE: Duration = Duration::from_secs(15);

/// Reads every file of `tests/fuzz-regressions/` (`.yaml`/`.yml` as YAML, `.json` as
/// JSON), from that folder: none may panic, hang or take long, and each is read or
/// refused cleanly. A YAML file's `# expect: <code>` lines name problems it must be
/// refused with (`# expect: valid`: it must be read).
#[test]
fn saved_inputs_are_read_or_refused_quickly() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&folder)
        .expect("tests/fuzz-regressions")
        .map(|entry| entry.expect("a saved input").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    paths.sort();
    assert!(paths.len() >= 10, "the saved inputs are missing: {paths:?}");
    let mut unmet = Vec::new();
    for path in paths {
        let bytes = std::fs::read(&path).expect("a saved input");
        let text = String::from_utf8_lossy(&bytes);
        let source = path.display().to_string();
        let started = Instant::now();
        let outcome = parse_bounded(&text, &source, &folder);
        let took = started.elapsed();
        assert!(
            took < SAVED_INPUT_DEADLINE,
            "{source} took {took:?} to read"
        );
        assert_read_or_refused(&outcome, &folder);
        let expected: Vec<&str> = text
            .trim_start_matches('\u{feff}')
            .lines()
            .map_while(|line| line.trim_end().strip_prefix("# expect: "))
            .collect();
        match &outcome {
            Ok(_) if !expected.is_empty() && expected != ["valid"] => {
                unmet.push(format!("{source} was read, but it expects {expected:?}"));
            }
            Ok(_) => {}
            Err(errors) => {
                let codes: Vec<&str> = errors.iter().map(|error| error.kind.code()).collect();
                if let Some(code) = expected.iter().find(|code| !codes.contains(code)) {
                    unmet.push(format!(
                        "{source} is refused with {codes:?}, without {code}:\n{errors}"
                    ));
                }
            }
        }
    }
    assert!(unmet.is_empty(), "{}", unmet.join("\n\n"));
}
