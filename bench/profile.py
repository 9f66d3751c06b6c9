#!/usr/bin/env python3
"""Where the gateway spends its instructions: one gateway under valgrind's callgrind, nginx as the
upstream, and the benchmark's h2load load. Counters are zeroed after a warm-up, then dumped once
after N forwarded calls and once after N rejected calls (no token), so each dump holds only the
calls. Instruction counts do not move with machine noise, so two builds compare exactly.

Run by bench/profile.sh, which installs valgrind and builds the gateway first.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import split as where  # noqa: E402


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=300)


def total_ir(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    raise harness.HarnessError(f"no totals in {dump}")


def annotate(dump: Path, out: Path, inclusive: bool, threshold: int) -> str:
    argv = ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", f"--threshold={threshold}", str(dump)]
    text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    out.write_text(text)
    return text


def perf_works() -> bool:
    if not shutil.which("perf"):
        return False
    done = subprocess.run(["perf", "stat", "-e", "cpu-clock", "true"], capture_output=True, timeout=30)
    return done.returncode == 0


def attach(argv: list[str], ready, what: str) -> subprocess.Popen:
    tracer = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    harness.PROCS.running.append(tracer)
    ready(tracer)
    return tracer


def strace_counts(bench, kind, load, gateway, nginx, out: Path) -> dict[str, int]:
    """Syscalls of the gateway (all threads) during one load, by name."""
    report = out / f"strace-{kind}.txt"

    def ready(tracer):
        # strace says "Process N attached" once it traces the process; wait for that, bounded.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = tracer.stderr.readline()
            if "attached" in line or not line:
                return
        raise harness.HarnessError("strace did not attach")

    tracer = attach(["strace", "-c", "-f", "-p", str(gateway.pid), "-o", str(report)], ready, "strace")
    bench.run_load(kind, load, gateway, nginx, None)
    harness.PROCS.stop(tracer, signal.SIGINT, grace=30)
    counts = {}
    for line in report.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    return counts


def perf_profile(bench, kind, load, gateway, nginx, out: Path) -> list[tuple[str, float]]:
    """perf's cpu-clock samples of the gateway during one load: the split by object (the kernel
    included) and the top symbols."""
    data = out / f"perf-{kind}.data"
    if data.exists():
        data.unlink()

    def ready(_tracer):
        harness.wait_until(lambda: data.exists() and data.stat().st_size > 0, 30, "perf record started")

    tracer = attach(["perf", "record", "-e", "cpu-clock", "-F", "2000", "-p", str(gateway.pid), "-o", str(data)], ready, "perf")
    bench.run_load(kind, load, gateway, nginx, None)
    harness.PROCS.stop(tracer, signal.SIGINT, grace=30)
    by_dso = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", "dso"], capture_output=True, text=True).stdout
    symbols = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", "dso,sym"], capture_output=True, text=True).stdout
    (out / f"perf-{kind}-symbols.txt").write_text(symbols)
    split = []
    for line in by_dso.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+)", line)
        if m:
            split.append((m.group(2), float(m.group(1))))
    return split[:4]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--token-bytes", type=int, default=0,
                        help="send a bearer token of this many characters (an Entra access token is 1,500 to 2,500) "
                             "instead of the benchmark's one-character token")
    args = parser.parse_args()
    if args.token_bytes > 0:
        # Token68 characters, as a JWT's base64url has; nginx (the upstream) takes headers this long.
        harness.AUTH_HEADER = "authorization: Bearer " + ("eyJ0eXAiOiJKV1Qi" * (args.token_bytes // 16 + 1))[:args.token_bytes]
    import grpc_h2

    harness.grpc_h2 = grpc_h2

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("callgrind.out*"):
        old.unlink()
    tmp = Path(tempfile.mkdtemp(prefix="printjob-profile-"))
    bench = harness.Bench(argparse.Namespace(binary=args.binary), tmp, out)
    nginx = harness.start_nginx(tmp)
    upstream_port = nginx.h2c_port if harness.GRAPH_PROTOCOL == "http2" else nginx.http1_port
    graph_url = f"http://127.0.0.1:{upstream_port}/v1.0"
    port, admin_port = harness.free_ports(2)
    log = tmp / "gateway-callgrind.log"
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.out", "--dump-instr=no",
            *harness.gateway_argv(args.binary, port, admin_port, graph_url)]
    proc = harness.PROCS.start(argv, log)
    harness.wait_until(lambda: grpc_h2.is_serving("127.0.0.1", admin_port), 120, "gateway under callgrind SERVING",
                       interval=0.05, proc=proc)
    gateway = harness.Gateway(proc, port, admin_port, log)
    bench.sample_calls(gateway, nginx)
    load = harness.Load(args.calls, args.connections, args.streams)
    warmup = harness.Load(max(200, args.calls // 10), args.connections, args.streams)
    for kind in ("forward", "reject"):
        bench.run_load(kind, warmup, gateway, nginx, None)

    results = {}
    for n, kind in enumerate(("forward", "reject"), start=1):
        callgrind_control("--zero", str(proc.pid))
        bench.run_load(kind, load, gateway, nginx, None)
        callgrind_control(f"--dump={kind}", str(proc.pid))
        dumps = sorted(out.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
        dump = out / f"callgrind.{kind}.out"
        dumps[-1].rename(dump)
        results[kind] = total_ir(dump) / args.calls
        annotate(dump, out / f"{kind}-inclusive.txt", inclusive=True, threshold=99)
        annotate(dump, out / f"{kind}-self.txt", inclusive=False, threshold=95)
        (out / f"{kind}-split.md").write_text(where.split(dump, args.calls) + "\n")
    harness.PROCS.stop(proc)
    for stray in out.glob("callgrind.out*"):
        stray.unlink()  # the final dump at exit holds only the shutdown

    # Instruction counts leave out the kernel (syscalls, wake-ups), a third of the CPU time here:
    # count the syscalls per call with strace, and sample the native gateway with perf.
    native = harness.start_gateway(args.binary, graph_url, tmp, "gateway-native")
    syscalls, perf_split = {}, {}
    for kind in ("forward", "reject"):
        bench.run_load(kind, warmup, native, nginx, None)
        if shutil.which("strace"):
            syscalls[kind] = strace_counts(bench, kind, load, native, nginx, out)
        if perf_works():
            perf_split[kind] = perf_profile(bench, kind, load, native, nginx, out)
    harness.PROCS.stop_all()
    shutil.rmtree(tmp, ignore_errors=True)

    if bench.problems:
        print("CHECKS FAILED:\n  " + "\n  ".join(bench.problems))
        return 1
    print(f"instructions per forwarded call: {results['forward']:,.0f}")
    print(f"instructions per rejected call:  {results['reject']:,.0f}")
    print(f"ratio forwarded / rejected:      {results['forward'] / results['reject']:.2f}")
    print(f"annotations: {out}/{{forward,reject}}-{{inclusive,self}}.txt; dumps {out}/callgrind.{{forward,reject}}.out")
    for kind, what in (("reject", "rejected (no token)"), ("forward", "forwarded")):
        print(f"\nWhere a {what} call's instructions go ({out}/{kind}-split.md, bench/split.py):\n")
        print((out / f"{kind}-split.md").read_text())
    for kind, counts in syscalls.items():
        total = sum(counts.values())
        top = ", ".join(f"{name} {n / args.calls:.2f}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])[:6])
        print(f"syscalls per {kind} call (strace -c -f): {total / args.calls:.2f} ({top})")
    for kind, split in perf_split.items():
        print(f"perf cpu-clock samples by object, {kind}: " + ", ".join(f"{dso} {pct:.1f}%" for dso, pct in split))
    if perf_split:
        print(f"perf top symbols: {out}/perf-{{forward,reject}}-symbols.txt")
    print()
    print("Top inclusive costs of the forwarded calls (% of the forwarded dump):")
    text = (out / "forward-inclusive.txt").read_text()
    shown = 0
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)", line)
        if m and shown < 40:
            print(f"  {m.group(2):>6}%  {m.group(3)[:160]}")
            shown += 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except harness.HarnessError as e:
        print(f"PROFILE FAILED: {e}", file=sys.stderr)
        sys.exit(1)
