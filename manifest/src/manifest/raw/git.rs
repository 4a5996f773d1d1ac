//! Reader of the `git:` block, into a [`GitDraft`] whose missing fields `load` fills
//! with their defaults.

use std::time::Duration;

use serde::de::{IgnoredAny, MapAccess};

use super::lenient::Lenient;
use super::reader::{Field, Reader};
use super::scalar::{Scalar, Typed};
use crate::manifest::git::MergeMode;
use crate::manifest::position::Node;

const GIT_FIELDS: &[&str] = &[
    "repo",
    "base",
    "target",
    "integration",
    "integration_timeout",
    "window",
    "merge",
    "strict_writes",
];

/// What the manifest says about git mode.
#[derive(Debug, Default)]
pub(crate) enum GitBlock {
    /// No `git:` key: the batch runs in its workdir.
    #[default]
    Absent,
    /// A `git:` key whose value is not a mapping, already reported.
    Invalid,
    Given(GitDraft),
}

/// The `git:` block as read, before defaults.
#[derive(Debug, Default)]
pub(crate) struct GitDraft {
    pub repo: Option<String>,
    pub base: Option<String>,
    pub target: Option<String>,
    pub integration: Option<String>,
    pub integration_timeout: Option<Duration>,
    pub window: Option<u32>,
    pub merge: Option<MergeMode>,
    pub strict_writes: Option<bool>,
}

/// `merge: auto` or `merge: manual`.
impl Typed for MergeMode {
    const EXPECTED: &'static str = "'auto' or 'manual'";

    fn from_scalar(scalar: Scalar) -> Result<Option<MergeMode>, Scalar> {
        match scalar {
            Scalar::Null => Ok(None),
            Scalar::Text(text) => match MergeMode::from_name(&text) {
                Some(mode) => Ok(Some(mode)),
                None => Err(Scalar::Text(text)),
            },
            other => Err(other),
        }
    }
}

/// Reads the `git:` field's value, which must be a mapping.
pub(super) struct GitValue<'r, 'a> {
    pub(super) reader: &'r Reader<'a>,
    pub(super) field: Field,
}

impl<'de> Lenient<'de> for GitValue<'_, '_> {
    type Value = GitBlock;
    const EXPECTING: &'static str = "a mapping with at least 'repo', 'base' and 'integration'";

    fn mismatch(self, found: Scalar) -> GitBlock {
        self.reader
            .wrong_shape::<()>(self.field, Self::EXPECTING, &found);
        GitBlock::Invalid
    }

    fn mapping<M: MapAccess<'de>>(self, mut map: M) -> Result<GitBlock, M::Error> {
        let reader = self.reader;
        let mut git = GitDraft::default();
        reader.fields(&mut map, Node::Git, "git", GIT_FIELDS, |field, map| {
            match field.name {
                "repo" => git.repo = reader.text(map, field)?,
                "base" => git.base = reader.text(map, field)?,
                "target" => git.target = reader.text(map, field)?,
                "integration" => git.integration = reader.text(map, field)?,
                "integration_timeout" => git.integration_timeout = reader.duration(map, field)?,
                "window" => git.window = reader.typed(map, field)?,
                "merge" => git.merge = reader.typed(map, field)?,
                "strict_writes" => git.strict_writes = reader.typed(map, field)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        })?;
        Ok(GitBlock::Given(git))
    }
}
