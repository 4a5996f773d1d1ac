//! Redis's budgets for one write: how many fields and bytes one fenced
//! script may carry, so that a huge batch never blocks Redis (which also
//! serves lease renewals) for long, and which value is over the largest
//! Redis takes at all. The writer cuts every write along these.

use redis::aio::ConnectionManager;

/// The most fields written by one script, so a huge batch never blocks
/// Redis (which also serves lease renewals) for long.
pub(super) const FIELDS_PER_COMMAND: usize = 1_000;

/// The most bytes of arguments in one script, for the same reason: a
/// million-unit manifest stored in one command kept Redis busy for half a
/// second or more. A single larger value still goes, alone.
pub(super) const BYTES_PER_COMMAND: usize = 4 << 20;

/// Redis's largest value (`proto-max-bulk-len`) when it will not say.
const DEFAULT_LARGEST_VALUE: usize = 512 * 1024 * 1024;

/// Redis's largest value: a larger one would have it drop the connection
/// (and the writer send it again, forever), so it is refused here first.
pub(super) async fn largest_value(connection: &mut ConnectionManager) -> usize {
    let answer: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("proto-max-bulk-len")
        .query_async(connection)
        .await;
    answer
        .ok()
        .and_then(|pair| pair.get(1).and_then(|v| v.parse().ok()))
        .unwrap_or(DEFAULT_LARGEST_VALUE)
}

/// Names the first value of `ops` that Redis would not take.
pub(super) fn oversized(ops: &[Op], largest: usize) -> Option<String> {
    ops.iter().find_map(|op| {
        let size = op.args.iter().map(String::len).max()?;
        (size > largest).then(|| {
            format!(
                "a value of {size} bytes for {} is over Redis's largest ({largest} bytes, its proto-max-bulk-len)",
                op.keys.first().map(String::as_str).unwrap_or("a notice")
            )
        })
    })
}

/// The `hset` operations that set `fields` of `key`, each within a
/// script's budgets of fields and bytes (a larger single field alone).
pub(super) fn hset_ops(key: String, fields: Vec<(String, String)>) -> Vec<Op> {
    let hset = |args| Op {
        name: "hset",
        keys: vec![key.clone()],
        args,
    };
    let mut ops = Vec::new();
    let (mut args, mut bytes) = (Vec::new(), 0);
    for (field, value) in fields {
        let size = field.len() + value.len();
        let full = args.len() / 2 >= FIELDS_PER_COMMAND || bytes + size > BYTES_PER_COMMAND;
        if full && !args.is_empty() {
            ops.push(hset(std::mem::take(&mut args)));
            bytes = 0;
        }
        args.push(field);
        args.push(value);
        bytes += size;
    }
    if !args.is_empty() {
        ops.push(hset(args));
    }
    ops
}

/// One Redis operation of [`regatta_proto::scripts::FENCED_WRITE`].
pub(super) struct Op {
    pub(super) name: &'static str,
    pub(super) keys: Vec<String>,
    pub(super) args: Vec<String>,
}

impl Op {
    /// How much of a script's budget of fields it takes.
    pub(super) fn weight(&self) -> usize {
        (self.args.len() / 2).max(1)
    }

    /// How much of a script's budget of bytes it takes.
    pub(super) fn bytes(&self) -> usize {
        self.args.iter().map(String::len).sum()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::store) fn pieces(count: usize, size: usize) -> Vec<(String, String)> {
        (0..count)
            .map(|i| (format!("manifest.{i}"), "x".repeat(size)))
            .collect()
    }

    #[test]
    fn a_hash_of_big_values_is_cut_within_the_byte_budget() {
        // 120 pieces of 1 MiB: one command of 120 MiB before.
        let ops = hset_ops("ns:batch:b".into(), pieces(120, 1 << 20));
        assert!(ops.len() >= 30, "{} commands", ops.len());
        assert!(ops.iter().all(|op| op.bytes() <= BYTES_PER_COMMAND));
        let fields: usize = ops.iter().map(Op::weight).sum();
        assert_eq!(fields, 120, "every field, once");
        // A single value over the budget still goes, alone.
        let ops = hset_ops("k".into(), pieces(3, BYTES_PER_COMMAND + 1));
        assert_eq!(ops.len(), 3);
        // Many small fields: cut by count, as before.
        let ops = hset_ops("k".into(), pieces(2_500, 10));
        assert_eq!(
            ops.iter().map(Op::weight).collect::<Vec<_>>(),
            [1_000, 1_000, 500]
        );
    }

    #[test]
    fn a_value_over_redis_largest_is_named_and_nothing_smaller_is() {
        let hset = |value: &str| Op {
            name: "hset",
            keys: vec!["ns:batch:b".into()],
            args: vec!["manifest".into(), value.into()],
        };
        assert_eq!(oversized(&[hset("12345678")], 8), None);
        let reason = oversized(&[hset("1"), hset("123456789")], 8).expect("over");
        assert!(
            reason.contains("9 bytes")
                && reason.contains("ns:batch:b")
                && reason.contains("8 bytes"),
            "{reason}"
        );
    }
}
