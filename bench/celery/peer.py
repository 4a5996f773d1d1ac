"""The Celery peer of regatta's fleet benchmarks (issue 15).

The same no-op work as regatta's throughput and chain scenarios, on the same
local RabbitMQ and Redis, so that the ratio is measured in one run:

- in-process no-op tasks/s (a task that returns at once);
- subprocess no-op tasks/s (each task runs `/bin/sh -c true`, the same work
  as a regatta no-op unit), end to end (the client sends each task with a
  publisher confirm, one at a time, as Celery does) and for the worker alone
  (the queue filled first, then drained);
- a chain's per-hop latency (the parent task returned to the child task
  started, on CLOCK_MONOTONIC in ns, shared by every process of the machine).

The worker: 2 prefork processes, acks_late, publisher confirms, msgpack,
results in Redis (db 9), on a queue of its own (`regatta-bench-celery-*`),
so that it never touches regatta's queues or keys. This file is both the
driver (`python peer.py`) and the Celery app the worker imports (`-A peer`);
the worker learns the queue and URLs from the environment.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid

from celery import Celery, chain
from celery.result import ResultSet

BROKER = os.environ.get("CELERY_PEER_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
BACKEND = os.environ.get("CELERY_PEER_BACKEND", "redis://127.0.0.1:6379/9")
QUEUE = os.environ.setdefault("CELERY_PEER_QUEUE", f"regatta-bench-celery-{uuid.uuid4().hex[:8]}")

app = Celery("peer", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_serializer="msgpack",
    result_serializer="msgpack",
    accept_content=["msgpack"],
    task_acks_late=True,
    broker_transport_options={"confirm_publish": True},
    task_default_queue=QUEUE,
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="peer.noop")
def noop():
    return None


@app.task(name="peer.shell")
def shell():
    """Runs `/bin/sh -c true`; returns when it started and ended (monotonic ns)."""
    started = time.monotonic_ns()
    code = subprocess.run(["/bin/sh", "-c", "true"], check=False).returncode
    if code != 0:
        raise RuntimeError(f"/bin/sh -c true exited {code}")
    return [started, time.monotonic_ns()]


@app.task(name="peer.hop")
def hop(trail):
    """Appends [started, returned] (monotonic ns) to the chain's trail."""
    started = time.monotonic_ns()
    trail.append([started, 0])
    trail[-1][1] = time.monotonic_ns()
    return trail


def cpu_seconds(pid):
    """utime+stime+cutime+cstime of a process and its live descendants."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except (OSError, IndexError, ValueError):
        return total
    return total + sum(cpu_seconds(c) for c in children)


def oldest_named(name):
    """The longest-running process of that name: the server, not a tool
    (rabbitmqctl runs a beam.smp too)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/{entry}/stat") as f:
                found.append((int(f.read().rsplit(")", 1)[1].split()[19]), int(entry)))
        except (OSError, IndexError, ValueError):
            continue
    return min(found)[1] if found else None


BROKER_PID = oldest_named("beam.smp")
REDIS_PID = oldest_named("redis-server")


def cpu_named(pid):
    return cpu_seconds(pid) if pid else 0.0


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    rank = round(p / 100 * (len(sorted_values) - 1))
    return sorted_values[min(rank, len(sorted_values) - 1)]


def start_worker(ready=True):
    here = os.path.dirname(os.path.abspath(__file__))
    command = [
        sys.executable, "-m", "celery", "--quiet", "-A", "peer", "worker",
        "--pool", "prefork", "--concurrency", "2",
        "--queues", QUEUE, "--loglevel", "WARNING",
        "--hostname", f"{QUEUE}@%h",
        "--without-gossip", "--without-mingle",
    ]
    # Quiet about running as root (a container's user): no pickle here.
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    worker = subprocess.Popen(command, cwd=here, env=env)
    if not ready:
        return worker
    # Ready when it has run a task.
    deadline = time.monotonic() + 120
    while True:
        try:
            noop.apply_async().get(timeout=10)
            return worker
        except Exception:  # noqa: BLE001 - still starting
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Celery worker did not start")


def stop_worker(worker):
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def delete_queue():
    """Deletes the peer's queue, leaving RabbitMQ as it was."""
    with app.connection_for_write() as connection:
        try:
            connection.default_channel.queue_delete(QUEUE)
        except Exception:  # noqa: BLE001 - already gone
            pass


