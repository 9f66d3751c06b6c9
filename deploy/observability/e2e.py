"""End-to-end check of the alert rules and the Grafana dashboard against a real Prometheus.

Starts the Graph simulator (`printjob-gateway simulate`, also the Entra token endpoint), the
gateway in front of it (TLS with a certificate made here, the on-behalf-of exchange, a small
--max-in-flight and --max-connections), and Prometheus (Debian's package) on loopback scraping
the gateway every second. Then, for each fault, it drives the fault, waits until Prometheus'
HTTP API shows the matching alert firing, ends the fault and waits until the alert resolves:

    throttling (429)        -> PrintJobGatewayGraphThrottled
    Graph answering 5xx     -> PrintJobGatewayGraphUnavailable, PrintJobGatewayCallsFailing
    Graph down              -> PrintJobGatewayGraphUnavailable, PrintJobGatewayCallsFailing
    a failing exchange      -> PrintJobGatewayTokenExchangeFailing
    the in-flight cap       -> PrintJobGatewayNearInFlightLimit, PrintJobGatewayShedding
    connections at the cap  -> PrintJobGatewayNearConnectionLimit
    a TLS reload failing    -> PrintJobGatewayTLSReloadFailed
    a certificate near expiry -> PrintJobGatewayCertificateExpiresSoon
    the gateway stopped     -> PrintJobGatewayNotReady

Prometheus loads a copy of rules.yml with every range (`[5m]`) cut to 10 s and every `for:` to
2 s, and nothing else changed: the expressions, label matchers and thresholds are the real ones,
so this proves that each rule selects the series the gateway really writes and that the fault
drives it over its threshold and back. The real windows and `for:` durations are proved by
promtool's unit tests (rules.test.yml), which run with a simulated clock.

Then it checks that every metric that a rule or a dashboard panel names is one the gateway
exposes (the `# TYPE` lines of a real scrape), and that this check fails on a rule or panel that
names a missing metric; that every dashboard panel's queries return a series from this
Prometheus; and `promtool check metrics` on a real scrape (see docs/observability.md "Metrics" for the
`_total` naming of the two formats).

    python3 deploy/observability/e2e.py --gateway target/debug/printjob-gateway

Needs: prometheus and promtool on PATH, grpcurl on PATH, and the Python packages asn1crypto and
ecdsa (pure Python: the test certificates are made without OpenSSL). Exits non-zero on the first
failure, printing the logs of what it started.
"""

import argparse
import base64
import datetime
import hashlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import ecdsa
from asn1crypto import keys, pem, x509

HERE = pathlib.Path(__file__).resolve().parent
RULES = HERE / "rules.yml"
DASHBOARD = HERE / "grafana-dashboard.json"

# How long an alert may take to fire or resolve. The scaled rules need about 15 s (a 10 s window,
# 2 s `for:`, 1 s scrapes and evaluations); the margin is for a loaded CI machine.
PATIENCE = 90.0
# The ranges and `for:` of the copy of the rules Prometheus loads.
RANGE = "10s"
FOR = "2s"

MAX_IN_FLIGHT = 4
MAX_CONNECTIONS = 10

def caller_token(user: str) -> str:
    """An unsigned JWT for `user`: the gateway exchanges only tokens shaped as JWTs, and the
    simulated Entra takes any."""
    part = lambda value: base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': user})}.e2e"


USER = caller_token("e2e-user")
# Entra answers 503 to the exchange of this caller's token.
ENTRA_DOWN_USER = caller_token("entra-down-user")

SCENARIO = {
    "printers": [
        {"id": "printer-1", "anyJob": True},
        {"id": "throttled-printer", "anyJob": True},
        {"id": "unavailable-printer", "anyJob": True},
        {"id": "held-printer", "anyJob": True},
        {"id": "done-printer", "jobs": [{"id": "3", "state": "completed"}]},
    ],
    "rules": [
        {"printer": "throttled-printer", "status": 429, "retryAfter": 0.2},
        {"printer": "unavailable-printer", "status": 503, "retryAfter": 0.2},
        # Holds each call longer than any phase of this check.
        {"printer": "held-printer", "delay": "600s"},
    ],
    "entra": {
        "tenants": ["contoso.onmicrosoft.com"],
        "clients": [{"id": "my-api", "secret": "e2e-secret"}],
        "rules": [{"assertion": ENTRA_DOWN_USER, "status": 503}],
    },
}


