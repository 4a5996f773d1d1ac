#!/usr/bin/env python3
"""A faithful stand-in for a coding agent's headless mode, for tests and demos.

It writes, turn by turn and flushed as it goes, the stdout shapes the real CLIs
document, so that regatta's metering, budgets and transcripts can be exercised
without network access or an API key:

  claude   `claude -p --output-format stream-json --verbose`: a `system` init event,
           per turn an `assistant` message (one line per content block, each with
           the message's `usage`) and a `user` tool result, then a final `result`
           event with `num_turns`, `total_cost_usd`, `duration_ms` and `usage`;
  codex    `codex exec --json`: `thread.started`, then per turn `turn.started`,
           `item.completed` and `turn.completed` with `usage.input_tokens`,
           `cached_input_tokens` and `output_tokens` (no cost);
  channel  plain text on stdout, and one usage line per turn appended to the
           file named by REGATTA_USAGE (any command can do this).

Configured by environment variables (all optional):

  FAKE_AGENT_FORMAT        claude | codex | channel       (default claude)
  FAKE_AGENT_TURNS         turns to take                  (default 3)
  FAKE_AGENT_TURN_SECONDS  sleep before each turn         (default 0.05)
  FAKE_AGENT_TOKENS_IN     fresh input tokens per turn    (default 1000)
  FAKE_AGENT_TOKENS_CACHED cached input tokens per turn   (default 0)
  FAKE_AGENT_TOKENS_OUT    output tokens per turn         (default 200)
  FAKE_AGENT_COST_PER_TURN dollars per turn, in `result`  (default 0.01)
  FAKE_AGENT_MODEL         model name it reports          (default claude-sonnet-4-5)
  FAKE_AGENT_GARBAGE       1: also print a non-JSON line and a truncated one
  FAKE_AGENT_OUTPUT        a file to write when done (the unit's "migration")

`--max-turns N` is honoured like Claude Code's: it stops after N turns.
"""

import json
import os
import sys
import time


def env(name, default, kind=str):
    value = os.environ.get(name)
    return kind(value) if value not in (None, "") else default


def emit(event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main():
    fmt = env("FAKE_AGENT_FORMAT", "claude")
    turns = env("FAKE_AGENT_TURNS", 3, int)
    if "--max-turns" in sys.argv:
        turns = min(turns, int(sys.argv[sys.argv.index("--max-turns") + 1]))
    pause = env("FAKE_AGENT_TURN_SECONDS", 0.05, float)
    tokens_in = env("FAKE_AGENT_TOKENS_IN", 1000, int)
    tokens_cached = env("FAKE_AGENT_TOKENS_CACHED", 0, int)
    tokens_out = env("FAKE_AGENT_TOKENS_OUT", 200, int)
    cost = env("FAKE_AGENT_COST_PER_TURN", 0.01, float)
    model = env("FAKE_AGENT_MODEL", "claude-sonnet-4-5")
    garbage = env("FAKE_AGENT_GARBAGE", "") == "1"
    usage_file = os.environ.get("REGATTA_USAGE")
    task = os.environ.get("REGATTA_TASK", "")
    started = time.time()

    if fmt == "claude":
        emit({"type": "system", "subtype": "init", "model": model, "session_id": "fake",
              "tools": ["Read", "Edit", "Bash"]})
    elif fmt == "codex":
        emit({"type": "thread.started", "thread_id": "fake-thread"})

    for turn in range(1, turns + 1):
        time.sleep(pause)
        if fmt == "claude":
            usage = {"input_tokens": tokens_in, "cache_creation_input_tokens": 0,
                     "cache_read_input_tokens": tokens_cached, "output_tokens": tokens_out}
            message = {"id": f"msg_{turn}", "type": "message", "role": "assistant",
                       "model": model, "usage": usage}
            emit({"type": "assistant", "session_id": "fake", "message": dict(
                message, content=[{"type": "text", "text": f"turn {turn}: {task}"}])})
            emit({"type": "assistant", "session_id": "fake", "message": dict(
                message, content=[{"type": "tool_use", "id": f"tool_{turn}", "name": "Edit",
                                   "input": {}}])})
            emit({"type": "user", "session_id": "fake", "message": {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": f"tool_{turn}", "content": "ok"}]}})
        elif fmt == "codex":
            emit({"type": "turn.started"})
            emit({"type": "item.completed", "item": {"id": f"item_{turn}",
                  "type": "agent_message", "text": f"turn {turn}: {task}"}})
            emit({"type": "turn.completed", "usage": {
                "input_tokens": tokens_in + tokens_cached,
                "cached_input_tokens": tokens_cached, "output_tokens": tokens_out}})
        else:
            print(f"turn {turn}: {task}", flush=True)
            if usage_file:
                with open(usage_file, "a") as channel:
                    channel.write(json.dumps({"tokens_in": tokens_in, "tokens_cached": tokens_cached,
                                              "tokens_out": tokens_out, "turns": 1,
                                              "cost_usd": cost}) + "\n")
        if garbage and turn == 1:
            sys.stdout.write("this line is not JSON\n")
            sys.stdout.flush()

    if fmt == "claude":
        emit({"type": "result", "subtype": "success", "is_error": False,
              "duration_ms": int((time.time() - started) * 1000), "num_turns": turns,
              "total_cost_usd": round(cost * turns, 6), "session_id": "fake",
              "usage": {"input_tokens": tokens_in * turns, "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": tokens_cached * turns,
                        "output_tokens": tokens_out * turns}})
    if garbage:
        sys.stdout.write('{"type": "assist')
        sys.stdout.flush()
    output = os.environ.get("FAKE_AGENT_OUTPUT")
    if output:
        os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
        with open(output, "w") as out:
            out.write(f"-- migrated by the fake agent in {turns} turns: {task}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
