"""Classes on the Docker runtime: each method's replicas are containers of the class's one image;
@before runs once per container before its first call, @after when it stops."""

from __future__ import annotations

import os
import uuid

import pytest

import chalkcompute
from chalkcompute import ClassBuildError, ClassError, Image, VolumeClient
from tests.conftest import wait_for

pytestmark = [pytest.mark.usefixtures("on_docker"), pytest.mark.timeout(600)]


class Tagger:
    @chalkcompute.before()
    def load(self):
        self.host = os.uname().nodename
        self.calls = 0
        with open(f"/hooks/before-{self.host}", "w") as f:
            f.write("loaded")

    @chalkcompute.method()
    def tag(self, text: str) -> str:
        self.calls += 1
        return f"{text}@{self.host}#{self.calls}"

    @chalkcompute.method()
    def tag_all(self, texts: list[str]) -> list[str]:
        return [self.tag(t) for t in texts]  # a plain local call inside the replica

    @chalkcompute.after()
    def shutdown(self):
        with open(f"/hooks/after-{self.host}", "w") as f:
            f.write(str(self.calls))


class Failing:
    @chalkcompute.before()
    def load(self):
        raise RuntimeError("no model in this image")

    @chalkcompute.method()
    def run(self, x: int) -> int:
        return x


def _names(vol, prefix: str) -> set[str]:
    return {e.path[len(prefix):] for e in vol.listdir() if e.path.startswith(prefix)}


def test_class_in_containers_runs_before_once_and_after_on_delete():
    volume = f"cls-hooks-{uuid.uuid4().hex[:8]}"
    Tag = chalkcompute.cls(name="DockerTagger", image=Image.debian_slim(), volumes=[(volume, "/hooks")],
                           min_replicas=1, max_replicas=1)(Tagger)
    Tag.deploy()
    t = Tag()
    first = t.tag("a")
    host = first.split("@")[1].split("#")[0]
    assert first == f"a@{host}#1" and t.tag("b") == f"b@{host}#2"  # one instance: state kept between calls
    assert [s.split("#")[1] for s in t.tag_all(["x", "y"])] == ["1", "2"]
    vol = VolumeClient().lookup(volume)
    started = _names(vol, "before-")
    assert len(started) == 2 and host in started  # one container per method, one @before each
    Tag.delete()
    wait_for(lambda: _names(vol, "after-") == started, timeout=60, what="@after in both containers")
    assert vol.get(f"after-{host}") == b"2"


def test_failing_before_in_a_container_fails_the_class():
    Bad = chalkcompute.cls(name="DockerFailing", image=Image.debian_slim(), min_replicas=0)(Failing)
    with pytest.raises(ClassError, match="@before Failing.load failed: RuntimeError: no model in this image"):
        Bad.deploy(ready_timeout=240)


def test_shared_replicas_serve_both_methods_from_one_container():
    volume = f"cls-shared-{uuid.uuid4().hex[:8]}"
    Tag = chalkcompute.cls(name="DockerSharedTagger", image=Image.debian_slim(), volumes=[(volume, "/hooks")],
                           min_replicas=1, max_replicas=1, shared_replicas=True)(Tagger)
    Tag.deploy()
    t = Tag()
    host = t.tag("a").split("@")[1].split("#")[0]
    assert [s.split("@")[1] for s in t.tag_all(["x", "y"])] == [f"{host}#2", f"{host}#3"]  # one instance
    vol = VolumeClient().lookup(volume)
    assert _names(vol, "before-") == {host}
    Tag.delete()
    wait_for(lambda: _names(vol, "after-") == {host}, timeout=60, what="@after in the shared container")
    assert vol.get(f"after-{host}") == b"3"


def test_failing_image_build_raises_class_build_error_with_its_step():
    bad = Image.debian_slim().run_commands("echo class image about to fail && exit 4")
    Bad = chalkcompute.cls(name="DockerBadBuild", image=bad, min_replicas=0)(Tagger)
    with pytest.raises(ClassBuildError) as info:
        Bad.deploy()
    message = str(info.value)
    assert "'DockerBadBuild'" in message and "exit 4" in message and "class image about to fail" in message
