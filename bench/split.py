#!/usr/bin/env python3
"""Where a call's instructions go, from one callgrind dump of N calls (bench/profile.py writes
them): the self cost of every function, summed by the crate or gateway module it belongs to (self
costs add up to the whole, so the split has no overlap), the inclusive cost of the layers a call
passes through (these nest, so they overlap), and malloc/free calls per call (callgrind counts
calls exactly).

    python3 bench/split.py target/bench/profile/callgrind.reject.out 5000
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# Self cost by who owns the function: the first crate path in its (demangled) name, so that
# `<h2::server::Peer as h2::proto::peer::Peer>::convert_poll_message` is h2's and a generic of
# hyper instantiated for a gateway type is hyper's. The gateway's own code is split by module.
BUCKETS = [
    ("h2: HTTP/2 framing and HPACK", ("h2",)),
    ("hyper, hyper-util: HTTP/2 server and client glue", ("hyper", "hyper_util")),
    ("http, http-body: header maps, URIs, bodies", ("http", "http_body", "http_body_util")),
    ("tonic, prost, axum, tower: gRPC codec, status, routing", ("tonic", "tonic_types", "prost", "axum", "axum_core", "tower", "tower_service", "tower_layer")),
    ("tokio: scheduler, I/O driver, timers, sync", ("tokio", "tokio_util", "mio")),
    ("tracing: spans and events (filtered out at warn)", ("tracing", "tracing_core", "tracing_subscriber", "tracing_opentelemetry")),
    ("prometheus-client: metric families and label lookups", ("prometheus_client",)),
    ("base64, percent-encoding: error details and grpc-message", ("base64", "percent_encoding")),
    ("gateway: ingress layers (src/server/)", ("printjob_gateway::server",)),
    ("gateway: service, status, request validation", ("printjob_gateway::service", "printjob_gateway::status", "printjob_gateway::request", "printjob_gateway::auth", "printjob_gateway::error", "printjob_gateway::proto")),
    ("gateway: metrics (src/metrics.rs)", ("printjob_gateway::metrics",)),
    ("gateway: egress, Graph client, retry, credentials", ("printjob_gateway::egress", "printjob_gateway::graph", "printjob_gateway::retry", "printjob_gateway::backoff", "printjob_gateway::credentials", "printjob_gateway::entra")),
    ("gateway: other", ("printjob_gateway",)),
    ("libc malloc, free, realloc", ("malloc", "free", "_int_malloc", "_int_free", "realloc", "_int_realloc", "malloc_consolidate", "tcache", "arena", "__libc_malloc", "cfree", "unlink_chunk", "_int_free_merge_chunk", "_int_free_create_chunk", "_int_free_maybe_consolidate", "__rust_alloc", "__rust_dealloc", "__rust_realloc", "__rdl_alloc", "__rdl_dealloc", "__rdl_realloc")),
    ("libc memcpy, memmove, memcmp, memset", ("__memcpy", "__memmove", "__memcmp", "__memset", "memcpy", "memmove", "memcmp", "memset", "__memchr", "__strlen", "bcmp")),
    ("std, core, alloc (hashing, formatting, strings)", ("std", "core", "alloc", "hashbrown")),
]

# Inclusive cost of the frames a served call passes through, outermost first: these nest.
LAYERS = [
    ("hyper's HTTP/2 connection task (h2 reads, writes, HPACK)", r"h2::proto::connection::Connection<T,P,B>::poll"),
    ("  HPACK encoding of response headers and trailers", r"h2::frame::headers::HeaderBlock::into_encoding$"),
    ("  HPACK decoding of request headers", r"h2::frame::headers::HeaderBlock::load$"),
    ("hyper's stream task (the service's future, body piping)", r"<hyper::proto::h2::server::H2Stream<F,B,Ex> as core::future::future::Future>::poll$"),
    ("  connection slots and stream accounting (server::conn::PerConnection)", r"<printjob_gateway::server::conn::PerConnection as tower_service::Service<.*>>::call::\{\{closure\}\}$"),
    ("  axum/tonic routing (RouteFuture)", r"<axum::routing::route::RouteFuture<E> as core::future::future::Future>::poll$"),
    ("  admission at the headers (server::admission::Admitted::call)", r"<printjob_gateway::server::admission::Admitted<S> as tower_service::Service<.*>>::call$"),
    ("  tonic's generated server: decode, handler, encode", r"<printjob_gateway::proto::graph_print_v1::print_job_service_server::PrintJobServiceServer<T> as tower_service::Service<.*>>::call::\{\{closure\}\}$"),
    ("    the handler (PrintJobGateway::cancel)", r"<printjob_gateway::service::PrintJobGateway as .*PrintJobService>::cancel::\{\{closure\}\}$"),
    ("    the Graph call (call_graph: credentials, retry, egress pool)", r"printjob_gateway::service::PrintJobGateway::call_graph::\{\{closure\}\}$"),
    ("    the answer (PrintJobGateway::answer: span fields, metrics, status)", r"printjob_gateway::service::PrintJobGateway::answer$"),
    ("    a refusal before the handler (PrintJobGateway::answer_early)", r"printjob_gateway::service::PrintJobGateway::answer_early$"),
    ("    the error's gRPC status and details (CancelError::to_status)", r"printjob_gateway::status::<impl printjob_gateway::error::CancelError>::to_status$"),
    ("    the call's span (call_span)", r"printjob_gateway::service::call_span$"),
    ("    the call's metrics (Metrics::call_answered)", r"printjob_gateway::metrics::Metrics::call_answered$"),
    ("hyper's HTTP/2 client connection task (to the upstream)", r"<h2::client::Connection<T,B> as core::future::future::Future>::poll$"),
    ("tracing: every tracing function (nested)", r"^tracing(_core|_subscriber)?::"),
    ("malloc (all callers)", r"^malloc$"),
    ("free (all callers)", r"^free$"),
]

LINE = re.compile(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(?:\S*?:)?(.*?)(?: \[[^\]]*\])?$")


def functions(dump: Path, inclusive: bool) -> dict[str, int]:
    """Cost by function name (demangled, file prefix dropped) from callgrind_annotate."""
    argv = ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100", str(dump)]
    text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    costs: dict[str, int] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m and "PROGRAM TOTALS" not in line:
            name = m.group(2).strip()
            # callgrind_annotate prints `file:function`; a file of `???` or a path is dropped above.
            costs[name] = max(costs.get(name, 0), int(m.group(1).replace(",", "")))
    return costs


def owner(name: str) -> str:
    """The crate (or gateway module) a function belongs to: the first path in its name."""
    stripped = name.lstrip("<&*( ").removeprefix("mut ").removeprefix("dyn ")
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(?:::([A-Za-z_][A-Za-z0-9_]*))?", stripped)
    if not m:
        return name
    if m.group(1) == "printjob_gateway" and m.group(2):
        return f"printjob_gateway::{m.group(2)}"
    return m.group(1)


def bucket(name: str) -> str:
    """The row of the self-cost split a function belongs to: the first whose prefix its owner has
    (libc's variants such as `__memcpy_avx_unaligned_erms` share their family's row)."""
    who = owner(name)
    for label, prefixes in BUCKETS:
        if any(who == prefix or who.startswith(prefix + ("::" if "::" in prefix else "")) for prefix in prefixes):
            return label
        if any(who.startswith(prefix) for prefix in prefixes if prefix.startswith("__")):
            return label
    return "other (kernel entry stubs, libc, unresolved)"


def parse(dump: Path, callees: tuple[str, ...]) -> tuple[dict[str, int], dict[str, int]]:
    """Self cost by function name, straight from the dump (a cost line right after `calls=` is
    the call's inclusive cost, not the caller's own), and how often each of `callees` was
    called."""
    names: dict[str, str] = {}
    self_costs: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    function, callee, call_cost_next = "?", None, False
    ref = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")
    for line in dump.read_text(errors="replace").splitlines():
        m = ref.match(line)
        if m:
            if m.group(3):
                names[m.group(2)] = m.group(3)
            if m.group(1) == "fn":
                function = names.get(m.group(2), "?")
            else:
                callee = names.get(m.group(2))
            continue
        if line.startswith("calls="):
            call_cost_next = True
            if callee in callees:
                counts[callee] += int(line.split()[0].removeprefix("calls="))
            continue
        if line[:1].isdigit() or line[:1] in "+-*":
            if call_cost_next:
                call_cost_next = False
            else:
                fields = line.split()
                if len(fields) >= 2:
                    self_costs[function] += int(fields[1])
    return self_costs, counts


def split(dump: Path, calls: int) -> str:
    """The split of one dump, as Markdown tables, instructions per call."""
    self_costs, counted = parse(dump, ("malloc", "free", "realloc", "calloc"))
    total = sum(self_costs.values())
    by_bucket: dict[str, int] = defaultdict(int)
    for name, cost in self_costs.items():
        by_bucket[bucket(name)] += cost
    rows = ["| Self cost by owner (adds up to the total) | Instructions per call | Share |", "|---|---|---|"]
    for label, cost in sorted(by_bucket.items(), key=lambda kv: -kv[1]):
        rows.append(f"| {label} | {cost / calls:,.0f} | {100 * cost / total:.1f}% |")
    rows.append(f"| **total** | **{total / calls:,.0f}** | 100% |")

    inclusive = functions(dump, inclusive=True)
    rows += ["", "| Inclusive cost of a frame (nested: these overlap) | Instructions per call | Share |", "|---|---|---|"]
    for label, pattern in LAYERS:
        regex = re.compile(pattern)
        matching = [cost for name, cost in inclusive.items() if regex.search(name)]
        if not matching:
            continue
        # A frame that recurses (`'2`) or has several instances is shown by its largest entry;
        # for "every tracing function" the entries nest, so the largest is the outermost.
        cost = max(matching)
        rows.append(f"| {label.replace('  ', '&nbsp;&nbsp;')} | {cost / calls:,.0f} | {100 * cost / total:.1f}% |")

    rows += ["", "Allocator calls per call: " + ", ".join(f"{name} {counted.get(name, 0) / calls:.1f}" for name in ("malloc", "free", "realloc", "calloc"))]
    return "\n".join(rows)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(split(Path(sys.argv[1]), int(sys.argv[2])))
