"""What a gateway keeps resident before its first call: the release binary started as the
benchmark starts it, up to its first SERVING health answer, under `perf record` counting every page
fault. Prints VmRSS and its anonymous and file parts, the resident KiB of each mapping, the faults
by mapping, and how many 64 KiB windows of the binary's text were faulted (the kernel maps the
pages around a faulting one that are in the page cache: fault-around), by the crate of the function
that first faulted in each. Needs perf (linux-perf) and root or perf_event_paranoid <= 1.

    target/bench-venv/bin/python bench/idle.py target/release/printjob-gateway
"""

from __future__ import annotations

import bisect
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc_h2
import harness


def crate(symbol: str) -> str:
    """The first path segment of a demangled name (`<h2::… as …>` gives h2)."""
    symbol = symbol.lstrip("<&*").removeprefix("dyn ").removeprefix("mut ")
    match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", symbol)
    return match.group(0) if match else symbol[:20]


def main() -> None:
    binary = sys.argv[1]
    work = Path(tempfile.mkdtemp(prefix="idle-"))
    data = work / "faults.data"
    port, admin_port = harness.free_ports(2)
    perf = harness.PROCS.start(
        ["perf", "record", "-q", "-e", "page-faults", "-c", "1", "-d", "-k", "CLOCK_MONOTONIC", "-o", str(data),
         "--", *harness.gateway_argv(binary, port, admin_port, "http://127.0.0.1:9")],
        work / "gateway.log",
    )
    harness.wait_until(lambda: grpc_h2.is_serving("127.0.0.1", admin_port), 20, "gateway SERVING", proc=perf)
    serving_at = time.clock_gettime(time.CLOCK_MONOTONIC)
    pid = int(subprocess.check_output(["pgrep", "-P", str(perf.pid)]).split()[0])
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    smaps = Path(f"/proc/{pid}/smaps").read_text()
    rss = {key: harness.status_kib(pid, key) for key in ("VmRSS", "RssAnon", "RssFile")}
    os.kill(pid, signal.SIGTERM)
    perf.wait(timeout=60)
    harness.PROCS.stop(perf)

    print("   ".join(f"{key} {kib} KiB" for key, kib in rss.items()))
    print("\nresident KiB by mapping:")
    resident = collections.Counter()
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps):
        head = block.split("\n", 1)[0].split()
        name = os.path.basename(head[5]) if len(head) > 5 else "[anon]"
        resident[(name, head[1])] += int(re.search(r"\nRss:\s+(\d+) kB", block).group(1))
    for (name, perms), kib in resident.most_common():
        if kib:
            print(f"  {kib:6d}  {perms}  {name}")

    regions = []
    for line in maps:
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        regions.append((lo, hi, fields[1], int(fields[2], 16), os.path.basename(fields[5]) if len(fields) > 5 else "[anon]"))
    regions.sort()
    starts = [r[0] for r in regions]
    loads = []
    for line in subprocess.check_output(["readelf", "-lW", binary], text=True).splitlines():
        fields = line.split()
        if fields and fields[0] == "LOAD":
            loads.append((int(fields[1], 16), int(fields[2], 16), int(fields[4], 16)))
    symbols = []
    for line in subprocess.check_output(["nm", "-C", "--defined-only", "-n", binary], text=True).splitlines():
        fields = line.split(" ", 2)
        if len(fields) == 3 and fields[1] in "tTwW":
            symbols.append((int(fields[0], 16), fields[2]))
    symbol_addrs = [s[0] for s in symbols]

    faults = collections.Counter()
    windows: dict[int, str] = {}
    script = subprocess.check_output(["perf", "script", "-i", str(data), "-F", "time,addr", "--ns"],
                                     text=True, stderr=subprocess.DEVNULL)
    for line in script.splitlines():
        fields = line.replace(":", " ").split()
        if len(fields) < 2 or float(fields[0]) > serving_at:
            continue
        addr = int(fields[1], 16)
        i = bisect.bisect_right(starts, addr) - 1
        if i < 0 or not regions[i][0] <= addr < regions[i][1]:
            faults[("?", "")] += 1
            continue
        lo, _, perms, offset, name = regions[i]
        faults[(name, perms)] += 1
        if name == os.path.basename(binary) and perms == "r-xp":
            file_offset = addr - lo + offset
            vaddr = next(v + file_offset - o for o, v, size in loads if o <= file_offset < o + size)
            j = bisect.bisect_right(symbol_addrs, vaddr) - 1
            windows.setdefault(addr // 65536, crate(symbols[j][1]) if j >= 0 else "?")
    print(f"\n{sum(faults.values())} page faults from exec to SERVING, by mapping:")
    for (name, perms), n in faults.most_common():
        print(f"  {n:6d}  {perms}  {name}")
    print(f"\nthe binary's text: {len(windows)} distinct 64 KiB windows faulted, by the crate that first faulted in each:")
    for name, n in collections.Counter(windows.values()).most_common():
        print(f"  {n:4d}  {name}")


if __name__ == "__main__":
    main()
