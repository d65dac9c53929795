"""`chalkd secret` and `chalkd integration` against a real daemon: values go in,
only names, keys and times come out, and no value reaches the daemon's log."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.timeout(120)

VALUE = "cli-s3cret-9c1e-never-logged"
PG_PASSWORD = "pg-pa55-7d2f-never-logged"


def chalkd(daemon, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chalkd.cli", *args, "--target", daemon.target],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, input=input)


def assert_ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, out.stderr
    return out.stdout


def assert_fails(out: subprocess.CompletedProcess, message: str) -> None:
    assert out.returncode == 1, out.stdout
    assert out.stderr.startswith("chalkd: ") and message in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_secret_set_list_delete(daemon):
    out = assert_ok(chalkd(daemon, "secret", "set", "CLI_TOKEN", input=VALUE + "\n"))
    assert "secret CLI_TOKEN created" in out and VALUE not in out
    out = assert_ok(chalkd(daemon, "secret", "set", "CLI_TOKEN", "--value", VALUE + "-2"))
    assert "secret CLI_TOKEN updated" in out
    assert_ok(chalkd(daemon, "secret", "set", "CLI_OTHER", input="other"))

    listing = assert_ok(chalkd(daemon, "secret", "list"))
    assert "CLI_TOKEN" in listing and "CLI_OTHER" in listing
    assert VALUE not in listing and "other" not in listing.replace("CLI_OTHER", "")

    assert "secret CLI_OTHER deleted" in assert_ok(chalkd(daemon, "secret", "delete", "CLI_OTHER"))
    assert "CLI_OTHER" not in assert_ok(chalkd(daemon, "secret", "list"))
    assert_fails(chalkd(daemon, "secret", "delete", "CLI_OTHER"), "secret 'CLI_OTHER' does not exist")
    assert_fails(chalkd(daemon, "secret", "set", "BAD-NAME", input=VALUE), "invalid secret name 'BAD-NAME'")
    assert_fails(chalkd(daemon, "secret", "set", "CLI_EMPTY", input=""), "no value for secret CLI_EMPTY")

    log = daemon.log()
    assert "CLI_TOKEN" in log  # the daemon logs the change, by name
    assert VALUE not in log
    db = daemon.home / "chalkd.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_integration_set_list_delete(daemon, tmp_path):
    env = tmp_path / "pg.env"
    env.write_text(f"# prod database\nexport PASSWORD='{PG_PASSWORD}'\nUSER=app\n")
    out = assert_ok(chalkd(daemon, "integration", "set", "cli_pg", "HOST=db.internal", "USER=admin",
                           "--from-env-file", str(env)))
    assert "integration cli_pg created with keys HOST, PASSWORD, USER" in out and PG_PASSWORD not in out
    out = assert_ok(chalkd(daemon, "integration", "set", "cli_pg", "HOST=db2", f"PASSWORD={PG_PASSWORD}"))
    assert "integration cli_pg updated with keys HOST, PASSWORD" in out

    listing = assert_ok(chalkd(daemon, "integration", "list"))
    # The session daemon may hold other tests' integrations: look at this one's row.
    [row] = [line for line in listing.splitlines() if "cli_pg" in line]
    assert "HOST, PASSWORD" in row and "USER" not in row
    assert PG_PASSWORD not in listing and "db2" not in listing

    assert_fails(chalkd(daemon, "integration", "set", "cli_pg", "NOEQUALS"), "expected KEY=VALUE, got 'NOEQUALS'")
    assert_fails(chalkd(daemon, "integration", "set", "cli_pg"), "give KEY=VALUE pairs or --from-env-file")
    assert_fails(chalkd(daemon, "integration", "set", "bad/name", "A=1"), "invalid integration name 'bad/name'")
    bad = tmp_path / "bad.env"
    bad.write_text(f"A=1\n{PG_PASSWORD}\n")
    out = chalkd(daemon, "integration", "set", "cli_pg", "--from-env-file", str(bad))
    assert_fails(out, f"{bad}, line 2:")
    assert PG_PASSWORD not in out.stderr

    assert "integration cli_pg deleted" in assert_ok(chalkd(daemon, "integration", "delete", "cli_pg"))
    assert "cli_pg" not in assert_ok(chalkd(daemon, "integration", "list"))
    assert_fails(chalkd(daemon, "integration", "delete", "cli_pg"), "integration 'cli_pg' does not exist")
    assert PG_PASSWORD not in daemon.log()


def test_secret_commands_without_a_daemon():
    out = subprocess.run([sys.executable, "-m", "chalkd.cli", "secret", "list", "--target",
                          f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1 and "no daemon answers" in out.stderr
