//! Reads a coding agent's stdout stream for its usage, line by line as the
//! agent writes it ([`AgentAdapter`]): Claude Code's `stream-json`, or
//! `codex exec --json`. Each adapter keeps a running [`Usage`] of the
//! session; a line it cannot read is a [`StreamError`] the caller notes in
//! the session's log, never a reason to stop reading (or to panic).

use regatta_proto::{AgentAdapter, Usage};
use serde_json::Value;

/// Longest line kept while waiting for its end: a longer one is dropped
/// (and reported), so that an agent printing without newlines cannot make
/// the worker hold its whole output.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// A line of the stream that says nothing the adapter can use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StreamError {
    #[error("line {line} is not JSON ({reason}): {excerpt}")]
    NotJson {
        line: u64,
        reason: String,
        excerpt: String,
    },
    #[error("line {line}: '{field}' is not a whole number of 0 or more")]
    BadNumber { line: u64, field: &'static str },
    #[error("line {line} is longer than {MAX_LINE_BYTES} bytes; it was skipped")]
    TooLong { line: u64 },
    #[error("the stream ended in the middle of a line: {excerpt}")]
    Partial { excerpt: String },
}

/// Splits a byte stream into lines, holding a partial line until its end.
#[derive(Debug, Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
    /// Dropping the rest of a line that grew past [`MAX_LINE_BYTES`].
    skipping: bool,
}

impl LineBuffer {
    /// Adds a chunk and hands each complete line (without its newline) to
    /// `each`; `Err(())` stands for a line that was too long.
    pub fn push(&mut self, chunk: &[u8], mut each: impl FnMut(Result<&str, ()>)) {
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(end);
            rest = &after[1..];
            if self.skipping {
                self.skipping = false;
                self.pending.clear();
                each(Err(()));
                continue;
            }
            self.pending.extend_from_slice(line);
            each(Ok(&String::from_utf8_lossy(&self.pending)));
            self.pending.clear();
        }
        if !self.skipping {
            self.pending.extend_from_slice(rest);
            if self.pending.len() > MAX_LINE_BYTES {
                self.pending.clear();
                self.skipping = true;
            }
        }
    }

    /// Returns what is left when the stream ends: a partial line, if any.
    pub fn finish(&mut self) -> Option<String> {
        let partial = std::mem::take(&mut self.pending);
        let text = String::from_utf8_lossy(&partial);
        (!text.trim().is_empty()).then(|| excerpt(&text))
    }
}

/// The running usage of one agent's stream.
#[derive(Debug)]
pub struct StreamMeter {
    adapter: AgentAdapter,
    lines: u64,
    /// Totals of the messages before the current one.
    settled: Usage,
    /// Claude: the current assistant message, whose lines repeat its usage.
    message: Option<(String, Usage)>,
    /// What the agent reported at its end, which replaces the running sum.
    result: Option<Usage>,
    model: Option<String>,
}

impl StreamMeter {
    pub fn new(adapter: AgentAdapter) -> Self {
        StreamMeter {
            adapter,
            lines: 0,
            settled: Usage::default(),
            message: None,
            result: None,
            model: None,
        }
    }

    /// The usage so far; `cost_usd` only when the agent reported one.
    pub fn usage(&self) -> Usage {
        if let Some(result) = &self.result {
            return result.clone();
        }
        let mut usage = self.settled.clone();
        if let Some((_, message)) = &self.message {
            usage.add(message);
        }
        usage
    }

    /// The model the stream names, for the price table.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Reads one line; `Ok(true)` when it changed the usage.
    pub fn feed(&mut self, line: &str) -> Result<bool, StreamError> {
        self.lines += 1;
        let line_no = self.lines;
        if self.adapter == AgentAdapter::Cmd || line.trim().is_empty() {
            return Ok(false);
        }
        let value: Value = serde_json::from_str(line).map_err(|e| StreamError::NotJson {
            line: line_no,
            reason: e.to_string(),
            excerpt: excerpt(line),
        })?;
        match self.adapter {
            AgentAdapter::ClaudeStreamJson => self.claude(&value, line_no),
            AgentAdapter::CodexJson => self.codex(&value, line_no),
            AgentAdapter::Cmd => Ok(false),
        }
    }

    /// A line that was too long to keep.
    pub fn skipped(&mut self) -> StreamError {
        self.lines += 1;
        StreamError::TooLong { line: self.lines }
    }

