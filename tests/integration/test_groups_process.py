"""The process runtime cannot run a scaling group's image and entrypoint, so it refuses groups (before any
build), saying what to do instead; bad arguments are refused in the caller, naming the argument."""

from __future__ import annotations

import pytest

from chalkcompute import Image, ReadinessProbe, ScalingGroup, ScalingGroupError

pytestmark = pytest.mark.timeout(60)


def test_the_process_runtime_refuses_groups(daemon):
    sg = ScalingGroup(image=Image.debian_slim().entrypoint(["python", "-m", "http.server", "8080"]),
                      name="web", target=daemon.target)
    with pytest.raises(ScalingGroupError, match=r"--runtime docker"):
        sg.deploy()
    with pytest.raises(ScalingGroupError, match=r"--runtime docker"):
        ScalingGroup.from_name("web", target=daemon.target)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"port": 0}, "port must be an integer from 1 to 65535"),
    ({"min_replicas": 3, "max_replicas": 2}, r"min_replicas \(3\) is more than max_replicas \(2\)"),
    ({"max_replicas": 0}, "max_replicas must be an integer from 1 to 64"),
    ({"name": "Not_DNS"}, "is not DNS-safe"),
    ({"env": {"A": 1}}, "env must map str to str"),
    ({"entrypoint": "python app.py"}, "entrypoint must be a non-empty list of str"),
    ({"readiness_probe": "/health"}, "readiness_probe must be a ReadinessProbe"),
])
def test_bad_arguments_name_what_is_wrong(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ScalingGroup(image=Image.debian_slim(), **kwargs)


def test_readiness_probes_check_their_fields():
    assert ReadinessProbe.http("/health", period_seconds=1).kind == "http"
    assert ReadinessProbe.tcp().kind == "tcp"
    with pytest.raises(ValueError, match="path must start with '/'"):
        ReadinessProbe.http("health")
    with pytest.raises(ValueError, match="period_seconds must be a positive number"):
        ReadinessProbe.tcp(period_seconds=0)
    with pytest.raises(ValueError, match="failure_threshold must be an integer >= 1"):
        ReadinessProbe.http(failure_threshold=0)


def test_call_before_deploy_says_so():
    with pytest.raises(ScalingGroupError, match=r"no web_url yet: deploy\(\) it first"):
        ScalingGroup(image=Image.debian_slim(), name="later").call("/")
    with pytest.raises(ValueError, match="json or data, not both"):
        ScalingGroup(image=Image.debian_slim(), name="later").call("/", json={}, data=b"x")
