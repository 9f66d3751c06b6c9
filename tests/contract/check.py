#!/usr/bin/env python3
"""Checks the gateway and the simulator against Graph's contract, graph-print-v1.yaml, with openapi-core.

Both ways, as CI runs it (.ci/run, after the interop suite):

    check.py selftest                 a wrong request and a wrong answer fail the check; right ones pass
    check.py requests FILE...         every Graph request in FILE (the simulator's GET /__requests, as
                                      tests/interop/run.sh saves it) is a request the contract allows
    check.py scenarios --binary BIN   every answer the simulator gives, in each scenario of
                                      tests/contract/scenarios/ and the built-in one, is one the contract
                                      allows (and so is each request that asked for it)

Exits 1 with each violation listed when the contract is broken, 0 otherwise.
"""

import argparse
import base64
import concurrent.futures
import json
import pathlib
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

HERE = pathlib.Path(__file__).resolve().parent
CONTRACT = HERE / "graph-print-v1.yaml"
SCENARIOS = HERE / "scenarios"
REPO = HERE.parent.parent
BUILTIN = REPO / "src" / "simulator" / "default-scenario.json"
TOKEN = "contract-check-token"


class Contract:
    def __init__(self):
        self.api = OpenAPI.from_file_path(str(CONTRACT))

    def request_errors(self, method, url, headers, body_length=0):
        """What is wrong with a request, as a list of strings (empty: it is allowed)."""
        request = mock_request(method, url, headers)
        errors = []
        try:
            self.api.validate_request(request)
        except Exception as error:  # openapi-core raises one error class per kind of violation
            errors.append(describe(error))
        # Graph: "Do not supply a request body with this method" (printjob-cancel.md); a GET has none.
        if body_length:
            errors.append(f"a body of {body_length} bytes, where Graph takes none")
        return errors

    def response_errors(self, method, url, headers, status, response_headers, body):
        request = mock_request(method, url, headers)
        content_type = response_headers.get("content-type", "").split(";")[0].strip()
        response = MockResponse(body, status_code=status, headers=response_headers,
                                content_type=content_type or None)
        try:
            self.api.validate_response(request, response)
        except Exception as error:
            return [describe(error)]
        return []


def describe(error):
    text = f"{type(error).__name__}: {str(error)[:300]}"
    for cause in getattr(error, "schema_errors", None) or ():
        text += f"\n      {cause.message} at {list(cause.absolute_path)}"
    if error.__cause__ is not None:
        text += f"\n      caused by {type(error.__cause__).__name__}: {error.__cause__}"
        for cause in getattr(error.__cause__, "schema_errors", None) or ():
            text += f"\n      {cause.message} at {list(cause.absolute_path)}"
    return text


def mock_request(method, url, headers):
    parts = urllib.parse.urlsplit(url)
    args = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return MockRequest(f"{parts.scheme}://{parts.netloc}", method, parts.path, args=args,
                       headers=headers, data=b"")


# ---------------------------------------------------------------------------------------------
# requests: what the gateway sent during the interop suite.

def check_requests(contract, files):
    failures, checked = [], 0
    for file in files:
        for entry in json.loads(pathlib.Path(file).read_text(encoding="utf-8")):
            if not entry["path"].startswith("/v1.0/"):
                continue  # the simulated Entra token endpoint: not Graph
            headers = {}
            if entry["bearerToken"]:
                headers["Authorization"] = f"Bearer {TOKEN}"
            if entry.get("contentType"):
                headers["Content-Type"] = entry["contentType"]
            length = int(entry.get("contentLength") or 0)
            url = f"http://graph.microsoft.com{entry['path']}"
            checked += 1
            for error in contract.request_errors(entry["method"], url, headers, length):
                failures.append(f"{entry['method']} {entry['path']}: {error}")
    print(f"contract: {checked} recorded Graph requests checked, {len(failures)} violations")
    return checked, failures


# ---------------------------------------------------------------------------------------------
# scenarios: what the simulator answers.

class Simulator:
    def __init__(self, binary, scenario):
        command = [binary, "simulate", "--listen", "127.0.0.1:0", "--log-format", "json",
                   "--log-filter", "info"]
        if scenario is not None:
            command += ["--scenario", str(scenario)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True)
        for line in self.process.stdout:
            if '"message":"simulated Graph serving"' in line:
                self.url = json.loads(line)["url"].rstrip("/")
                return
        raise RuntimeError(f"the simulator exited {self.process.wait()} before serving")

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def send(method, url, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, method=method, headers=headers,
                                     data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read(), headers
    except urllib.error.HTTPError as answer:
        return answer.code, {k.lower(): v for k, v in answer.headers.items()}, answer.read(), headers


def tenant_token(tenant):
    """A JWT-shaped token (unsigned) naming `tenant`: the simulator reads its `tid` unverified, to
    answer a tenant that the scenario throttles with that tenant's 429s."""
    def part(claims):
        return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'tid': tenant})}.contract"