    fn claude(&mut self, value: &Value, line: u64) -> Result<bool, StreamError> {
        match value.get("type").and_then(Value::as_str) {
            Some("system") => {
                if let Some(model) = value.get("model").and_then(Value::as_str) {
                    self.model = Some(model.to_owned());
                }
                Ok(false)
            }
            Some("assistant") => {
                let Some(message) = value.get("message") else {
                    return Ok(false);
                };
                if let Some(model) = message.get("model").and_then(Value::as_str) {
                    self.model = Some(model.to_owned());
                }
                let Some(usage) = message.get("usage") else {
                    return Ok(false);
                };
                let mut counted = claude_usage(usage, line)?;
                counted.turns = 1;
                let id = message
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                // Claude Code writes one line per content block, each with
                // the whole message's usage: the same id replaces, a new one
                // settles the previous message.
                match self.message.take() {
                    Some((current, _)) if current == id && !id.is_empty() => {}
                    Some((_, previous)) => self.settled.add(&previous),
                    None => {}
                }
                self.message = Some((id, counted));
                Ok(true)
            }
            Some("result") => {
                let mut usage = match value.get("usage") {
                    Some(usage) => claude_usage(usage, line)?,
                    None => self.usage(),
                };
                usage.turns = match value.get("num_turns") {
                    Some(turns) => turns.as_u64().ok_or(StreamError::BadNumber {
                        line,
                        field: "num_turns",
                    })?,
                    None => self.usage().turns,
                };
                usage.cost_usd = value.get("total_cost_usd").and_then(Value::as_f64);
                self.result = Some(usage);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn codex(&mut self, value: &Value, line: u64) -> Result<bool, StreamError> {
        if value.get("type").and_then(Value::as_str) != Some("turn.completed") {
            return Ok(false);
        }
        let usage = value.get("usage").cloned().unwrap_or(Value::Null);
        let input = count(&usage, "input_tokens", line)?;
        let cached = count(&usage, "cached_input_tokens", line)?;
        // Codex counts cached input inside `input_tokens`.
        self.settled.add(&Usage {
            tokens_in: input.saturating_sub(cached),
            tokens_cached: cached,
            tokens_out: count(&usage, "output_tokens", line)?,
            turns: 1,
            cost_usd: None,
        });
        Ok(true)
    }
}

/// Claude's `usage`: cache writes count as fresh input, cache reads as cached.
fn claude_usage(usage: &Value, line: u64) -> Result<Usage, StreamError> {
    Ok(Usage {
        tokens_in: count(usage, "input_tokens", line)?
            + count(usage, "cache_creation_input_tokens", line)?,
        tokens_cached: count(usage, "cache_read_input_tokens", line)?,
        tokens_out: count(usage, "output_tokens", line)?,
        turns: 0,
        cost_usd: None,
    })
}

/// A token count: absent or null is 0, anything but a whole number an error.
fn count(object: &Value, field: &'static str, line: u64) -> Result<u64, StreamError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(value) => value.as_u64().ok_or(StreamError::BadNumber { line, field }),
    }
}

/// The start of a line, for a message.
pub fn excerpt(line: &str) -> String {
    const KEEP: usize = 80;
    let line = line.trim();
    match line.char_indices().nth(KEEP) {
        Some((end, _)) => format!("{}...", &line[..end]),
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(meter: &mut StreamMeter, text: &str) -> Vec<StreamError> {
        let mut errors = Vec::new();
        let mut buffer = LineBuffer::default();
        // One byte at a time: every line arrives in pieces.
        for byte in text.as_bytes() {
            buffer.push(std::slice::from_ref(byte), |line| match line {
                Ok(line) => {
                    if let Err(e) = meter.feed(line) {
                        errors.push(e);
                    }
                }
                Err(()) => errors.push(meter.skipped()),
            });
        }
        if let Some(excerpt) = buffer.finish() {
            errors.push(StreamError::Partial { excerpt });
        }
        errors
    }

    const CLAUDE: &str = r#"{"type":"system","subtype":"init","model":"claude-sonnet-4-5","session_id":"x"}
{"type":"assistant","message":{"id":"m1","model":"claude-sonnet-4-5","usage":{"input_tokens":100,"cache_creation_input_tokens":20,"cache_read_input_tokens":300,"output_tokens":40},"content":[{"type":"text","text":"a"}]}}
{"type":"assistant","message":{"id":"m1","model":"claude-sonnet-4-5","usage":{"input_tokens":100,"cache_creation_input_tokens":20,"cache_read_input_tokens":300,"output_tokens":40},"content":[{"type":"tool_use"}]}}
{"type":"user","message":{"content":[{"type":"tool_result"}]}}
{"type":"assistant","message":{"id":"m2","usage":{"input_tokens":10,"output_tokens":5}}}
"#;

    #[test]
    fn claude_messages_count_once_per_message_id() {
        let mut meter = StreamMeter::new(AgentAdapter::ClaudeStreamJson);
        assert_eq!(feed_all(&mut meter, CLAUDE), vec![]);
        let usage = meter.usage();
        assert_eq!(
            (usage.tokens_in, usage.tokens_cached, usage.tokens_out),
            (130, 300, 45)
        );
        assert_eq!((usage.turns, usage.cost_usd), (2, None));
        assert_eq!(meter.model(), Some("claude-sonnet-4-5"));
    }

    #[test]
    fn claudes_result_replaces_the_running_sum() {
        let mut meter = StreamMeter::new(AgentAdapter::ClaudeStreamJson);
        let result = r#"{"type":"result","subtype":"success","num_turns":3,"total_cost_usd":0.0123,"duration_ms":900,"usage":{"input_tokens":200,"cache_read_input_tokens":600,"output_tokens":90}}"#;
        let errors = feed_all(&mut meter, &format!("{CLAUDE}{result}\n"));
        assert_eq!(errors, vec![]);
        let usage = meter.usage();
        assert_eq!((usage.tokens(), usage.turns), (890, 3));
        assert_eq!(usage.cost_usd, Some(0.0123));
    }

    #[test]
    fn codex_turns_add_up_with_cached_input_apart() {
        let mut meter = StreamMeter::new(AgentAdapter::CodexJson);
        let stream = r#"{"type":"thread.started","thread_id":"t"}
{"type":"turn.started"}
{"type":"item.completed","item":{"id":"i","type":"agent_message","text":"hi"}}
{"type":"turn.completed","usage":{"input_tokens":1000,"cached_input_tokens":800,"output_tokens":50}}
{"type":"turn.completed","usage":{"input_tokens":500,"cached_input_tokens":0,"output_tokens":25}}
"#;
        assert_eq!(feed_all(&mut meter, stream), vec![]);
        let usage = meter.usage();
        assert_eq!(
            (
                usage.tokens_in,
                usage.tokens_cached,
                usage.tokens_out,
                usage.turns
            ),
            (700, 800, 75, 2)
        );
    }

    #[test]
    fn garbage_and_partial_lines_are_errors_not_panics() {
        let mut meter = StreamMeter::new(AgentAdapter::CodexJson);
        let stream = "not json at all\n{\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":-4}}\n\u{0}\u{ff}[1,2\n{\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}\n{\"type\":\"turn.comp";
        let errors = feed_all(&mut meter, stream);
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(matches!(errors[0], StreamError::NotJson { line: 1, .. }));
        assert_eq!(
            errors[1],
            StreamError::BadNumber {
                line: 2,
                field: "input_tokens"
            }
        );
        assert!(matches!(errors[2], StreamError::NotJson { line: 3, .. }));
        assert!(
            errors[3].to_string().contains("middle of a line"),
            "{}",
            errors[3]
        );
        // The good line in between still counted.
        assert_eq!((meter.usage().tokens(), meter.usage().turns), (11, 1));
    }

    #[test]
    fn an_endless_line_is_skipped_and_reported() {
        let mut meter = StreamMeter::new(AgentAdapter::ClaudeStreamJson);
        let mut buffer = LineBuffer::default();
        let mut errors = Vec::new();
        let chunk = vec![b'x'; 1024 * 1024];
        for _ in 0..5 {
            buffer.push(&chunk, |_| unreachable!("no line ends"));
        }
        buffer.push(b"\n{}\n", |line| match line {
            Ok(line) => {
                if let Err(e) = meter.feed(line) {
                    errors.push(e)
                }
            }
            Err(()) => errors.push(meter.skipped()),
        });
        assert_eq!(errors, vec![StreamError::TooLong { line: 1 }]);
        assert_eq!(buffer.finish(), None);
    }
}
