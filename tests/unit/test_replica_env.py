"""The clean environment of process replicas: the documented pass-through set and --replica-env names."""

from __future__ import annotations

import pytest

from chalkd.config import Config
from chalkd.runtime.replica_env import base_environment, check_env_names

pytestmark = pytest.mark.timeout(10)

DAEMON_ENV = {
    "PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TMPDIR": "/var/tmp",
    "SSL_CERT_FILE": "/ca.pem", "SSL_CERT_DIR": "/certs", "REQUESTS_CA_BUNDLE": "/ca.pem",
    "https_proxy": "http://proxy:3128", "NO_PROXY": "localhost", "CHALK_WORKER_LOG_LEVEL": "DEBUG",
    "AWS_SECRET_ACCESS_KEY": "aws-secret", "CHALK_COMPUTE_TOKEN": "daemon-token", "DATABASE_URL": "pg://x",
    "LICENSE_SERVER": "lic:27000", "PYTHONPATH": "/daemon/only",
}


def test_only_the_pass_through_set_reaches_a_replica():
    env = base_environment(environ=DAEMON_ENV)
    assert set(env) == {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR",
                        "REQUESTS_CA_BUNDLE", "https_proxy", "NO_PROXY", "CHALK_WORKER_LOG_LEVEL"}
    assert env["https_proxy"] == "http://proxy:3128"


def test_replica_env_names_add_variables():
    env = base_environment(["LICENSE_SERVER", "NOT_SET_ANYWHERE"], environ=DAEMON_ENV)
    assert env["LICENSE_SERVER"] == "lic:27000" and "NOT_SET_ANYWHERE" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env


def test_bad_names_are_refused_naming_them():
    assert check_env_names(["A_1"]) == ["A_1"]
    with pytest.raises(ValueError, match=r"--replica-env '1BAD' is not an environment variable name"):
        check_env_names(["1BAD"])
    with pytest.raises(ValueError, match="--replica-env 'A=B'"):
        Config(replica_env=["A=B"]).validate()
