"""The dashboard in a real browser: Debian's chromium, headless, driven by selenium through
/usr/bin/chromedriver (nothing is downloaded). Logs in through the link ``chalkd dashboard`` prints,
sees a function this test deployed, a call's detail with its replica's log (and a line arriving live
over SSE), and cancels a running call with the page's button.

Skips when chromium, chromedriver or selenium is missing, except under ``CHALK_REQUIRE_BROWSER=1``
(``.ci/run`` sets it after installing them), where a missing browser fails instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import chalkcompute
from tests.conftest import ROOT

pytestmark = [pytest.mark.usefixtures("daemon"), pytest.mark.timeout(180)]

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")


def _missing() -> str:
    if not CHROMEDRIVER.exists() or not CHROMIUM.exists():
        return f"{CHROMEDRIVER} or {CHROMIUM} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the `test` extra has it)"
    return ""


@pytest.fixture(scope="module")
def browser():
    why = _missing()
    if why:
        if os.environ.get("CHALK_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CHALK_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@chalkcompute.function(timeout=120)
def browser_echo(values: list[int], label: str) -> int:
    print(f"browser_echo saw {len(values)} values, label {label}", flush=True)
    return sum(values)


@chalkcompute.function(timeout=120)
def browser_sleeper(gate: str) -> str:
    import os
    import time

    print("browser_sleeper is waiting", flush=True)
    while not os.path.exists(gate):
        time.sleep(0.05)
    return "done"


def login_link(daemon) -> str:
    out = subprocess.run([sys.executable, "-m", "chalkd.cli", "dashboard", "--no-open", "--target", daemon.target],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "CHALKD_HOME": str(daemon.home)})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def wait_until(driver, predicate, what: str, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: predicate(d), message=what)


def test_log_in_see_a_function_a_calls_log_and_cancel_a_call(daemon, browser, tmp_path):
    from selenium.webdriver.common.by import By

    link = login_link(daemon)
    base = link.split("/login")[0]
    # Without a session the page is refused.
    browser.get(base + "/")
    assert "Overview" not in browser.page_source and "token" in browser.page_source
    browser.get(base + "/login")
    assert "chalkd dashboard" in browser.find_element(By.TAG_NAME, "main").text

    browser_echo.wait_ready()
    call = browser_echo.spawn([1, 2, 3], "from-the-browser-test")
    assert call.get(timeout=60) == 6

    # Log in through the link: the cookie is set and the browser lands on the overview.
    browser.get(link)
    wait_until(browser, lambda d: d.current_url == base + "/", "the redirect to /")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Overview"
    assert browser.find_element(By.LINK_TEXT, "browser_echo")
    cookie = browser.get_cookie(f"chalkd_dashboard_{base.rsplit(':', 1)[1]}")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != daemon.token
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it

    # The function's page lists the call; its detail shows the shapes and the replica's log.
    browser.find_element(By.LINK_TEXT, "browser_echo").click()
    wait_until(browser, lambda d: "Function browser_echo" in d.title, "the function's page")
    browser.find_element(By.LINK_TEXT, call.object_id).click()
    wait_until(browser, lambda d: call.object_id in d.title, "the call's page")
    assert "list<item: int64>" in browser.find_element(By.TAG_NAME, "main").text
    log = browser.find_element(By.CSS_SELECTOR, "pre.log-lines")
    assert "browser_echo saw 3 values, label from-the-browser-test" in log.text

    # A replica's log page tails it live (SSE): a new call's line appears without a reload.
    replica = log.get_attribute("id").removeprefix("log-")
    browser.get(f"{base}/replicas/{replica}/log")
    browser_echo([4, 5], "arrives-live")
    wait_until(browser, lambda d: "label arrives-live" in d.find_element(By.CSS_SELECTOR, "pre.log-lines").text,
               "the live line over SSE")

    # The overview's counts update live (SSE): the sleeper's running count goes to 1 without a reload.
    gate = tmp_path / "gate"
    browser_sleeper.wait_ready()
    browser.get(base + "/")
    row = browser.find_element(By.XPATH, "//tr[td/a[text()='browser_sleeper']]")
    count = row.find_element(By.CSS_SELECTOR, "[data-live$=':running']")
    assert count.text == "0"
    browser.execute_script("document.body.setAttribute('data-loaded-once', '1')")
    running = browser_sleeper.spawn(str(gate))
    try:
        wait_until(browser, lambda d: count.text == "1", "the live running count")
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-loaded-once") == "1"  # no reload

        # Cancel the running call with the page's button (after the confirm dialog).
        browser.get(f"{base}/calls/{running.object_id}")
        wait_until(browser, lambda d: (d.refresh() or True) and "running" in d.find_element(By.CSS_SELECTOR,
                   "dl.facts").text, "the call to run", timeout=60)
        browser.find_element(By.ID, "cancel-call").click()
        wait_until(browser, lambda d: _accept_alert(d), "the confirm dialog")
        wait_until(browser, lambda d: "cancelled" in d.find_element(By.CSS_SELECTOR, "dl.facts").text,
                   "the cancelled state")
        assert browser.find_element(By.ID, "flash").text == f"call {running.object_id} cancelled"
        assert not browser.find_elements(By.ID, "cancel-call")
        with pytest.raises(chalkcompute.exceptions.CallCancelledError):
            running.get(timeout=30)
    finally:
        gate.touch()

    # The process runtime has no sandboxes: the page says so and offers no button.
    browser.get(base + "/sandboxes")
    assert browser.find_element(By.ID, "no-sandboxes")
    assert not browser.find_elements(By.CSS_SELECTOR, "form.action button[id^=terminate]")


def _accept_alert(driver) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert.accept()
        return True
    except NoAlertPresentException:
        return False

