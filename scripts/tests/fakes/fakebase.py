"""Shared plumbing of the fake HTTP servers the Nushell tests run against.

Each fake binds 127.0.0.1 on a free port (port 0), writes {"port", "pid"} to the --port-file once it listens,
records every request it receives, and records a *violation* for every request that does not follow the
documented API (unknown path or method, missing required fields, wrong types, missing headers). Tests read
both through the control endpoints, which no real server has:

  GET /__fake/calls       -> [{"method", "path", "query", "body", "status"}]
  GET /__fake/violations  -> ["..."]
  GET /__fake/state       -> the server's whole in-memory state

Only the Python 3.11 standard library is used.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Reply(Exception):
    """Raised by handlers to answer with a status, a JSON body and headers."""

    def __init__(self, status: int, body=None, headers: dict | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


class FakeServer:
    """Subclasses implement handle(req) -> (status, body, headers) and may add violations."""

    def __init__(self, state: dict):
        self.state = state
        self.calls: list[dict] = []
        self.violations: list[str] = []
        self.lock = threading.RLock()

    def violation(self, req: dict, text: str) -> None:
        with self.lock:
            self.violations.append(f"{req['method']} {req['path']}: {text}")

    def handle(self, req: dict):  # pragma: no cover - abstract
        raise NotImplementedError


def make_handler(fake: FakeServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _dispatch(self, method: str):
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            req = {
                "method": method,
                "path": parts.path,
                "query": {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
                "raw_query": parts.query,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "raw": raw,
                "body": None,
                "handler": self,
            }
            if parts.path.startswith("/__fake/"):
                with fake.lock:
                    what = parts.path[len("/__fake/"):]
                    data = {"calls": fake.calls, "violations": fake.violations, "state": fake.state}.get(what)
                return self._send(200 if data is not None else 404, data, {})
            if raw:
                try:
                    req["body"] = json.loads(raw)
                except ValueError:
                    fake.violation(req, "body is not JSON")
            try:
                status, body, headers = fake.handle(req)
            except Reply as r:
                status, body, headers = r.status, r.body, r.headers
            except Exception:  # a bug in the fake must fail the test loudly
                fake.violation(req, "fake server crashed: " + traceback.format_exc())
                status, body, headers = 500, {"message": "fake server crashed"}, {}
            with fake.lock:
                fake.calls.append({"method": method, "path": parts.path, "query": req["query"],
                                   "body": req["body"], "status": status})
            if status is None:  # the handler streamed its own answer
                return
            self._send(status, body, headers)

        def _send(self, status, body, headers):
            data = b"" if body is None or status == 204 else json.dumps(body).encode()
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, str(v))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._dispatch("GET")

        def do_POST(self):
            self._dispatch("POST")

        def do_PATCH(self):
            self._dispatch("PATCH")

        def do_PUT(self):
            self._dispatch("PUT")

        def do_DELETE(self):
            self._dispatch("DELETE")

    return Handler


def serve(factory) -> None:
    """Parse --state/--port-file, build the fake with factory(state, args), serve until killed."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--state", help="JSON file with the initial state")
    ap.add_argument("--port-file", required=True, help="where to write {port, pid} once listening")
    ap.add_argument("--swagger", help="Swagger 2.0 file (fake Gitea)")
    args = ap.parse_args()
    state = json.load(open(args.state)) if args.state else {}
    fake = factory(state, args)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
    server.daemon_threads = True
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"port": server.server_address[1], "pid": os.getpid()}, f)
    os.replace(tmp, args.port_file)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    sys.exit(0)
