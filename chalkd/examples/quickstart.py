"""End to end on the embedded default: start chalkd, run the hello example, stop.

    python -m chalkd.examples.quickstart

The daemon gets a free port and a temporary home, uses the process runtime,
and is stopped (SIGTERM: drain, then exit) when the example is done.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


def main() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tempfile.mkdtemp(prefix="chalkd-quickstart-")
    daemon = subprocess.Popen([sys.executable, "-m", "chalkd.cli", "serve", "--port", str(port), "--home", home,
                               "--log-level", "WARNING", "--runtime", "process",
                               "--http-port", "0"])  # beside a daemon already on the default 50052
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if daemon.poll() is not None or time.monotonic() > deadline:
                print("chalkd did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        env = {**os.environ, "CHALK_COMPUTE_TARGET": f"127.0.0.1:{port}"}
        return subprocess.run([sys.executable, "-m", "chalkd.examples.hello"], env=env).returncode
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)


if __name__ == "__main__":
    raise SystemExit(main())
