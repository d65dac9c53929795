"""`chalkd image ls` and `chalkd image prune` on the real engine.

Each test makes images of its own (a `docker commit` of the base image with a label unique to the
test, so a new image id) under chalkd-img: and under unrelated repositories. Other tests and
daemons share this engine: a prune here that removes anything always names its tags; the
un-named prune runs as --dry-run only.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.docker.conftest import BASE_IMAGE


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, check=check)


def exists(ref: str) -> bool:
    return docker("image", "inspect", ref, check=False).returncode == 0


def chalkd_image(*args: str) -> subprocess.CompletedProcess:
    # Wide: table rows are parsed whole.
    return subprocess.run([sys.executable, "-m", "chalkd.cli", "image", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "COLUMNS": "400"}, timeout=120)


@pytest.fixture
def made(docker_engine):
    """``made(tag)``: a new image (its own id) tagged ``tag``; all removed after the test."""
    refs: list[str] = []
    containers: list[str] = []

    def make(tag: str, *more_tags: str) -> str:
        cid = docker("create", BASE_IMAGE, "true").stdout.strip()
        try:
            image_id = docker("commit", "--change", f"LABEL dev.chalkd.test={secrets.token_hex(8)}", cid,
                              tag).stdout.strip()
        finally:
            docker("rm", "-f", cid, check=False)
        for extra in more_tags:
            docker("tag", tag, extra)
        refs.extend([tag, *more_tags])
        return image_id

    make.containers = containers  # type: ignore[attr-defined]
    yield make
    if containers:
        docker("rm", "-f", *containers, check=False)
    for ref in refs:
        docker("rmi", ref, check=False)


def test_ls_shows_our_tags_with_size_age_and_use(made):
    ours = f"chalkd-img:test-{secrets.token_hex(6)}"
    unrelated = f"chalkd-unrelated-test:{secrets.token_hex(6)}"
    image_id = made(ours)
    made(unrelated)
    cid = docker("create", "--label", "dev.chalkd.function=double", ours, "true").stdout.strip()
    made.containers.append(cid)
    out = chalkd_image("ls")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if ours in line)
    assert image_id.removeprefix("sha256:")[:12] in row
    assert "MiB" in row and ("just now" in row or "m ago" in row)
    assert "function double (created)" in row
    assert unrelated not in out.stdout  # another repository's image is not listed


def test_prune_keeps_young_and_used_images_then_removes_ours(made):
    ours = f"chalkd-img:test-{secrets.token_hex(6)}"
    made(ours)
    # Built a moment ago: the default --older-than (1h) keeps it.
    out = chalkd_image("prune", ours)
    assert out.returncode == 0, out.stderr
    assert f"kept {ours}" in out.stdout and "newer than --older-than" in out.stdout
    assert exists(ours)
    # A container uses it (even one never started): kept whatever its age.
    cid = docker("create", ours, "true").stdout.strip()
    made.containers.append(cid)
    out = chalkd_image("prune", ours, "--older-than", "0")
    assert out.returncode == 0, out.stderr
    assert f"kept {ours}" in out.stdout and "used by other container" in out.stdout
    assert exists(ours)
    docker("rm", "-f", cid)
    # Dry run: says it, removes nothing.
    out = chalkd_image("prune", ours, "--older-than", "0", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert f"would delete {ours}" in out.stdout and "would free" in out.stdout
    assert exists(ours)
    out = chalkd_image("prune", ours, "--older-than", "0")
    assert out.returncode == 0, out.stderr
    assert f"delete {ours}" in out.stdout and "removed 1 tag(s), kept 0; freed" in out.stdout
    assert not exists(ours)


def test_prune_of_a_tag_shared_with_another_repository_only_untags(made):
    ours = f"chalkd-img:test-{secrets.token_hex(6)}"
    theirs = f"chalkd-unrelated-test:{secrets.token_hex(6)}"
    image_id = made(ours, theirs)
    out = chalkd_image("prune", ours, "--older-than", "0")
    assert out.returncode == 0, out.stderr
    assert f"untag {ours}" in out.stdout and theirs in out.stdout
    assert not exists(ours)
    assert exists(theirs) and docker("image", "inspect", "--format", "{{.Id}}", theirs).stdout.strip() == image_id


def test_prune_without_tags_never_names_another_repository(made):
    ours = f"chalkd-img:test-{secrets.token_hex(6)}"
    # Hostile-looking neighbours: a repository whose name starts like ours, and one that mentions it.
    lookalike = f"chalkd-imgx:test-{secrets.token_hex(6)}"
    nested = f"example.invalid/chalkd-img:test-{secrets.token_hex(6)}"
    made(ours)
    made(lookalike)
    made(nested)
    # Dry run only: the engine is shared, a real un-named prune would take other tests' images.
    out = chalkd_image("prune", "--older-than", "0", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert f"would delete {ours}" in out.stdout
    assert lookalike not in out.stdout and nested not in out.stdout
    assert exists(ours) and exists(lookalike) and exists(nested)


def test_prune_refuses_tags_that_are_not_ours(made):
    lookalike = f"chalkd-imgx:test-{secrets.token_hex(6)}"
    made(lookalike)
    for ref in (BASE_IMAGE, lookalike):
        out = chalkd_image("prune", ref, "--older-than", "0")
        assert out.returncode == 2
        assert f"not ours: {ref}" in out.stderr
        assert exists(ref)


def test_prune_names_an_unknown_tag_and_a_bad_age(docker_engine):
    out = chalkd_image("prune", "chalkd-img:no-such-tag-here")
    assert out.returncode == 1 and "no such image: chalkd-img:no-such-tag-here" in out.stderr
    out = chalkd_image("prune", "--older-than", "7 days")
    assert out.returncode == 2 and "--older-than must be a number with a unit" in out.stderr
