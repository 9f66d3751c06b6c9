"""grpcio (Python) against the real gateway in front of the simulated Graph.

Expectations come from the docs: docs/status.md (the status table, "Error details") and docs/calling.md
("The call").
"""

import time
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conftest import all_metadata, new_request_id, tenant_token


def details_of(error):
    """The google.rpc.Status in grpc-status-details-bin, decoded by grpcio-status, by type name."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no grpc-status-details-bin"
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    found = {}
    for any_detail in status.details:
        for name in ("ErrorInfo", "RequestInfo", "RetryInfo", "BadRequest"):
            message = getattr(error_details_pb2, name)()
            if any_detail.Is(message.DESCRIPTOR):
                any_detail.Unpack(message)
                assert name not in found, f"two {name} details"
                found[name] = message
    return found


def the_one(metadata, key):
    values = metadata.get(key, [])
    assert len(values) == 1, f"metadata {key!r}: expected one value, got {values!r}"
    return values[0]


def graph_request(graph_requests, client_request_id):
    seen = [r for r in graph_requests() if r.get("clientRequestId") == client_request_id]
    assert len(seen) == 1, f"Graph saw {len(seen)} requests with client-request-id {client_request_id}"
    return seen[0]


def test_cancel_ok_carries_graph_request_id_and_client_request_id(cancel, stubs, graph_requests):
    pb2, _ = stubs
    request_id = new_request_id()
    response, call = cancel("any-job-printer", "py-ok-1", metadata=[("x-request-id", request_id)])
    assert isinstance(response, pb2.CancelResponse)
    assert call.code() == grpc.StatusCode.OK
    metadata = all_metadata(call)
    # The caller's GUID travels to Graph and comes back as written.
    assert the_one(metadata, "client-request-id") == request_id
    seen = graph_request(graph_requests, request_id)
    assert seen["method"] == "POST"
    assert seen["path"] == "/v1.0/print/printers/any-job-printer/jobs/py-ok-1/cancel"
    assert seen["bearerToken"] is True
    assert seen["status"] == 204
    # Graph's own request-id reaches the caller.
    assert the_one(metadata, "request-id") == seen["requestId"]


def test_cancel_moves_a_pending_job_to_canceled_and_a_repeat_is_ok(cancel, graph_requests):
    response, call = cancel("printer-1", "2")
    assert call.code() == grpc.StatusCode.OK
    assert response.already_canceled is False
    # The repeat: Graph refuses (409), the gateway reads the job, finds it canceled and answers OK.
    request_id = new_request_id()
    response, call = cancel("printer-1", "2", metadata=[("x-request-id", request_id)])
    assert call.code() == grpc.StatusCode.OK
    assert response.already_canceled is True
    seen = [r for r in graph_requests() if r.get("clientRequestId") == request_id]
    assert [(r["method"], r["path"], r["status"]) for r in seen] == [
        ("POST", "/v1.0/print/printers/printer-1/jobs/2/cancel", 409),
        ("GET", "/v1.0/print/printers/printer-1/jobs/2?$select=status", 200),
    ]
    assert all(r["bearerToken"] for r in seen)
    # The answer names the cancel's Graph request-id.
    assert the_one(all_metadata(call), "request-id") == seen[0]["requestId"]


def test_client_request_id_is_new_when_the_caller_sends_none(cancel, graph_requests):
    _, call = cancel("any-job-printer", "py-ok-2")
    generated = the_one(all_metadata(call), "client-request-id")
    assert uuid.UUID(generated).version == 4
    assert graph_request(graph_requests, generated)["status"] == 204


def test_missing_token_is_unauthenticated_and_graph_is_not_called(cancel, graph_requests):
    request_id = new_request_id()
    with pytest.raises(grpc.RpcError) as raised:
        cancel("any-job-printer", "py-unauth", token=None, metadata=[("x-request-id", request_id)])
    error = raised.value
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    details = details_of(error)
    assert details["ErrorInfo"].domain == "printjob-gateway"
    assert details["ErrorInfo"].reason == "MISSING_CREDENTIALS"
    assert details["RequestInfo"].request_id == request_id
    assert details["RequestInfo"].serving_data == f"client-request-id={request_id}"
    metadata = all_metadata(error)
    assert the_one(metadata, "client-request-id") == request_id
    assert "request-id" not in metadata, "Graph was not called, so there is no Graph request-id"
    assert not [r for r in graph_requests() if r.get("clientRequestId") == request_id]


def test_malformed_token_is_unauthenticated(cancel):
    with pytest.raises(grpc.RpcError) as raised:
        cancel("any-job-printer", "py-malformed", token=None, metadata=[("authorization", "Basic abc")])
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert details_of(raised.value)["ErrorInfo"].reason == "MALFORMED_CREDENTIALS"


@pytest.mark.parametrize(
    ("printer_id", "print_job_id"),
    [("printer-1", "no-such-job"), ("no-such-printer", "1")],
)
def test_not_found_carries_graph_error_info(cancel, graph_requests, printer_id, print_job_id):
    request_id = new_request_id()
    with pytest.raises(grpc.RpcError) as raised:
        cancel(printer_id, print_job_id, metadata=[("x-request-id", request_id)])
    error = raised.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    details = details_of(error)
    info = details["ErrorInfo"]
    assert info.domain == "graph.microsoft.com"
    assert info.reason == "ITEM_NOT_FOUND"
    assert info.metadata["graphErrorCode"] == "itemNotFound"
    assert info.metadata["httpStatus"] == "404"
    assert "RetryInfo" not in details
    metadata = all_metadata(error)
    seen = graph_request(graph_requests, request_id)
    assert seen["status"] == 404
    assert the_one(metadata, "request-id") == seen["requestId"]
    assert the_one(metadata, "client-request-id") == request_id
    # RequestInfo names Graph's request-id when Graph answered.
    assert details["RequestInfo"].request_id == seen["requestId"]
    assert details["RequestInfo"].serving_data == f"client-request-id={request_id}"


def test_completed_job_is_failed_precondition(cancel):
    with pytest.raises(grpc.RpcError) as raised:
        cancel("printer-1", "3")
    error = raised.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "The print job is already completed and cannot be canceled."
    info = details_of(error)["ErrorInfo"]
    assert (info.domain, info.reason) == ("graph.microsoft.com", "NOT_ALLOWED")
    assert info.metadata["graphErrorCode"] == "notAllowed"
    assert info.metadata["httpStatus"] == "409"
    assert info.metadata["jobState"] == "completed"


def test_forbidden_is_permission_denied(cancel):
    with pytest.raises(grpc.RpcError) as raised:
        cancel("forbidden-printer", "py-1")
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = details_of(raised.value)["ErrorInfo"]
    assert info.domain == "graph.microsoft.com"
    assert info.metadata["httpStatus"] == "403"


def test_invalid_id_is_invalid_argument_with_bad_request(cancel, graph_requests):
    request_id = new_request_id()
    with pytest.raises(grpc.RpcError) as raised:
        cancel("", "1", metadata=[("x-request-id", request_id)])
    error = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = details_of(error)
    assert details["ErrorInfo"].reason == "INVALID_FIELD"
    assert details["ErrorInfo"].metadata["field"] == "printer_id,share_id"
    assert [v.field for v in details["BadRequest"].field_violations] == ["printer_id", "share_id"]
    assert not [r for r in graph_requests() if r.get("clientRequestId") == request_id]


def test_cancel_through_a_share_goes_to_the_share_and_a_canceled_job_is_ok(cancel, graph_requests):
    request_id = new_request_id()
    response, _ = cancel("", "python-share-1", share_id="any-job-share",
                         metadata=[("x-request-id", request_id)])
    assert not response.already_canceled
    # share-1 shares printer-1, whose job 4 is canceled: the refusal and the read go to the share.
    repeat_id = new_request_id()
    response, _ = cancel("", "4", share_id="share-1", metadata=[("x-request-id", repeat_id)])
    assert response.already_canceled
    seen = [(r["method"], r["path"], r.get("shareId"))
            for r in graph_requests() if r.get("clientRequestId") in (request_id, repeat_id)]
    assert seen == [
        ("POST", "/v1.0/print/shares/any-job-share/jobs/python-share-1/cancel", "any-job-share"),
        ("POST", "/v1.0/print/shares/share-1/jobs/4/cancel", "share-1"),
        ("GET", "/v1.0/print/shares/share-1/jobs/4?$select=status", "share-1"),
    ], seen
    with pytest.raises(grpc.RpcError) as raised:
        cancel("printer-1", "4", share_id="share-1")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "printer_id and share_id" in raised.value.details()


def test_throttled_is_resource_exhausted_with_retry_info(cancel):
    # Graph answers 429 with Retry-After 2. With a 1 s deadline no retry fits, so the gateway
    # answers at once (with or without its own retries). The token names a tenant of its own: the
    # gateway then holds that tenant's calls for 2 s, and no other tenant's.
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        cancel("throttled-printer", "py-1", token=tenant_token(), timeout=1)
    elapsed = time.monotonic() - started
    error = raised.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    details = details_of(error)
    assert details["ErrorInfo"].domain == "graph.microsoft.com"
    assert details["ErrorInfo"].metadata["httpStatus"] == "429"
    assert details["RetryInfo"].retry_delay.ToTimedelta().total_seconds() == 2
    assert elapsed < 1, f"answered after {elapsed:.2f} s"
    assert all_metadata(error).get("request-id"), "Graph answered, so its request-id comes back"

    # Another tenant's call, at once, is not held by that window: had it been, its deadline
    # (1.5 s, inside the 2 s window) would have had it turned away at once with RESOURCE_EXHAUSTED.
    response, _ = cancel("any-job-printer", "py-other-tenant", token=tenant_token(), timeout=1.5)
    assert response.already_canceled is False


def test_client_deadline_is_honoured(cancel):
    # slow-printer answers after 3 s; a 1 s deadline must end the call in about 1 s.
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        cancel("slow-printer", "py-1", timeout=1)
    elapsed = time.monotonic() - started
    error = raised.value
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 2, f"answered after {elapsed:.2f} s"
    # The gateway answers a little before the client's own timer fires; when its answer wins the
    # race (it nearly always does), it carries the details.
    if rpc_status.from_call(error) is not None:
        details = details_of(error)
        assert (details["ErrorInfo"].domain, details["ErrorInfo"].reason) == (
            "printjob-gateway",
            "GRAPH_DEADLINE_EXCEEDED",
        )
