//! The usage channel: the file named by `REGATTA_USAGE`, in the session's
//! folder, to which any session may append JSON lines saying what it used:
//!
//! ```json
//! {"tokens_in": 1200, "tokens_cached": 0, "tokens_out": 300, "turns": 1, "cost_usd": 0.01}
//! ```
//!
//! Every field is optional. A line is an increment, added to what the
//! earlier lines said; a line with `"cumulative": true` gives the totals so
//! far and replaces them. `model` names the model the tokens are priced
//! with when no cost is given. The worker reads the file as it grows.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use regatta_proto::Usage;
use serde::Deserialize;

use crate::agent_stream::{excerpt, LineBuffer};

/// The name of the channel's file in the session folder.
pub const USAGE_FILE: &str = "usage.jsonl";

/// One line of the channel.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageLine {
    tokens_in: Option<u64>,
    tokens_cached: Option<u64>,
    tokens_out: Option<u64>,
    turns: Option<u64>,
    cost_usd: Option<f64>,
    #[serde(default)]
    cumulative: bool,
    model: Option<String>,
}

/// Reads the channel's file from where it last stopped.
#[derive(Debug)]
pub struct UsageChannel {
    path: PathBuf,
    offset: u64,
    lines: LineBuffer,
    line_no: u64,
    usage: Usage,
    model: Option<String>,
}

impl UsageChannel {
    pub fn new(path: PathBuf) -> Self {
        UsageChannel {
            path,
            offset: 0,
            lines: LineBuffer::default(),
            line_no: 0,
            usage: Usage::default(),
            model: None,
        }
    }

    /// The usage the session reported so far.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// The model the session named last.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Reads what was appended since the last call; returns a message for
    /// each line it could not read. A missing file is a session that
    /// reported nothing yet.
    pub fn poll(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return problems;
        };
        let mut appended = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err()
            || file.read_to_end(&mut appended).is_err()
        {
            return problems;
        }
        self.offset += appended.len() as u64;
        let mut lines = std::mem::take(&mut self.lines);
        lines.push(&appended, |line| {
            self.line_no += 1;
            let problem = match line {
                Ok(line) => self.read_line(line).err(),
                Err(()) => Some(format!("line {} is too long; it was skipped", self.line_no)),
            };
            problems.extend(problem);
        });
        self.lines = lines;
        problems
    }

    /// Reads a partial last line, once the session is over.
    pub fn finish(&mut self) -> Vec<String> {
        let mut problems = self.poll();
        if let Some(rest) = self.lines.finish() {
            self.line_no += 1;
            if let Err(problem) = self.read_line(&rest) {
                problems.push(problem);
            }
        }
        problems
    }

    fn read_line(&mut self, line: &str) -> Result<(), String> {
        if line.trim().is_empty() {
            return Ok(());
        }
        let read: UsageLine = serde_json::from_str(line).map_err(|e| {
            format!(
                "line {} is not a usage line ({e}): {}",
                self.line_no,
                excerpt(line)
            )
        })?;
        let given = Usage {
            tokens_in: read.tokens_in.unwrap_or(0),
            tokens_cached: read.tokens_cached.unwrap_or(0),
            tokens_out: read.tokens_out.unwrap_or(0),
            turns: read.turns.unwrap_or(0),
            cost_usd: read.cost_usd,
        };
        if read.model.is_some() {
            self.model = read.model;
        }
        if read.cumulative {
            self.usage = given;
        } else {
            self.usage.add(&given);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_add_up_and_a_cumulative_line_replaces_the_totals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(USAGE_FILE);
        let mut channel = UsageChannel::new(path.clone());
        assert!(channel.poll().is_empty());
        std::fs::write(
            &path,
            "{\"tokens_in\":10,\"turns\":1}\n{\"tokens_out\":5,\"tu",
        )
        .unwrap();
        assert!(channel.poll().is_empty());
        assert_eq!((channel.usage().tokens(), channel.usage().turns), (10, 1));
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(
            &mut file,
            b"rns\":1}\nnonsense\n{\"tokens_in\":1,\"cumulative\":true,\"cost_usd\":0.5}",
        )
        .unwrap();
        let problems = channel.poll();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("line 3 is not a usage line"),
            "{problems:?}"
        );
        assert_eq!((channel.usage().tokens(), channel.usage().turns), (15, 2));
        // The last line has no newline: it is read when the session is over.
        assert!(channel.finish().is_empty());
        assert_eq!(channel.usage().tokens(), 1);
        assert_eq!(channel.usage().cost_usd, Some(0.5));
    }
}
