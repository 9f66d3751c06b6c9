"""Stand-ins for the network that deploy/check-image.sh gives the image's binary, inside the private
network namespace that check-image.sh creates (so only its own loopback is ever reached):

- a DNS server on 127.0.0.1:53 (UDP) that answers one name, graph.microsoft.com, with 127.0.0.1
  (A; no AAAA) and NXDOMAIN for every other name;
- a TLS server on 127.0.0.1:443 that presents a certificate for graph.microsoft.com from a
  throwaway CA.

A gateway pointed at https://graph.microsoft.com/v1.0 must then resolve the name through
/etc/resolv.conf (static glibc, no NSS modules on disk), and must refuse the certificate because no
root in its CA bundle signed it: that shows DNS works and that certificates are verified against
the bundle. Every DNS question and TLS handshake is logged as one line in EVENTS_FILE.

Usage: check-image-fakes.py CERT_PEM KEY_PEM EVENTS_FILE READY_FILE
"""

import socket
import ssl
import struct
import sys
import threading

NAME = "graph.microsoft.com"


def log(events, line):
    with open(events, "a", encoding="utf-8") as out:
        out.write(line + "\n")


def dns_answer(query):
    ident, flags, qdcount = struct.unpack(">HHH", query[:6])
    if qdcount != 1:
        return None
    offset, labels = 12, []
    while query[offset]:
        length = query[offset]
        labels.append(query[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    qtype, _qclass = struct.unpack(">HH", query[offset + 1 : offset + 5])
    question = query[12 : offset + 5]
    name = ".".join(labels).lower().rstrip(".")
    answers = b""
    rcode = 0
    if name != NAME:
        rcode = 3  # NXDOMAIN
    elif qtype == 1:  # A
        answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("127.0.0.1")
    # AAAA and anything else for NAME: NOERROR without answers.
    reply_flags = 0x8000 | 0x0080 | (flags & 0x0100) | rcode  # QR, RA, RD echoed
    header = struct.pack(">HHHHHH", ident, reply_flags, 1, 1 if answers else 0, 0, 0)
    return name, qtype, header + question + answers


def serve_dns(sock, events):
    while True:
        query, peer = sock.recvfrom(512)
        try:
            answered = dns_answer(query)
        except (IndexError, struct.error):
            continue
        if answered is None:
            continue
        name, qtype, reply = answered
        log(events, f"dns question {name} type {qtype}")
        sock.sendto(reply, peer)


def serve_tls(listener, context, events):
    while True:
        conn, _peer = listener.accept()
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                log(events, "tls handshake completed")  # the client trusted the certificate
                tls.recv(1)
        except (ssl.SSLError, OSError) as error:
            log(events, f"tls handshake refused by the client: {error}")


def main():
    cert, key, events, ready = sys.argv[1:5]
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("127.0.0.1", 53))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2", "http/1.1"])
    context.sni_callback = lambda _sock, server_name, _ctx: log(events, f"tls sni {server_name}")
    listener = socket.create_server(("127.0.0.1", 443))
    threading.Thread(target=serve_dns, args=(dns, events), daemon=True).start()
    threading.Thread(target=serve_tls, args=(listener, context, events), daemon=True).start()
    with open(ready, "w", encoding="utf-8") as out:
        out.write("ready\n")
    threading.Event().wait()


if __name__ == "__main__":
    main()
