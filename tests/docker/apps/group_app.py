"""A tiny HTTP app for scaling-group tests (stdlib only, so no package index is needed).

GET /health -> "ok"; GET /whoami -> this replica's hostname and the app's VERSION env;
GET /slow?ms=N -> answers after N ms; POST /echo -> the body back; GET /stream -> 3 chunks 200 ms apart;
GET /secret -> whether the TOKEN secret arrived (never its value); GET /headers -> the request headers.
With FAIL_AT_START=1 it prints a line and exits 3 before listening.
"""

import json
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

if os.environ.get("FAIL_AT_START") == "1":
    print("group_app: refusing to start (FAIL_AT_START=1)", flush=True)
    sys.exit(3)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # one line per request on stdout: the replica's log
        print(f"group_app {self.command} {self.path}", flush=True)

    def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/health":
            return self._send(200, b"ok")
        if url.path == "/whoami":
            return self._send(200, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                               "version": os.environ.get("VERSION", "")}).encode(),
                              "application/json")
        if url.path == "/slow":
            ms = int(parse_qs(url.query).get("ms", ["100"])[0])
            time.sleep(ms / 1000)
            return self._send(200, socket.gethostname().encode())
        if url.path == "/secret":
            return self._send(200, json.dumps({"has_token": bool(os.environ.get("TOKEN"))}).encode(),
                              "application/json")
        if url.path == "/headers":
            return self._send(200, json.dumps(dict(self.headers)).encode(), "application/json")
        if url.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                chunk = f"chunk {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(0.2)
            self.wfile.write(b"0\r\n\r\n")
            return None
        return self._send(404, b"not found")

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        return self._send(200, body, self.headers.get("Content-Type") or "application/octet-stream")


port = int(os.environ.get("PORT", "8080"))
print(f"group_app listening on {port} (version {os.environ.get('VERSION', '')})", flush=True)
ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
