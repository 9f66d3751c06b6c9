"""A minimal gRPC-over-h2c unary client on top of the pure-Python `h2` package.

The benchmark uses it for what h2load cannot tell: the grpc-status of a call (h2load counts every
HTTP 200 as a success, and gRPC errors are HTTP 200), and a health check loop fine-grained enough to
time start-up. It deliberately opens a fresh TCP connection per call, so a refused connection is
retried at once (grpcio's channels back off for up to a second after a refused connect).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length, bytes."""
    return struct.pack(">BI", 0, len(message)) + message


def pb_string(field_number: int, value: str) -> bytes:
    """One protobuf field of wire type 2 (length-delimited) holding a UTF-8 string."""
    data = value.encode()
    return _varint(field_number << 3 | 2) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def cancel_request(printer_id: str, print_job_id: str) -> bytes:
    """A framed graph.print.v1.CancelRequest (field 1 printer_id, field 2 print_job_id)."""
    return grpc_frame(pb_string(1, printer_id) + pb_string(2, print_job_id))


HEALTH_CHECK_OVERALL = grpc_frame(b"")  # grpc.health.v1.HealthCheckRequest{service: ""}
SERVING = grpc_frame(b"\x08\x01")  # HealthCheckResponse{status: SERVING}


@dataclass
class GrpcAnswer:
    http_status: str | None = None
    grpc_status: str | None = None
    grpc_message: str | None = None
    body: bytes = b""
    metadata: dict[str, str] = field(default_factory=dict)


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """Connects once; raises ConnectionRefusedError while nothing listens."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def unary(
    sock: socket.socket,
    path: str,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
    authority: str = "localhost",
) -> GrpcAnswer:
    """Sends one unary call on a fresh connection `sock` and reads the whole answer."""
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    request_headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", authority),
        (":path", path),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] + list(headers or [])
    conn.send_headers(stream_id, request_headers)
    conn.send_data(stream_id, body, end_stream=True)
    sock.sendall(conn.data_to_send())

    answer = GrpcAnswer()
    done = False
    while not done:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed before the call ended")
        for event in conn.receive_data(data):
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                for name, value in event.headers:
                    if name == ":status":
                        answer.http_status = value
                    elif name == "grpc-status":
                        answer.grpc_status = value
                    elif name == "grpc-message":
                        answer.grpc_message = value
                    else:
                        answer.metadata[name] = value
            elif isinstance(event, h2.events.DataReceived):
                answer.body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                done = True
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                raise ConnectionError(f"stream reset with error code {event.error_code}")
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise ConnectionError(f"GOAWAY with error code {event.error_code}")
        pending = conn.data_to_send()
        if pending:
            sock.sendall(pending)
    return answer


def call(host: str, port: int, path: str, body: bytes, headers=None, timeout: float = 10.0) -> GrpcAnswer:
    """One unary call on its own connection."""
    with connect(host, port, timeout) as sock:
        return unary(sock, path, body, headers)


def is_serving(host: str, port: int, timeout: float = 2.0) -> bool:
    """One gRPC health check of the overall status; False while not listening or not SERVING."""
    try:
        answer = call(host, port, "/grpc.health.v1.Health/Check", HEALTH_CHECK_OVERALL, timeout=timeout)
    except (ConnectionRefusedError, ConnectionResetError):
        return False
    return answer.grpc_status == "0" and answer.body == SERVING
