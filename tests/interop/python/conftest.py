"""Shared fixtures for the Python interop tests.

run.sh starts the simulated Graph and the gateway (as overlays/sidecar configures it) and passes
their addresses in the environment: GATEWAY (host:port of the gRPC API), ADMIN (host:port of the admin
listener), SIMULATOR_URL (the simulated Graph's base URL, ending in /v1.0). test_overlay.py reads its
own variables (see there). The Python stubs are generated here, at test time,
from proto/ into a temporary directory: nothing generated is ever committed.
"""

import base64
import importlib
import json
import os
import pathlib
import sys
import urllib.request
import uuid

import grpc
import pytest
from grpc_tools import protoc

REPO = pathlib.Path(__file__).resolve().parents[3]
PROTO_DIR = REPO / "proto"
SERVICE_PROTO = "graph/print/v1/print_job_service.proto"
TOKEN = "interop-token"
# The app in tenant_token's tokens (any GUID: the simulated Graph takes any token).
APP = "0a11ce00-0000-4000-8000-000000001e57"


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the interop tests through tests/interop/run.sh")
    return value


@pytest.fixture(scope="session")
def gateway():
    return _env("GATEWAY")


@pytest.fixture(scope="session")
def admin():
    return _env("ADMIN")


@pytest.fixture(scope="session")
def simulator_url():
    return _env("SIMULATOR_URL").rstrip("/")


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    """Generates pb2 and pb2_grpc modules from proto/ and imports them."""
    out = tmp_path_factory.mktemp("stubs")
    # grpc_tools ships the well-known types; its include directory must come last.
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_DIR / SERVICE_PROTO),
        ]
    )
    assert rc == 0, f"protoc failed with {rc}"
    sys.path.insert(0, str(out))
    pb2 = importlib.import_module("graph.print.v1.print_job_service_pb2")
    pb2_grpc = importlib.import_module("graph.print.v1.print_job_service_pb2_grpc")
    return pb2, pb2_grpc


@pytest.fixture(scope="session")
def channel(gateway):
    with grpc.insecure_channel(gateway) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel


@pytest.fixture(scope="session")
def client(channel, stubs):
    _, pb2_grpc = stubs
    return pb2_grpc.PrintJobServiceStub(channel)


@pytest.fixture
def cancel(client, stubs):
    """Calls Cancel; returns (response, metadata) or raises grpc.RpcError."""
    pb2, _ = stubs

    def call(printer_id, print_job_id, token=TOKEN, timeout=10, metadata=(), share_id=""):
        md = list(metadata)
        if token is not None:
            md.append(("authorization", f"Bearer {token}"))
        return client.Cancel.with_call(
            pb2.CancelRequest(printer_id=printer_id, print_job_id=print_job_id, share_id=share_id),
            metadata=md,
            timeout=timeout,
        )

    return call


@pytest.fixture
def graph_requests(simulator_url):
    """What the simulated Graph received: GET /__requests."""

    def fetch():
        base = simulator_url.removesuffix("/v1.0")
        with urllib.request.urlopen(f"{base}/__requests", timeout=5) as answer:
            return json.load(answer)

    return fetch


def tenant_token(tenant=None):
    """A JWT-shaped bearer token, unsigned, naming `tenant` (a new GUID when None) and APP.

    The gateway's throttle gate keeps one window per tenant and app, read unverified from the
    token; every token that is not a JWT (TOKEN among them) shares one. A test that makes Graph
    throttle sends a tenant of its own, so that the window its 429 opens holds no other test's call.
    """

    def part(claims):
        return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()

    tenant = tenant or str(uuid.uuid4())
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'tid': tenant, 'appid': APP})}.interop"


def new_request_id():
    return str(uuid.uuid4())


def all_metadata(call):
    """Initial and trailing metadata of a call (or of an RpcError), as one dict of lists."""
    merged = {}
    for part in (call.initial_metadata() or (), call.trailing_metadata() or ()):
        for key, value in part:
            merged.setdefault(key, []).append(value)
    return merged