class Failed(Exception):
    pass


def log(message):
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- certificates, without OpenSSL ------------------------------------------------------------


def certificate(days: float) -> str:
    """A self-signed ECDSA P-256 certificate for localhost, valid for `days` from now, and its key,
    in one PEM text (the gateway takes the same file as --tls-cert and --tls-key, so one rename
    replaces both)."""
    key = ecdsa.SigningKey.generate(curve=ecdsa.NIST256p, hashfunc=hashlib.sha256)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    name = x509.Name.build({"common_name": "localhost"})
    tbs = x509.TbsCertificate(
        {
            "version": "v3",
            "serial_number": int.from_bytes(os.urandom(8), "big") >> 1,
            "signature": {"algorithm": "sha256_ecdsa"},
            "issuer": name,
            "validity": {
                "not_before": x509.Time({"utc_time": now - datetime.timedelta(days=1)}),
                "not_after": x509.Time({"utc_time": now + datetime.timedelta(days=days)}),
            },
            "subject": name,
            "subject_public_key_info": keys.PublicKeyInfo.load(key.get_verifying_key().to_der()),
            "extensions": [
                {
                    "extn_id": "subject_alt_name",
                    "critical": False,
                    "extn_value": [x509.GeneralName({"dns_name": "localhost"})],
                }
            ],
        }
    )
    signature = key.sign_deterministic(
        tbs.dump(), hashfunc=hashlib.sha256, sigencode=ecdsa.util.sigencode_der
    )
    cert = x509.Certificate(
        {
            "tbs_certificate": tbs,
            "signature_algorithm": {"algorithm": "sha256_ecdsa"},
            "signature_value": signature,
        }
    )
    return pem.armor("CERTIFICATE", cert.dump()).decode() + key.to_pem().decode()


def replace(path: pathlib.Path, text: str):
    """Replaces the file in one rename, as a deploy tool does."""
    next_path = path.with_suffix(".next")
    next_path.write_text(text)
    os.rename(next_path, path)


# --- processes --------------------------------------------------------------------------------