def probes(scenario):
    """(method, path, token) sequences, one per job (and one per throttled tenant): each runs in
    order, the sequences in parallel. A token of None sends none."""
    parents = []  # (collection, id, job IDs)
    printers = {p["id"]: p for p in scenario.get("printers", [])}
    for printer in printers.values():
        jobs = [job["id"] for job in printer.get("jobs", [])]
        if printer.get("anyJob"):
            jobs.append("contract-probe")
        parents.append(("printers", printer["id"], jobs))
    for share in scenario.get("shares", []):
        printer = printers[share["printer"]]
        jobs = [job["id"] for job in printer.get("jobs", [])] or ["contract-probe"]
        parents.append(("shares", share["id"], jobs))
    for rule in scenario.get("rules", []):
        job = rule.get("job", "rule-probe")
        if rule.get("share"):
            parents.append(("shares", rule["share"], [job]))
        elif rule.get("printer"):
            parents.append(("printers", rule["printer"], [job]))
        else:
            parents.extend(("printers", p, [job]) for p in printers)
    sequences = []
    for collection, parent, jobs in parents:
        for job in jobs:
            base = f"/print/{collection}/{urllib.parse.quote(parent, safe='')}/jobs/{urllib.parse.quote(job, safe='')}"
            sequences.append([
                ("GET", base, TOKEN),
                ("GET", base + "?$select=status", TOKEN),
                ("POST", base + "/cancel", TOKEN),
                ("POST", base + "/cancel", TOKEN),
                ("GET", base + "?$select=id,status", TOKEN),
            ])
    sequences.append([
        ("POST", "/print/printers/printer-1/jobs/1/cancel", None),
        ("GET", "/print/printers/printer-1/jobs/1?$select=status", None),
        ("POST", "/print/printers/no-such-printer/jobs/1/cancel", TOKEN),
        ("GET", "/print/shares/no-such-share/jobs/1?$select=status", TOKEN),
    ])
    # A tenant the scenario throttles: its first call opens the window, and every call in it is
    # answered 429 (the cancel and the read alike).
    for throttle in scenario.get("throttle", []):
        token = tenant_token(throttle["tenant"])
        base = "/print/printers/throttled-tenant-probe/jobs/1"
        sequences.append([
            ("POST", base + "/cancel", token),
            ("GET", base + "?$select=status", token),
        ])
    return sequences


def check_scenario(contract, binary, scenario_file):
    name = scenario_file.name if scenario_file else "the built-in scenario"
    scenario = json.loads((scenario_file or BUILTIN).read_text(encoding="utf-8"))
    simulator = Simulator(binary, scenario_file)
    failures, statuses = [], {}
    try:
        def run(sequence):
            found = []
            for method, path, token in sequence:
                url = simulator.url + path
                status, response_headers, body, headers = send(method, url, token)
                # A request without a token is outside the contract on purpose (to see Graph's 401):
                # only its answer is checked.
                errors = contract.request_errors(method, url, headers) if token else []
                errors += contract.response_errors(method, url, headers, status, response_headers, body)
                found.append((status, method, path, errors))
            return found

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for found in pool.map(run, probes(scenario)):
                for status, method, path, errors in found:
                    statuses[status] = statuses.get(status, 0) + 1
                    failures.extend(f"{name}: {method} {path} answered {status}: {e}" for e in errors)
    finally:
        simulator.close()
    shown = ", ".join(f"{count}x{status}" for status, count in sorted(statuses.items()))
    print(f"contract: {name}: {sum(statuses.values())} answers checked ({shown}), {len(failures)} violations")
    return failures


# ---------------------------------------------------------------------------------------------
# selftest: the check can fail.

GRAPH = "https://graph.microsoft.com/v1.0"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JOB = f"{GRAPH}/print/printers/016b5565-3bbf-4067-b9ff-4d68167eb1a6/jobs/5182"
SHARE_JOB = f"{GRAPH}/print/shares/9d2c1e0a-6f0e-4c5e-9d43-0e2a7a1d4c11/jobs/5182"


