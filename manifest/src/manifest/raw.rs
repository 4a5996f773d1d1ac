//! The serde layer: reads a manifest's (or a playbook file's) YAML or JSON text into the
//! domain types, collecting problems instead of stopping at the first one.
//!
//! Derived `Deserialize` with `deny_unknown_fields` stops at the first unknown field,
//! and knows neither where a value stands in the manifest (which unit, which field) nor
//! how to say where a fatal problem struck. So each mapping is walked by
//! [`Reader::fields`]: an unknown or repeated field becomes a [`Problem`] and the reader
//! skips its value. Every value is read by one generic visitor ([`lenient`]) that takes
//! whatever shape arrives and reports a wrong one; a scalar of the wrong type
//! (`retries: two`) is read as a [`scalar::Scalar`] and reported. Only broken syntax, or
//! a string field holding a list or a mapping, stops the reading.
//!
//! A [`Reader`] either records no positions (the fast path, for big valid manifests) or
//! records the positions of every place, or of wanted places only (see
//! [`super::position`]).

mod agent;
mod git;
mod lenient;
mod playbook;
mod reader;
mod scalar;
mod structure;
mod values;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::de::DeserializeSeed;

use super::position::{Locator, Node, Position, PositionTable, Problem};
use super::{BatchBudget, Playbook, Unit};
pub(crate) use git::{GitBlock, GitDraft};
use lenient::Lenient;
use playbook::PlaybookValue;
use reader::Reader;
use structure::TopValue;

/// The syntax of a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Yaml,
    Json,
}

/// Which positions a reading records.
#[derive(Clone, Copy)]
pub(crate) enum Wanted<'a> {
    /// None: the fast reading of a big or JSON manifest.
    Nothing,
    /// Every place's: the reading of a small YAML text.
    All,
    /// Only these places': the second reading, after problems were found. It keeps no
    /// units, only their ids, so that it does not double the memory of a big manifest.
    Some(&'a HashSet<Locator>),
}

/// Facts the reading learnt that the semantic rules need so as not to repeat a problem.
#[derive(Debug, Default)]
pub(crate) struct Notes {
    /// Resources whose capacity was already reported as missing or malformed.
    pub reported_capacities: HashSet<String>,
    /// Units that were not mappings, already reported; the rules skip them.
    pub broken_units: HashSet<usize>,
}

/// How the manifest names its playbook.
#[derive(Debug, Default)]
pub(crate) enum PlaybookSpec {
    #[default]
    Missing,
    /// Already reported as malformed.
    Invalid,
    Path(String),
    /// Boxed: a playbook (with its budget and prices) dwarfs the other variants.
    Inline(Box<Playbook>),
}

/// A manifest as read, before defaults and path resolution.
#[derive(Debug, Default)]
pub(crate) struct Draft {
    pub batch: Option<String>,
    pub workdir: Option<String>,
    pub git: GitBlock,
    pub playbook: PlaybookSpec,
    pub concurrency: Option<u32>,
    pub calibration: Option<u32>,
    pub calibration_auto: Option<f64>,
    pub retries: Option<u32>,
    pub timeout: Option<Duration>,
    pub resources: BTreeMap<String, u32>,
    pub budget: Option<BatchBudget>,
    pub units: Vec<Unit>,
}

/// The outcome of reading one text.
pub(crate) struct Reading<T> {
    /// `None` when the reading stopped at a fatal problem (the last of `problems`).
    pub value: Option<T>,
    pub problems: Vec<Problem>,
    pub positions: PositionTable,
    pub notes: Notes,
    /// Unit ids by index, recorded when positions are on (also for a reading that stopped
    /// at a fatal problem, whose units are otherwise lost).
    pub unit_ids: Vec<String>,
}

impl<T> Reading<Option<T>> {
    /// Treats a value the reading refused (already reported) like a stopped reading.
    fn flatten(self) -> Reading<T> {
        Reading {
            value: self.value.flatten(),
            problems: self.problems,
            positions: self.positions,
            notes: self.notes,
            unit_ids: self.unit_ids,
        }
    }
}

