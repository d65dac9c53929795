"""A tiny HTTP app for the swarm's scaling-group tests (stdlib only: the lab has no package index).

GET /health -> "ok"; GET /whoami -> {"host": its hostname, "node": the swarm node (CHALK_NODE),
"has_token": whether the TOKEN secret arrived (never its value), "gpus": the GPUs Swarm gave it};
GET /write/TOKEN -> writes its node's name to /data/TOKEN (a mounted volume), a hex token only;
GET /connect/HOST/PORT -> "open" when this replica can open a TCP connection there, else "closed: why".
"""

import json
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):  # one line per request on stdout: the replica's log
        print(f"node_app {self.command} {self.path}", flush=True)

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            return self._send(200, b"ok")
        if self.path == "/whoami":
            return self._send(200, json.dumps({"host": socket.gethostname(), "node": os.environ.get("CHALK_NODE", ""),
                                               "has_token": bool(os.environ.get("TOKEN")),
                                               "gpus": os.environ.get("DOCKER_RESOURCE_GPU", "")}).encode())
        if self.path.startswith("/connect/"):  # /connect/HOST/PORT: can this replica open a TCP connection there?
            host, _, port = self.path[9:].partition("/")
            try:
                socket.create_connection((host, int(port)), timeout=3).close()
                return self._send(200, b"open")
            except OSError as exc:
                return self._send(200, f"closed: {exc}".encode())
        if self.path.startswith("/write/") and self.path[7:].isalnum():
            with open(f"/data/{self.path[7:]}", "w") as f:
                f.write(os.environ.get("CHALK_NODE", ""))
            return self._send(200, b"written")
        return self._send(404, b"not found")


print(f"node_app listening on {os.environ.get('PORT', '8080')}", flush=True)
ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
