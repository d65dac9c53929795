"""Take the README's dashboard screenshots (docs/dashboard.png, docs/dashboard-call.png) with selenium.

A daemon of its own (a temporary home, the process runtime), three functions, a few calls (one failing,
one still running), then headless Debian chromium through /usr/bin/chromedriver, logged in with the link
``chalkd dashboard`` prints::

    .venv/bin/python docs/dashboard_screenshot.py            # writes docs/dashboard*.png
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("CHALK_REGISTER_AT_EXIT", "0")
os.environ.setdefault("CHALKD_HTTP_PORT", "0")


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    import chalkcompute
    from chalkd.testing import Daemon

    home = Path(tempfile.mkdtemp(prefix="chalkd-shot-")) / "home"
    daemon = Daemon(home, cwd=ROOT).start()
    os.environ["CHALK_COMPUTE_TARGET"] = daemon.target
    gate = home.parent / "gate"
    try:
        @chalkcompute.function(min_replicas=1, max_replicas=3)
        def embed(texts: list[str], dim: int) -> list[float]:
            print(f"embedding {len(texts)} texts at dim {dim}", flush=True)
            return [float(len(t)) for t in texts]

        @chalkcompute.function(retries=0)
        def parse_invoice(pdf: bytes) -> dict[str, str]:
            print(f"parsing {len(pdf)} bytes", flush=True)
            raise ValueError("no total found on page 1")

        @chalkcompute.function(timeout=600)
        def train(epochs: int, gate: str) -> float:
            import os
            import time

            for epoch in range(epochs):
                print(f"epoch {epoch}: loss {1.0 / (epoch + 1):.4f}", flush=True)
            while not os.path.exists(gate):
                time.sleep(0.1)
            return 0.01

        for fn in (embed, parse_invoice, train):
            fn.wait_ready()
        for n in (3, 10, 50):
            embed([f"text {i}" for i in range(n)], 384)
        try:
            parse_invoice(b"%PDF-1.7" + b"\0" * 2048)
        except Exception:  # noqa: BLE001 - the failure is what the screenshot shows
            pass
        running = train.spawn(5, str(gate))
        time.sleep(1.0)  # the call is dispatched and has printed

        link = subprocess.run([sys.executable, "-m", "chalkd.cli", "dashboard", "--no-open", "--target",
                               daemon.target], capture_output=True, text=True, check=True, cwd=ROOT,
                              env={**os.environ, "CHALKD_HOME": str(home)}).stdout.strip()
        base = link.split("/login")[0]
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                    "--hide-scrollbars"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        try:
            driver.get(link)
            time.sleep(1.5)  # the live counts' first SSE event
            driver.save_screenshot(str(ROOT / "docs" / "dashboard.png"))
            driver.get(f"{base}/calls/{running.object_id}")
            driver.find_element(By.CSS_SELECTOR, "pre.log-lines")
            time.sleep(1.0)
            driver.save_screenshot(str(ROOT / "docs" / "dashboard-call.png"))
        finally:
            driver.quit()
    finally:
        gate.touch()
        daemon.stop()
    print("wrote docs/dashboard.png and docs/dashboard-call.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