def error_body(**error):
    body = {"code": "TooManyRequests", "message": "Please retry again later.",
            "innerError": {"code": "429", "date": "2020-08-18T12:51:51", "message": "Please retry after",
                           "request-id": "94fb3b52-452a-4535-a601-69e0a90e3aa2", "status": "429"}}
    body.update(error)
    return json.dumps({"error": {k: v for k, v in body.items() if v is not None}}).encode()


def job_body(state="canceled", **extra):
    body = {"@odata.context": f"{GRAPH}/$metadata#print/printers('p')/jobs/$entity", "id": "5182",
            "status": {"state": state, "description": "The print job has been canceled.", "details": [],
                       "isAcquiredByPrinter": True}}
    body.update(extra)
    return json.dumps(body).encode()


JSON = {"content-type": "application/json"}


def selftest(contract):
    right_requests = [
        ("POST", f"{JOB}/cancel", AUTH, 0),
        ("POST", f"{SHARE_JOB}/cancel", AUTH, 0),
        ("GET", f"{JOB}?$select=status", AUTH, 0),
        ("GET", f"{SHARE_JOB}?$select=id,status", AUTH, 0),
    ]
    wrong_requests = [
        ("a GET of the cancel action", ("GET", f"{JOB}/cancel", AUTH, 0)),
        ("a cancel with a body", ("POST", f"{JOB}/cancel", AUTH, 17)),
        ("a $select of a property printJob lacks", ("GET", f"{JOB}?$select=colour", AUTH, 0)),
        ("a cancel without a bearer token", ("POST", f"{JOB}/cancel", {}, 0)),
        ("a cancel under another collection", ("POST", f"{GRAPH}/print/queues/p/jobs/1/cancel", AUTH, 0)),
    ]
    right_answers = [
        ("POST", f"{JOB}/cancel", 204, {}, b""),
        ("POST", f"{JOB}/cancel", 429, JSON, error_body()),
        ("POST", f"{SHARE_JOB}/cancel", 400, JSON, error_body(code="", details=[{"code": "a", "message": "b"}])),
        ("GET", f"{JOB}?$select=status", 200, JSON, job_body("unknownFutureValue")),
        ("GET", f"{SHARE_JOB}", 200, JSON, job_body("completed", createdDateTime="2020-08-18T12:51:51Z")),
    ]
    wrong_answers = [
        ("a job in a state Graph does not have", ("GET", JOB, 200, JSON, job_body("lost"))),
        ("an error whose date is an HTTP-date",
         ("POST", f"{JOB}/cancel", 503, JSON,
          error_body(innerError={"date": "Sat, 05 Dec 2026 09:00:00 GMT", "request-id": "x"}))),
        ("an error without a message", ("POST", f"{JOB}/cancel", 409, JSON, error_body(message=None))),
        ("a 200 to the cancel, which answers 204", ("POST", f"{JOB}/cancel", 200, JSON, b"{}")),
        ("a job whose status is a string", ("GET", JOB, 200, JSON, job_body(status="canceled"))),
    ]
    failures = []
    for method, url, headers, length in right_requests:
        for error in contract.request_errors(method, url, headers, length):
            failures.append(f"selftest: the right request {method} {url} fails: {error}")
    for what, (method, url, headers, length) in wrong_requests:
        if not contract.request_errors(method, url, headers, length):
            failures.append(f"selftest: {what} passes the check")
    for method, url, status, headers, body in right_answers:
        for error in contract.response_errors(method, url, AUTH, status, headers, body):
            failures.append(f"selftest: the right answer {status} to {method} {url} fails: {error}")
    for what, (method, url, status, headers, body) in wrong_answers:
        if not contract.response_errors(method, url, AUTH, status, headers, body):
            failures.append(f"selftest: {what} passes the check")
    print(f"contract: selftest: {len(right_requests) + len(right_answers)} right and "
          f"{len(wrong_requests) + len(wrong_answers)} wrong requests and answers, {len(failures)} failures")
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("selftest")
    requests = sub.add_parser("requests")
    requests.add_argument("files", nargs="+")
    scenarios = sub.add_parser("scenarios")
    scenarios.add_argument("--binary", required=True)
    args = parser.parse_args()

    contract = Contract()
    if args.mode == "selftest":
        failures = selftest(contract)
    elif args.mode == "requests":
        checked, failures = check_requests(contract, args.files)
        if checked == 0:
            failures.append("no Graph request was recorded: nothing was checked")
    else:
        failures = []
        for scenario in [None, *sorted(SCENARIOS.glob("*.json"))]:
            failures += check_scenario(contract, args.binary, scenario)
    for failure in failures:
        print(f"contract: VIOLATION: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