class Process:
    """A child process whose output goes to a log file; stopped by `stop`."""

    def __init__(self, name, args, work):
        self.name = name
        self.args = args
        self.log_path = work / f"{name}.log"
        self.log_file = open(self.log_path, "a")
        # A process started again under the same name appends: only its own lines count.
        self.log_start = self.log_file.tell()
        self.proc = subprocess.Popen(
            args, stdout=self.log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()

    def wait_for_log(self, pattern, within=60.0):
        """The first log line matching `pattern` (a regex), waiting for it."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with open(self.log_path, errors="replace") as log_file:
                log_file.seek(self.log_start)
                lines = log_file.read().splitlines()
            for line in lines:
                match = re.search(pattern, line)
                if match:
                    return match
            if self.proc.poll() is not None:
                raise Failed(f"{self.name} exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise Failed(f"{self.name} never logged {pattern!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample(scrape: str, series: str) -> float:
    """The value of the sample `series` (name and labels) in a scrape, 0 when absent."""
    for line in scrape.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def http_get(url, accept=None, timeout=10.0):
    request = urllib.request.Request(url)
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.headers.get("Content-Type", ""), response.read().decode()


# --- the load ---------------------------------------------------------------------------------


class Load:
    """Sends Cancel calls with grpcurl, a few a second, of the kind `mode` names, in the background."""

    MODES = {
        "ok": ("printer-1", "1", USER),
        "throttled": ("throttled-printer", "1", USER),
        "unavailable": ("unavailable-printer", "1", USER),
        "exchange-failing": ("printer-1", "1", ENTRA_DOWN_USER),
        # A 409 and a read of the job: the job-reads panel has something to show.
        "done": ("done-printer", "3", USER),
    }

    def __init__(self, grpcurl, api_port):
        self.grpcurl = grpcurl
        self.api_port = api_port
        self.mode = "ok"
        self.running = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def command(self, printer, job, token, max_time=20):
        return [
            self.grpcurl,
            "-insecure",
            "-max-time",
            str(max_time),
            "-H",
            f"authorization: Bearer {token}",
            "-d",
            json.dumps({"printer_id": printer, "print_job_id": job}),
            f"127.0.0.1:{self.api_port}",
            "graph.print.v1.PrintJobService/Cancel",
        ]

    def run(self):
        while not self.stopped.wait(0.25):
            self.running = [p for p in self.running if p.poll() is None]
            if self.mode is None:
                continue
            # Bounded: never more than 8 of these calls at once, whatever the machine's speed.
            if len(self.running) < 8:
                printer, job, token = self.MODES[self.mode]
                self.running.append(
                    subprocess.Popen(
                        self.command(printer, job, token),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )

    def pause(self):
        """Stops sending and waits for the calls sent to end: the faults that count calls or
        connections in flight must not race with the load's own."""
        self.mode = None
        deadline = time.monotonic() + PATIENCE
        while any(p.poll() is None for p in list(self.running)):
            if time.monotonic() > deadline:
                raise Failed("the load's calls did not end")
            time.sleep(0.1)

    def held_calls(self, count):
        """`count` calls that the simulator holds, until they are killed."""
        return [
            subprocess.Popen(
                self.command("held-printer", "1", USER, max_time=600),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(count)
        ]

    def stop(self):
        self.stopped.set()
        self.thread.join()
        for proc in self.running:
            proc.kill()
            proc.wait()


# --- Prometheus -------------------------------------------------------------------------------


def scaled_rules(text: str) -> str:
    """rules.yml with every range selector cut to RANGE and every `for:` to FOR."""
    text = re.sub(r"\[(\d+[smhd])\]", f"[{RANGE}]", text)
    return re.sub(r"(?m)^(\s*)for: \S+$", rf"\g<1>for: {FOR}", text)


class Prometheus:
    def __init__(self, work, admin_port):
        (work / "rules-e2e.yml").write_text(scaled_rules(RULES.read_text()))
        config = work / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "rule_files:\n"
            f"  - {work / 'rules-e2e.yml'}\n"
            "scrape_configs:\n"
            "  - job_name: printjob-gateway\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{admin_port}']\n"
        )
        check = subprocess.run(
            ["promtool", "check", "config", str(config)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise Failed(f"promtool check config:\n{check.stdout}{check.stderr}")
        # Prometheus cannot listen on port 0: a free port, tried again if another process took it.
        for attempt in range(5):
            self.port = free_port()
            self.process = Process(
                f"prometheus-{attempt}",
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={work / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                work,
            )
            if self.wait_ready():
                return
            self.process.stop()
        raise Failed("Prometheus did not start")

    def wait_ready(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.proc.poll() is not None:
                return False
            try:
                http_get(f"http://127.0.0.1:{self.port}/-/ready", timeout=2)
                return True
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        return False

    def api(self, path, **params):
        query = urllib.parse.urlencode(params)
        _, body = http_get(f"http://127.0.0.1:{self.port}/api/v1/{path}?{query}")
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise Failed(f"{path} {params}: {answer}")
        return answer["data"]

    def alert_states(self):
        return {
            alert["labels"]["alertname"]: alert["state"] for alert in self.api("alerts")["alerts"]
        }

    def wait_for_alerts(self, names, firing: bool):
        want = "firing" if firing else "resolved"
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            states = self.alert_states()
            if all((states.get(name) == "firing") == firing for name in names):
                log(f"  {', '.join(names)}: {want}")
                return
            time.sleep(0.5)
        seen = {
            expr: [(r["metric"], r["value"][1]) for r in self.query(expr)]
            for expr in [
                "printjob_gateway_calls_in_flight",
                "printjob_gateway_overload_rejections_total",
                "sum by (code) (printjob_gateway_calls_total)",
            ]
        }
        raise Failed(f"{names} not {want} within {PATIENCE} s: {self.alert_states()}; {seen}")

    def query(self, expr):
        return self.api("query", query=expr)["result"]


# --- metric names -----------------------------------------------------------------------------


def exposed_names(scrape: str) -> set:
    """Every sample name the gateway exposes, from the `# TYPE` lines of a Prometheus text
    scrape (a family with no samples yet counts: a rule may name a counter that has not moved)."""
    names = {"up"}
    for line in scrape.splitlines():
        match = re.match(r"# TYPE (\S+) (\S+)", line)
        if not match:
            continue
        name, kind = match.groups()
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def named_metrics(expr: str) -> set:
    """The metrics an expression names: the gateway's (`printjob_gateway_…`), the process ones and
    `up`. (Names of other exporters are not this check's business.)"""
    names = set(re.findall(r"\b(printjob_gateway_[a-z0-9_]+|process_[a-z0-9_]+)\b", expr))
    if re.search(r"\bup\s*\{", expr):
        names.add("up")
    return names


def rule_exprs(text: str) -> list:
    """The `expr:` of each rule in a rule file, as text (block scalars included)."""
    exprs = []
    pattern = r"(?m)^([ ]*)expr: \|\n((?:\1[ ]{2}.*\n)+)|^[ ]*expr: (.+)$"
    for match in re.finditer(pattern, text):
        exprs.append(match.group(2) or match.group(3))
    return exprs


def panel_targets(dashboard: dict) -> list:
    """(panel title, expr) of every target of every panel, rows' panels included."""
    found = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((panel["title"], target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return found


def missing_names(exprs, exposed) -> dict:
    """For each expression naming a metric the gateway does not expose: those names."""
    missing = {}
    for where, expr in exprs:
        unknown = named_metrics(expr) - exposed
        if unknown:
            missing[where] = sorted(unknown)
    return missing


def check_names(scrape: str):
    exposed = exposed_names(scrape)
    rules_text = RULES.read_text()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [(f"rule {i}", e) for i, e in enumerate(rule_exprs(rules_text))]
    if len(exprs) != rules_text.count("- alert:"):
        raise Failed(f"found {len(exprs)} exprs for {rules_text.count('- alert:')} alerts")
    exprs += [(f"panel {title!r}", expr) for title, expr in panel_targets(dashboard)]
    missing = missing_names(exprs, exposed)
    if missing:
        raise Failed(f"rules or panels name metrics the gateway does not expose: {missing}")
    named = set().union(*(named_metrics(e) for _, e in exprs))
    log(f"  every rule and panel names metrics the gateway exposes ({len(named)} names)")
    # The check itself: a rule and a panel naming metrics that do not exist are found.
    broken_rules = rules_text.replace(
        "printjob_gateway_calls_in_flight_limit", "printjob_gateway_graph_calls_held_limit"
    )
    broken_dashboard = json.loads(DASHBOARD.read_text())
    broken_dashboard["panels"].append(
        {"title": "broken", "targets": [{"expr": "rate(printjob_gateway_no_such_total[1m])"}]}
    )
    broken = [(f"rule {i}", e) for i, e in enumerate(rule_exprs(broken_rules))]
    broken += [(f"panel {t!r}", e) for t, e in panel_targets(broken_dashboard)]
    found = missing_names(broken, exposed)
    expected = {
        "rule 4": ["printjob_gateway_graph_calls_held_limit"],
        "panel 'broken'": ["printjob_gateway_no_such_total"],
    }
    if found != expected:
        raise Failed(f"the name check missed a missing metric: {found} != {expected}")
    log("  and a rule or panel naming a missing metric is caught")


def check_panels(prometheus: Prometheus):
    dashboard = json.loads(DASHBOARD.read_text())
    empty = []
    targets = panel_targets(dashboard)
    for title, expr in targets:
        concrete = (
            expr.replace("$__rate_interval", "1m")
            .replace("$__interval", "15s")
            .replace("$__range", "15m")
            .replace('"$instance"', '".+"')
            .replace('"$job"', '".+"')
        )
        if not prometheus.query(concrete):
            empty.append((title, concrete))
    if empty:
        raise Failed(f"dashboard queries that return no series: {empty}")
    log(f"  every dashboard query returns a series ({len(targets)} queries)")


def check_metrics_format(admin_port):
    """promtool check metrics on real scrapes in both formats."""
    url = f"http://127.0.0.1:{admin_port}/metrics"
    content_type, text = http_get(url)
    if not content_type.startswith("text/plain; version=0.0.4"):
        raise Failed(f"a scrape without Accept got {content_type}")
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
    )
    if result.returncode != 0 or result.stdout.strip() or result.stderr.strip():
        raise Failed(f"promtool check metrics:\n{result.stdout}{result.stderr}")
    log("  promtool check metrics: the Prometheus text scrape is clean")
    # The OpenMetrics scrape (what Prometheus asks for): promtool reads only the Prometheus text
    # format, where a counter's HELP names `…_total`, and reports each counter as having no help
    # text. Shown, and checked to be that and nothing else.
    content_type, text = http_get(url, accept="application/openmetrics-text;version=1.0.0")
    if not content_type.startswith("application/openmetrics-text"):
        raise Failed(f"an OpenMetrics scrape got {content_type}")
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
    )
    findings = (result.stdout + result.stderr).strip().splitlines()
    counters = {
        m.group(1) + "_total" for m in re.finditer(r"(?m)^# TYPE (\S+) counter$", text)
    }
    unexpected = [
        f for f in findings if not (f.endswith(" no help text") and f.split()[0] in counters)
    ]
    if unexpected:
        raise Failed(f"promtool on the OpenMetrics scrape: {unexpected}")
    log(
        f"  promtool on the OpenMetrics scrape: {len(findings)} findings, each a counter's"
        " `_total` HELP that OpenMetrics names without the suffix"
    )


# --- the run ----------------------------------------------------------------------------------


def connect_h2(port):
    """An HTTP/2 connection over TLS, the preface sent, held open."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    # The preface and an empty SETTINGS frame.
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    return sock


def run(args, work):
    started = []
    try:
        pem_path = work / "tls.pem"
        pem_path.write_text(certificate(days=90))
        secret = work / "client-secret"
        secret.write_text("e2e-secret\n")
        scenario = work / "scenario.json"
        scenario.write_text(json.dumps(SCENARIO))

        def simulator():
            sim = Process(
                "simulator",
                [args.gateway, "simulate", "--listen", f"127.0.0.1:{sim_port}", "--scenario", str(scenario)],
                work,
            )
            started.append(sim)
            sim.wait_for_log("simulated Graph serving")
            return sim

        # The simulator and the gateway are restarted on the same ports (Graph down, the gateway
        # stopped): ports picked here, so that the restarted ones and Prometheus find them.
        sim_port, api_port, admin_port = free_port(), free_port(), free_port()
        sim = simulator()

        def gateway():
            gw = Process(
                "gateway",
                [
                    args.gateway,
                    "--graph-url", f"http://127.0.0.1:{sim_port}/v1.0",
                    "--listen", f"127.0.0.1:{api_port}",
                    "--admin-listen", f"127.0.0.1:{admin_port}",
                    "--tls-cert", str(pem_path),
                    "--tls-key", str(pem_path),
                    "--max-in-flight", str(MAX_IN_FLIGHT),
                    "--max-connections", str(MAX_CONNECTIONS),
                    "--token-exchange", "obo",
                    "--entra-authority", f"http://127.0.0.1:{sim_port}",
                    "--tenant-id", "contoso.onmicrosoft.com",
                    "--client-id", "my-api",
                    "--client-secret-file", str(secret),
                    "--log-format", "json",
                ],
                work,
            )
            started.append(gw)
            gw.wait_for_log("printjob-gateway serving")
            return gw

        gw = gateway()
        prometheus = Prometheus(work, admin_port)
        started.append(prometheus.process)
        log(f"Prometheus on 127.0.0.1:{prometheus.port}, gateway admin on 127.0.0.1:{admin_port}")

        load = Load(args.grpcurl, api_port)
        try:
            # A quiet start: the target is up and nothing fires.
            deadline = time.monotonic() + PATIENCE
            while not prometheus.query('up{job="printjob-gateway"} == 1'):
                if time.monotonic() > deadline:
                    raise Failed("Prometheus never scraped the gateway")
                time.sleep(0.5)
            time.sleep(12)  # one window of ok calls, so that every ratio has a denominator
            firing = [n for n, s in prometheus.alert_states().items() if s == "firing"]
            if firing:
                raise Failed(f"alerts firing before any fault: {firing}")
            log("quiet start: no alert firing")

            def fault(title, alerts, start, end):
                log(title)
                prometheus.wait_for_alerts(alerts, firing=False)
                start()
                prometheus.wait_for_alerts(alerts, firing=True)
                end()
                prometheus.wait_for_alerts(alerts, firing=False)

            # First: the restart resets the gateway's counters, and the dashboard check at the end
            # wants the series the later faults create.
            def gateway_stopped():
                gw.stop()

            def gateway_back():
                nonlocal gw
                gw = gateway()

            fault("the gateway stopped", ["PrintJobGatewayNotReady"], gateway_stopped, gateway_back)

            def mode(name):
                return lambda: setattr(load, "mode", name)

            fault("Graph throttles (429)", ["PrintJobGatewayGraphThrottled"], mode("throttled"), mode("ok"))
            fault(
                "Graph answers 503",
                ["PrintJobGatewayGraphUnavailable", "PrintJobGatewayCallsFailing"],
                mode("unavailable"),
                mode("ok"),
            )
            fault("the token exchange fails (Entra 503)", ["PrintJobGatewayTokenExchangeFailing"], mode("exchange-failing"), mode("ok"))

            def graph_down():
                sim.stop()

            def graph_back():
                nonlocal sim
                sim = simulator()

            fault(
                "Graph down",
                ["PrintJobGatewayGraphUnavailable", "PrintJobGatewayCallsFailing"],
                graph_down,
                graph_back,
            )

            held = []

            def hold_calls():
                # The load pauses while the held calls take every place, so that none of them
                # is the one refused; then it resumes, and its calls are refused.
                load.pause()
                held.extend(load.held_calls(MAX_IN_FLIGHT))
                in_flight = "printjob_gateway_calls_in_flight"
                deadline = time.monotonic() + PATIENCE
                while sample(http_get(f"http://127.0.0.1:{admin_port}/metrics")[1], in_flight) < MAX_IN_FLIGHT:
                    if time.monotonic() > deadline or any(p.poll() is not None for p in held):
                        raise Failed(f"the held calls did not reach --max-in-flight ({MAX_IN_FLIGHT})")
                    time.sleep(0.1)
                load.mode = "ok"

            fault(
                "calls held at --max-in-flight",
                ["PrintJobGatewayNearInFlightLimit", "PrintJobGatewayShedding"],
                hold_calls,
                lambda: [p.kill() or p.wait() for p in held],
            )

            connections = []

            def open_connections():
                # 9 of 10; the load pauses, so that its own connections do not push the listener
                # to its limit, where it would close the ones still in their handshake.
                load.pause()
                connections.extend(connect_h2(api_port) for _ in range(MAX_CONNECTIONS - 1))

            def close_connections():
                for connection in connections:
                    connection.close()
                load.mode = "ok"

            fault(
                "connections near --max-connections",
                ["PrintJobGatewayNearConnectionLimit"],
                open_connections,
                close_connections,
            )

            fault(
                "renewed TLS files that do not load",
                ["PrintJobGatewayTLSReloadFailed"],
                lambda: replace(pem_path, "not a certificate\n"),
                lambda: replace(pem_path, certificate(days=90)),
            )
            fault(
                "a serving certificate that expires in 10 days",
                ["PrintJobGatewayCertificateExpiresSoon"],
                lambda: replace(pem_path, certificate(days=10)),
                lambda: replace(pem_path, certificate(days=90)),
            )


            # What leaves a trace in the rarer panels: job reads after a 409, and a connection
            # that fails its TLS handshake.
            with socket.create_connection(("127.0.0.1", api_port), timeout=10) as plain:
                plain.sendall(b"GET / HTTP/1.1\r\n\r\n")
                plain.recv(1024)
            load.mode = "done"
            time.sleep(5)
            load.mode = "ok"
            time.sleep(5)
        finally:
            load.stop()

        log("metric names, dashboard queries, promtool check metrics")
        _, scrape = http_get(f"http://127.0.0.1:{admin_port}/metrics")
        check_names(scrape)
        check_panels(prometheus)
        check_metrics_format(admin_port)
        log("end to end: every check passed")
    except BaseException:
        for process in started:
            # The gateway logs a line per call: the ones that are not a plain success say more.
            lines = [
                line
                for line in process.log_path.read_text(errors="replace").splitlines()
                if '"grpc_code":"OK"' not in line
            ]
            print(f"\n--- {process.log_path.name} (last 60 lines, successful calls left out) ---", file=sys.stderr)
            print("\n".join(lines[-60:]), file=sys.stderr)
        raise
    finally:
        for process in reversed(started):
            process.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", required=True, help="the printjob-gateway binary")
    parser.add_argument("--grpcurl", default="grpcurl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="printjob-gateway-e2e-") as work:
        try:
            run(args, pathlib.Path(work))
        except Failed as failure:
            print(f"\ne2e: FAILED: {failure}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
