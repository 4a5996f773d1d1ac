"""Prints issue 15's ratios and targets from one run's JSON results.

Reads target/bench/*.json (regatta's fleet scenarios and the Celery peer),
prints one line per target with its verdict, and writes
target/bench/ratios.json. Verdicts compare ratios measured in the same run;
a missing scenario prints as "not measured".

Usage: python3 bench/ratios.py [target/bench]
"""

import json
import math
import os
import sys

folder = sys.argv[1] if len(sys.argv) > 1 else "target/bench"


def load(name):
    try:
        with open(os.path.join(folder, f"{name}.json")) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data.get("values", data)


def get(data, *path):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return math.nan
        data = data[key]
    return data if isinstance(data, (int, float)) and data is not None else math.nan


def verdict(ok, value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not measured"
    return "met" if ok else "MISSED"


ceiling = load("ceiling")
throughput = load("throughput")
chain = load("chain")
scale = load("scale")
celery = load("celery")
lines, table = [], {}


def line(name, text, target=None, ok=None, value=None):
    out = f"{name:<20} {text}"
    if target is not None:
        out += f"  [target {target}: {verdict(ok, value)}]"
        table[name] = {"value": value, "target": target, "verdict": verdict(ok, value)}
    lines.append(out)


rate = get(throughput, "units_per_s")
sub = get(celery, "subprocess", "tasks_per_s")
inproc = get(celery, "in_process", "tasks_per_s")
x = rate / sub if sub else math.nan
line(
    "no-op throughput",
    f"regatta {rate:.0f} units/s; Celery {sub:.0f} tasks/s with a subprocess, {inproc:.0f} in-process: "
    f"{x:.2f}x the subprocess peer, {rate / inproc if inproc else math.nan:.2f}x the in-process one",
    ">= 3x the subprocess peer", x >= 3, x,
)
drain = get(celery, "subprocess_drain", "tasks_per_s")
line(
    "vs Celery's worker",
    f"Celery's worker alone (queue filled before it started) drains {drain:.0f} subprocess tasks/s: "
    f"regatta is {rate / drain if drain else math.nan:.2f}x that (the end-to-end peer waits for each publish's confirm in turn)",
)
share = get(throughput, "ratio_to_ceiling_half") * 100
line(
    "broker ceiling",
    f"{share:.1f}% of the broker ceiling / 2 ({get(ceiling, 'unit_ceiling_per_s'):.0f}/s)",
    ">= 20%", share >= 20, share,
)
ours = get(throughput, "cpu_ms_per_unit", "ours")
line(
    "CPU per unit",
    f"ours {ours:.2f} ms (coordinator {get(throughput, 'cpu_ms_per_unit', 'coordinator'):.2f}, "
    f"workers {get(throughput, 'cpu_ms_per_unit', 'workers'):.2f}, leaders {get(throughput, 'cpu_ms_per_unit', 'leaders'):.2f}; "
    f"sh {get(throughput, 'cpu_ms_per_unit', 'sh_alone'):.2f} excluded); broker {get(throughput, 'cpu_ms_per_unit', 'broker'):.2f} ms, "
    f"redis {get(throughput, 'cpu_ms_per_unit', 'redis'):.2f} ms; Celery worker with its sh {get(celery, 'subprocess', 'cpu_ms_per_task', 'worker'):.2f} ms, "
    f"broker {get(celery, 'subprocess', 'cpu_ms_per_task', 'broker'):.2f} ms",
    "< 1 ms (ours)", ours < 1, ours,
)
median = get(chain, "hop_us_median") / 1000
p99 = get(chain, "hop_us_p99") / 1000
celery_hop = get(celery, "chain", "hop_us_median") / 1000
line(
    "hop median",
    f"{median:.2f} ms (µs clock; {get(chain, 'hop_median_ms'):.1f} ms on the coordinator's ms clock); "
    f"Celery chain {celery_hop:.2f} ms, p99 {get(celery, 'chain', 'hop_us_p99') / 1000:.2f} ms: "
    f"Celery's hop / ours {celery_hop / median if median else math.nan:.2f}",
    "< 1 ms", median < 1, median,
)
line("hop p99", f"{p99:.2f} ms", "< 5 ms", p99 < 5, p99)
core = get(scale, "coordinator_core_percent")
sessions = get(scale, "sessions")
line(
    "scale coordinator",
    f"{core:.1f}% of a core while {sessions:.0f} sessions ran ({get(scale, 'workers'):.0f} workers x {get(scale, 'slots'):.0f} slots, "
    f"sleep {get(scale, 'sleep_s'):.0f} s, window {get(scale, 'window_s'):.1f} s)",
    "< 10%", core < 10, core,
)
commands = get(scale, "redis_commands_per_s")
line(
    "scale redis",
    f"{commands:.0f} commands/s (idle before: {get(scale, 'redis_idle_commands_per_s'):.0f}/s)",
    "< 5000/s", commands < 5000, commands,
)
last = get(scale, "last_start_s")
line("scale start", f"all started {last:.2f} s after the enqueue", "< 5 s", last < 5, last)
for units in (100_000, 1_000_000):
    enqueue = load(f"enqueue-{units}")
    peak = get(enqueue, "coordinator_peak_mb")
    text = f"{units} units: coordinator peak {peak:.0f} MB, enqueued in {get(enqueue, 'enqueue_s'):.2f} s"
    if units == 100_000:
        line(f"memory {units}", text, "< 500 MB", peak < 500, peak)
    else:
        line(f"memory {units}", text + " (reported)")

load_average = os.getloadavg()
lines.append(f"load average now: {load_average[0]:.2f} {load_average[1]:.2f} {load_average[2]:.2f}")
print("\n".join(lines))
with open(os.path.join(folder, "ratios.json"), "w") as f:
    json.dump({"targets": table, "load_average": load_average}, f, indent=2)