def throughput(task, n, worker_pid):
    """Sends n tasks at once and waits for every result."""
    cpu = [cpu_seconds(worker_pid), cpu_named(BROKER_PID), cpu_named(REDIS_PID)]
    started = time.monotonic()
    results = ResultSet([task.apply_async() for _ in range(n)])
    published = time.monotonic() - started
    results.join_native(timeout=1800, interval=0.02)
    seconds = time.monotonic() - started
    spent = [cpu_seconds(worker_pid), cpu_named(BROKER_PID), cpu_named(REDIS_PID)]
    worker_ms, broker_ms, redis_ms = ((b - a) * 1000 / n for a, b in zip(cpu, spent))
    results.forget()
    return {
        "tasks": n,
        "seconds": seconds,
        "tasks_per_s": n / seconds,
        "published_s": published,
        "cpu_ms_per_task": {"worker": worker_ms, "broker": broker_ms, "redis": redis_ms},
    }


def drained(n):
    """The worker alone: n subprocess tasks sent before it starts, timed from
    the first task's start to the last one's end as the tasks saw them."""
    results = ResultSet([shell.apply_async() for _ in range(n)])
    worker = start_worker(ready=False)
    try:
        spans = results.join_native(timeout=1800, interval=0.02)
    finally:
        stop_worker(worker)
    results.forget()
    seconds = (max(end for _, end in spans) - min(start for start, _ in spans)) / 1e9
    return {"tasks": n, "seconds": seconds, "tasks_per_s": n / seconds}


def chained(n):
    started = time.monotonic()
    trail = chain(hop.s([]), *[hop.s() for _ in range(n - 1)]).apply_async().get(
        timeout=600, interval=0.01
    )
    seconds = time.monotonic() - started
    hops = sorted((trail[i][0] - trail[i - 1][1]) / 1000 for i in range(1, len(trail)))
    return {
        "tasks": n,
        "seconds": seconds,
        "hops": len(hops),
        "hop_us_median": statistics.median(hops),
        "hop_us_p99": percentile(hops, 99),
        "hop_us_max": hops[-1],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--chain", type=int, default=300)
    parser.add_argument("--out", default="target/bench/celery.json")
    args = parser.parse_args()
    worker = start_worker()
    try:
        return measure(args, worker)
    finally:
        delete_queue()


def measure(args, worker):
    """Runs the four measurements and writes the JSON result."""
    import celery

    try:
        in_process = throughput(noop, args.tasks, worker.pid)
        line = "in-process no-op: {tasks} tasks in {seconds:.1f} s (all sent after {published_s:.1f} s) = {tasks_per_s:.0f} tasks/s; CPU per task: worker {w:.2f} ms, broker {b:.2f} ms, redis {r:.2f} ms"
        print("celery      " + line.format(**in_process, w=in_process["cpu_ms_per_task"]["worker"], b=in_process["cpu_ms_per_task"]["broker"], r=in_process["cpu_ms_per_task"]["redis"]), flush=True)
        sub = throughput(shell, args.tasks, worker.pid)
        line = "subprocess no-op (/bin/sh -c true): {tasks} tasks in {seconds:.1f} s (all sent after {published_s:.1f} s) = {tasks_per_s:.0f} tasks/s; CPU per task: worker with its sh {w:.2f} ms, broker {b:.2f} ms, redis {r:.2f} ms"
        print("celery      " + line.format(**sub, w=sub["cpu_ms_per_task"]["worker"], b=sub["cpu_ms_per_task"]["broker"], r=sub["cpu_ms_per_task"]["redis"]), flush=True)
        hops = chained(args.chain)
        print(
            "celery      chain {tasks} tasks in {seconds:.2f} s: hop (task returned to next task started, monotonic µs clock) median {m:.2f} ms, p99 {p:.2f} ms, max {x:.2f} ms".format(
                **hops, m=hops["hop_us_median"] / 1000, p=hops["hop_us_p99"] / 1000, x=hops["hop_us_max"] / 1000
            ),
            flush=True,
        )
    finally:
        stop_worker(worker)
    drain = drained(args.tasks)
    print(
        "celery      subprocess no-op, worker alone (queue filled before it started): {tasks} tasks, first start to last end {seconds:.1f} s = {tasks_per_s:.0f} tasks/s".format(**drain),
        flush=True,
    )

    result = {
        "celery_version": celery.__version__,
        "worker": "prefork x2, acks_late, publisher confirms, msgpack, results in Redis db 9, classic durable queue",
        "load_average": os.getloadavg(),
        "in_process": in_process,
        "subprocess": sub,
        "subprocess_drain": drain,
        "chain": hops,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
