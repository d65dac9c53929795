"""Secrets reach a function's environment through the worker's channel (process runtime)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chalkcompute import FunctionError, RemoteFunction, Secret
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(120)

VALUE = "tok-3f9a-never-in-a-log"


def read_env() -> dict:
    import os

    return {k: os.environ.get(k, "") for k in ("OPENAI_API_TOKEN", "MY_TOKEN", "PG_HOST", "DB_PASSWORD",
                                               "LOCAL_KEY", "RENAMED", "FROM_FILE")}


def chalkd(daemon, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chalkd.cli", *args, "--target", daemon.target],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, input=input)


def test_every_kind_of_secret_reaches_the_function(daemon, tmp_path, monkeypatch):
    assert chalkd(daemon, "secret", "set", "OPENAI_API_TOKEN", input=VALUE).returncode == 0
    assert chalkd(daemon, "integration", "set", "prod_postgres", "HOST=db.internal",
                  "PASSWORD=pg-pass", "USER=admin").returncode == 0
    monkeypatch.setenv("LOCAL_KEY", "local-value")
    monkeypatch.setenv("SOURCE_VAR", "renamed-value")
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\n\nFROM_FILE=file-value\n")
    fn = RemoteFunction(read_env, name="secret_reader", secrets=[
        Secret.from_name("OPENAI_API_TOKEN"),
        Secret.from_name("OPENAI_API_TOKEN", alias="TOKEN", prefix="MY_"),
        Secret.from_integration("prod_postgres", keys=["HOST", "PASSWORD"], aliases={"HOST": "PG_HOST"},
                                prefix=""),
        Secret.from_integration("prod_postgres", keys=["PASSWORD"], prefix="DB_"),
        Secret.from_local_env("LOCAL_KEY"),
        Secret.from_local_env("SOURCE_VAR", env_var_name="RENAMED"),
        Secret.from_local_env_file(env_file),
    ])
    out = fn()
    assert out == {"OPENAI_API_TOKEN": VALUE, "MY_TOKEN": VALUE, "PG_HOST": "db.internal",
                   "DB_PASSWORD": "pg-pass", "LOCAL_KEY": "local-value", "RENAMED": "renamed-value",
                   "FROM_FILE": "file-value"}
    # Values are nowhere the daemon writes: not its log, not the function's spec as clients read it back.
    assert VALUE not in daemon.log() and "local-value" not in daemon.log()
    spec = RemoteFunction.from_name("secret_reader")
    assert spec is not None
    listing = chalkd(daemon, "secret", "list")
    assert "OPENAI_API_TOKEN" in listing.stdout and VALUE not in listing.stdout


def test_a_missing_secret_is_an_error_at_deploy(daemon):
    fn = RemoteFunction(read_env, name="secret_missing", secrets=[Secret.from_name("NOT_DEFINED_ANYWHERE")])
    with pytest.raises(FunctionError, match="NOT_DEFINED_ANYWHERE.*chalkd secret set"):
        fn.deploy()


def test_secrets_must_be_secret_objects():
    with pytest.raises(TypeError, match="chalkcompute.Secret"):
        RemoteFunction(read_env, name="secret_bad", secrets=["OPENAI_API_TOKEN"])