/// Reads a manifest.
pub(crate) fn read_manifest(text: &str, format: Format, wanted: Wanted<'_>) -> Reading<Draft> {
    let reader = Reader::new(wanted);
    let outcome = drive(text, format, TopValue { reader: &reader }.seed());
    reader.finish(outcome, Node::Top).flatten()
}

/// Reads a playbook file.
pub(crate) fn read_playbook(text: &str, format: Format, wanted: Wanted<'_>) -> Reading<Playbook> {
    let reader = Reader::new(wanted);
    let playbook = PlaybookValue {
        reader: &reader,
        file: true,
    };
    let outcome = drive(text, format, playbook.seed()).map(|spec| match spec {
        PlaybookSpec::Inline(playbook) => Some(*playbook),
        _ => None,
    });
    reader.finish(outcome, Node::Playbook).flatten()
}

/// A problem that stopped the reading: broken syntax, or a value no lenient reading fits.
struct Fatal {
    message: String,
    position: Option<Position>,
}

fn drive<'de, S: DeserializeSeed<'de>>(
    text: &'de str,
    format: Format,
    seed: S,
) -> Result<S::Value, Fatal> {
    match format {
        Format::Yaml => serde_saphyr::with_deserializer_from_str_with_options(
            text,
            yaml_options(text.len()),
            |de| seed.deserialize(de),
        )
        .map_err(|error| fatal_from_yaml(&error)),
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let value = seed.deserialize(&mut de).map_err(|e| fatal_from_json(&e))?;
            de.end().map_err(|e| fatal_from_json(&e))?;
            Ok(value)
        }
    }
}

/// Sizes serde-saphyr's budget to the text: its defaults (250,000 nodes, 10,000 merge
/// keys, 50,000 aliases) refuse manifests beyond about 10,000 to 20,000 units. Limits
/// proportional to the input still stop alias and merge-key amplification: what a text
/// expands to stays within a constant factor of its length.
fn yaml_options(text_len: usize) -> serde_saphyr::Options {
    let defaults = serde_saphyr::Budget::default();
    let replay_defaults = serde_saphyr::options::AliasLimits::default();
    let scaled = text_len.saturating_mul(2).saturating_add(1_024);
    serde_saphyr::options! {
        with_snippet: false,
        // Comments carry nothing a manifest needs; not keeping them saves time.
        emit_comments: false,
        // Repeated keys reach the visitors, which report them with the rest.
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        budget: serde_saphyr::budget! {
            max_events: defaults.max_events.max(scaled),
            max_nodes: defaults.max_nodes.max(scaled),
            max_total_scalar_bytes: defaults.max_total_scalar_bytes.max(scaled),
            max_aliases: defaults.max_aliases.max(scaled),
            max_merge_keys: defaults.max_merge_keys.max(scaled),
            // One anchor merged into every unit (`x-defaults: &d`, then `<<: *d`) is what
            // `x-` keys are for; this heuristic refused it beyond 100 units (more than
            // 10 aliases per anchor). The limits above bound amplification anyway.
            enforce_alias_anchor_ratio: false,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: replay_defaults.max_total_replayed_events.max(scaled),
        },
    }
}

fn fatal_from_yaml(error: &serde_saphyr::Error) -> Fatal {
    let position = error.location().and_then(|l| Position::from_location(&l));
    let mut message = error.render_with_formatter(&serde_saphyr::UserMessageFormatter);
    if let Some(p) = position {
        strip_suffix(
            &mut message,
            &format!(" at line {}, column {}", p.line, p.column),
        );
    }
    Fatal {
        message: format!("invalid YAML: {message}"),
        position,
    }
}

fn fatal_from_json(error: &serde_json::Error) -> Fatal {
    let mut message = error.to_string();
    let position = u32::try_from(error.line())
        .ok()
        .zip(u32::try_from(error.column()).ok())
        .filter(|(line, _)| *line > 0)
        .map(|(line, column)| Position { line, column });
    strip_suffix(
        &mut message,
        &format!(" at line {} column {}", error.line(), error.column()),
    );
    Fatal {
        message: format!("invalid JSON: {message}"),
        position,
    }
}

fn strip_suffix(message: &mut String, suffix: &str) {
    if message.ends_with(suffix) {
        message.truncate(message.len() - suffix.len());
    }
}
