#!/usr/bin/env python3
"""One worker thread against two (`--worker-threads`), side by side in one run (issue 11).

    bench/run.sh --setup-only && target/bench-venv/bin/python bench/workers.py

Two gateways, one with `--worker-threads 1` and one with `--worker-threads 2`, in front of the same
nginx (`return 204`, h2c), take turns round by round, so that both see the busy machine in the same
state. Each round measures, for each gateway: forwarded calls under bench/harness.py's load (CPU per
call from /proc, calls/s), then latency at one call in flight, and nginx alone at one call in
flight (the latency the gateway adds is the difference of the medians). The figures judged are the
medians of the per-round ratios. It uses harness.py's processes, load and checks (every forwarded
call reaches nginx once, every call answers HTTP 2xx), and writes nothing outside target/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

WORKERS = (1, 2)


def main() -> int:
    repo = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=str(repo / "target/release/printjob-gateway"))
    parser.add_argument("--calls", type=int, default=50_000, help="forwarded calls per gateway per round")
    parser.add_argument("--c1-calls", type=int, default=3000, help="calls at one in flight per gateway per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--work-dir", default=str(repo / "target/bench/workers"))
    args = parser.parse_args()
    import grpc_h2

    harness.grpc_h2 = grpc_h2
    try:
        return run(args)
    except harness.HarnessError as e:
        print(f"BENCHMARK FAILED: {e}", file=sys.stderr)
        return 1


def run(args) -> int:
    out_dir = Path(args.work_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="printjob-bench-workers-"))
    bench = harness.Bench(argparse.Namespace(binary=args.binary), tmp, out_dir)
    if not bench.supports("--worker-threads"):
        raise harness.HarnessError(f"{args.binary} has no --worker-threads")
    load = harness.Load(args.calls, args.connections, args.streams)
    c1 = harness.Load(args.c1_calls, 1, 1)
    nginx = harness.start_nginx(tmp)
    graph_url = f"http://127.0.0.1:{nginx.h2c_port}/v1.0"
    gateways = {
        n: harness.start_gateway(args.binary, graph_url, tmp, f"gateway-workers-{n}", extra=["--worker-threads", str(n)])
        for n in WORKERS
    }
    for n, gateway in gateways.items():
        # A new thread takes its name only once it first runs: wait for the count, bounded.
        harness.wait_until(lambda: worker_threads(gateway.pid) == n, 20,
                           f"--worker-threads {n}: {n} tokio-rt-worker threads", interval=0.01, proc=gateway.proc)
        bench.run_load("forward", harness.Load(max(500, args.calls // 10), args.connections, args.streams),
                       gateway, nginx, None)

    rounds = []
    for r in range(args.rounds):
        row = {"upstream_c1": bench.run_load("upstream", c1, None, nginx, f"workers-upstream-c1-{r}")}
        for n, gateway in gateways.items():
            row[n] = {
                "forward": bench.run_load("forward", load, gateway, nginx, f"workers{n}-forward-{r}"),
                "c1": bench.run_load("forward", c1, gateway, nginx, f"workers{n}-c1-{r}"),
            }
        rounds.append(row)
        print(f"   round {r + 1}: " + "; ".join(
            f"{n} worker(s) {row[n]['forward']['cpu_us_per_call']:.1f} µs/call, {row[n]['forward']['rps']:,.0f} calls/s, "
            f"c1 p50 {row[n]['c1']['p50_ms']:.3f} ms" for n in WORKERS)
            + f"; nginx alone c1 p50 {row['upstream_c1']['p50_ms']:.3f} ms", flush=True)
    peak = {n: harness.status_kib(gateway.pid, "VmHWM") for n, gateway in gateways.items()}
    harness.PROCS.stop_all()
    shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median
    summary = {
        n: {
            "cpu_us_per_call": med(row[n]["forward"]["cpu_us_per_call"] for row in rounds),
            "rps": med(row[n]["forward"]["rps"] for row in rounds),
            "c1_p50_ms": med(row[n]["c1"]["p50_ms"] for row in rounds),
            "c1_p99_ms": med(row[n]["c1"]["p99_ms"] for row in rounds),
            "added_c1_p50_ms": med(row[n]["c1"]["p50_ms"] - row["upstream_c1"]["p50_ms"] for row in rounds),
            "peak_rss_kib": peak[n],
        }
        for n in WORKERS
    }
    ratios = {
        "cpu_1_over_2": med(row[1]["forward"]["cpu_us_per_call"] / row[2]["forward"]["cpu_us_per_call"] for row in rounds),
        "rps_1_over_2": med(row[1]["forward"]["rps"] / row[2]["forward"]["rps"] for row in rounds),
        "c1_p50_1_over_2": med(row[1]["c1"]["p50_ms"] / row[2]["c1"]["p50_ms"] for row in rounds),
    }
    results = {"load": vars(load), "c1_calls": c1.calls, "rounds": rounds, "summary": summary, "ratios": ratios,
               "problems": bench.problems, "machine": harness.machine()}
    (out_dir / "results-workers.json").write_text(json.dumps(results, indent=2, default=str))
    print()
    print("| Worker threads | Gateway CPU per forwarded call | Forwarded calls/s | p50 at 1 in flight | p99 at 1 in flight "
          "| Added to nginx alone at 1 in flight (p50) | Peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for n in WORKERS:
        s = summary[n]
        print(f"| {n} | {s['cpu_us_per_call']:.1f} µs | {s['rps']:,.0f} | {s['c1_p50_ms']:.3f} ms | {s['c1_p99_ms']:.3f} ms "
              f"| {s['added_c1_p50_ms'] * 1000:.0f} µs | {s['peak_rss_kib'] / 1024:.1f} MiB |")
    print(f"\nMedians of the per-round ratios, 1 worker ÷ 2 workers: CPU per call {ratios['cpu_1_over_2']:.2f}, "
          f"calls/s {ratios['rps_1_over_2']:.2f}, p50 at 1 in flight {ratios['c1_p50_1_over_2']:.2f} "
          f"({args.rounds} rounds of {load.calls:,} forwarded and {c1.calls:,} single calls each; "
          f"load average at the end {' '.join(results['machine']['loadavg'])})")
    if bench.problems:
        print("SANITY CHECKS FAILED:\n  " + "\n  ".join(bench.problems))
        return 1
    return 0


def worker_threads(pid: int) -> int:
    """The process's tokio worker threads (blocking-pool threads share the name; none run yet)."""
    count = 0
    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        if comm.read_text().strip() == "tokio-rt-worker":
            count += 1
    return count


if __name__ == "__main__":
    sys.exit(main())
