#!/usr/bin/env python3
"""The processes of a test pod in the transparent-capture tests (tests/e2e/capture.rs): an app,
an external TLS service, a DNS server, and clients that connect as an app would (no proxy
settings). Each prints one JSON line with what happened; nothing here decides a test."""

import argparse
import json
import socket
import socketserver
import ssl
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def app(args):
    """An HTTP app on 0.0.0.0: answers with the request it saw and appends it to --log."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen = {"method": "GET", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
            with lock, open(args.log, "a") as log:
                log.write(json.dumps(seen) + "\n")
            body = json.dumps(seen).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    ThreadingHTTPServer(("0.0.0.0", args.port), Handler).serve_forever()


def tls_server(args):
    """An external TLS service: after the handshake, reads one line and answers `echo: <line>`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            try:
                with context.wrap_socket(self.request, server_side=True) as tls:
                    line = tls.recv(1024)
                    tls.sendall(b"echo: " + line)
            except (ssl.SSLError, OSError):
                pass

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer((args.addr, args.port), Handler).serve_forever()


def udp_echo(args):
    """A UDP service: answers every datagram with `echo: <datagram>`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.addr, args.port))
    while True:
        data, peer = sock.recvfrom(2048)
        sock.sendto(b"echo: " + data, peer)


def tcp6_listen(args):
    """An IPv6-only TCP listener on each --port: logs `<port>` per accepted connection."""
    def serve(port):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", port))
        sock.listen(16)
        while True:
            conn, _ = sock.accept()
            with open(args.log, "a") as log:
                log.write(f"{port}\n")
            conn.close()

    for port in args.port[1:]:
        threading.Thread(target=serve, args=(port,), daemon=True).start()
    serve(args.port[0])


def dns_answer(query, records):
    """A DNS response to `query`: the A record of a known name (TTL 5), NXDOMAIN otherwise."""
    (qid,) = struct.unpack("!H", query[:2])
    pos, labels = 12, []
    while query[pos] != 0:
        length = query[pos]
        labels.append(query[pos + 1 : pos + 1 + length].decode().lower())
        pos += 1 + length
    qtype, _ = struct.unpack("!HH", query[pos + 1 : pos + 5])
    question = query[12 : pos + 5]
    name = ".".join(labels)
    if name not in records:
        return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
    if qtype != 1:
        return struct.pack("!HHHHHH", qid, 0x8180, 1, 0, 0, 0) + question
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(records[name])
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + answer


class Records(dict):
    """NAME=ADDRESS lines of --records, read again for every query (a test changes them)."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def __contains__(self, name):
        return name in self.read()

    def __getitem__(self, name):
        return self.read()[name]

    def read(self):
        with open(self.path) as f:
            return dict(line.strip().split("=", 1) for line in f if "=" in line)


def dns(args):
    """A DNS server on --addr:53, UDP and TCP, for the names in --records."""
    records = Records(args.records)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((args.addr, 53))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((args.addr, 53))
    tcp.listen(16)

    def serve_tcp():
        while True:
            conn, _ = tcp.accept()
            with conn:
                try:
                    (length,) = struct.unpack("!H", conn.recv(2))
                    query = conn.recv(length)
                    reply = dns_answer(query, records)
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except (OSError, struct.error, IndexError):
                    pass

    threading.Thread(target=serve_tcp, daemon=True).start()
    print(json.dumps({"dns": "ready"}), flush=True)
    while True:
        query, peer = udp.recvfrom(512)
        try:
            udp.sendto(dns_answer(query, records), peer)
        except (IndexError, struct.error):
            pass


def http_get(args):
    """GET --path from --host on --port, resolving --host through the system resolver."""
    try:
        address = socket.gethostbyname(args.host) if args.connect is None else args.connect
        with socket.create_connection((address, args.port), timeout=10) as conn:
            conn.sendall(
                f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        if not data:
            return {"address": address, "error": "closed without a response"}
        if not data.startswith(b"HTTP/"):
            return {"address": address, "error": "not an HTTP response", "bytes": len(data)}
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return {"address": address, "status": status, "body": body.decode(errors="replace")}
    except OSError as e:
        return {"error": type(e).__name__ + ": " + str(e)}


def tls_echo(args):
    """Connect to --connect:--port with SNI --sni, verify the server against --ca, send a line."""
    context = ssl.create_default_context(cafile=args.ca)
    context.check_hostname = args.sni is not None and not args.no_check
    if args.no_check:
        context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((args.connect, args.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=args.sni) as tls:
                tls.sendall(b"hello\n")
                return {"reply": tls.recv(1024).decode()}
    except (OSError, ssl.SSLError) as e:
        return {"error": type(e).__name__ + ": " + str(e)}


def resolve(args):
    """Resolve --host through the system resolver (UDP), and ask --server over TCP."""
    out = {}
    try:
        out["udp"] = socket.gethostbyname(args.host)
    except OSError as e:
        out["udp_error"] = str(e)
    try:
        labels = b"".join(bytes([len(p)]) + p.encode() for p in args.host.split(".")) + b"\0"
        query = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", 1, 1)
        with socket.create_connection((args.server, 53), timeout=5) as conn:
            conn.sendall(struct.pack("!H", len(query)) + query)
            (length,) = struct.unpack("!H", conn.recv(2))
            reply = conn.recv(length)
            out["tcp"] = socket.inet_ntoa(reply[-4:])
    except (OSError, struct.error) as e:
        out["tcp_error"] = str(e)
    return out


def udp(args):
    """Send one datagram to --connect:--port and wait for the answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        try:
            sock.connect((args.connect, args.port))
            sock.send(b"ping")
            return {"reply": sock.recv(2048).decode()}
        except OSError as e:
            return {"error": type(e).__name__ + ": " + str(e)}


def connect_v6(args):
    """Open a TCP connection to an IPv6 address: connected, or refused."""
    try:
        with socket.create_connection((args.connect, args.port), timeout=5):
            return {"connected": True}
    except OSError as e:
        return {"error": type(e).__name__ + ": " + str(e)}


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("app")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log", required=True)
    p = sub.add_parser("tls-server")
    p.add_argument("--addr", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p = sub.add_parser("dns")
    p.add_argument("--addr", required=True)
    p.add_argument("--records", required=True)
    p = sub.add_parser("get")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--connect")
    p = sub.add_parser("tls")
    p.add_argument("--connect", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sni")
    p.add_argument("--ca", required=True)
    p.add_argument("--no-check", action="store_true")
    p = sub.add_parser("resolve")
    p.add_argument("--host", required=True)
    p.add_argument("--server", required=True)
    p = sub.add_parser("tcp6-listen")
    p.add_argument("--port", type=int, action="append", required=True)
    p.add_argument("--log", required=True)
    p = sub.add_parser("udp-echo")
    p.add_argument("--addr", required=True)
    p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("udp")
    p.add_argument("--connect", required=True)
    p.add_argument("--port", type=int, required=True)
    p = sub.add_parser("connect6")
    p.add_argument("--connect", required=True)
    p.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    servers = {"app": app, "tls-server": tls_server, "dns": dns, "udp-echo": udp_echo, "tcp6-listen": tcp6_listen}
    clients = {"get": http_get, "tls": tls_echo, "resolve": resolve, "udp": udp, "connect6": connect_v6}
    if args.command in servers:
        servers[args.command](args)
    else:
        print(json.dumps(clients[args.command](args)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
