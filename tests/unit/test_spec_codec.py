"""Specs as dataclasses: the services' codec, the catalog loading stored specs through it, the image cache keys.

The database fixture tests/fixtures/chalkd-specs-c2704aa.db was made by the
daemon of c2704aa, which stored and read specs as protobuf bytes (see
tests/fixtures/make_specs_db.py for what was registered, and how). Every
function in it decodes to the dataclasses written out below, field by field
as the SDK was asked for them.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute.image import Image
from chalkd.catalog import Catalog
from chalkd.images.docker_build import ImageBuildError, _identity
from chalkd.model import Policies, Retry
from chalkd.services.convert import decode_container, decode_function, decode_function_bytes, decode_image
from chalkd.specs import (
    ContainerSpec,
    FunctionSpec,
    ImageSpec,
    ImageStep,
    Resources,
    SecretRef,
    VolumeMount,
    image_identity,
)
from chalkd.store.db import Store

FIXTURE = Path(__file__).parent.parent / "fixtures" / "chalkd-specs-c2704aa.db"
SLIM = "python:3.11-slim-bookworm"
SLIM_HASH = "0fd443bb9538bffb665277af154f92dcae7c037f4166f8334ea57cdc4a98e637"  # Image.debian_slim("3.11")
SRC = "/tmp/tmp514_zj57"  # where make_specs_db.py had its local files (kept in the spec, not hashed)

FULL = FunctionSpec(
    name="full",
    image=ImageSpec(base=SLIM, python_version="3.11", content_hash=(
        "d735d5c145d9df055de5df96dd4aa6bafc279927539f37081c89fabe03e43baa"), steps=(
        ImageStep("env", env={"B": "2", "A": "1"}),
        ImageStep("workdir", path="/app"),
        ImageStep("run_commands", args=("echo hi", "true", "--flag")),
        ImageStep("pip_install", args=("six==1.16.0",)),
        ImageStep("copy_file", path="/app/copied.txt", content=b"copied\n", mode=0o640, source=f"{SRC}/copied.txt"),
        ImageStep("lazy_file", path="/srv/data.txt", source=f"{SRC}/data.txt",
                  digest="6ee3049fa1f2aab2d3b85037856babc3701727ca14ffaa308289e03b6a33071c"),
        ImageStep("lazy_file", path="/opt/tree/a.py", mode=0o644, source=f"{SRC}/tree/a.py", mount_root="/opt/tree",
                  digest="06edbcf4336165a271e6524025a6439c3caa3246fd0796f116772279707a5325"),
        ImageStep("lazy_file", path="/opt/tree/b.cfg", mode=0o600, source=f"{SRC}/tree/b.cfg", mount_root="/opt/tree",
                  digest="0263829989b6fd954f72baaf2fc64bc2e2f01d692d4de72986ea808f6e99813f"),
        ImageStep("dockerfile_commands", args=("RUN echo df",)),
        ImageStep("entrypoint", args=("/bin/sh", "-c")),
        ImageStep("cmd", args=("echo", "up")),
    )),
    resources=Resources(cpu_millis=500, memory_bytes=256 * 2**20),
    env={"X": "y", "Z": ""}, min_replicas=0, max_replicas=3, cooldown=5.0,
    policies=Policies(
        retry=Retry(max_retries=4, initial_wait=0.5, multiplier=3.0, max_wait=10.0, jitter=True,
                    retry_on=frozenset({"builtins.TimeoutError", "builtins.ValueError"})),
        rate_per_second=1.0, rate_burst=60.0, rate_key="shared",  # 60 per minute
        max_concurrent=4, concurrency_key="pool", max_items=100, result_ttl=60.0, timeout=30.0),
    volumes=(VolumeMount("data", "/data"), VolumeMount("models", "/mnt/models")),
    secrets=(
        SecretRef("name", name="API_TOKEN_SECRET", alias="API_TOKEN"),
        SecretRef("integration", name="db", prefix="DB_", keys=("user", "password"), aliases={"password": "PASS"}),
        # keyed by that daemon (HMAC under its own key) before it stored the spec
        SecretRef("local", keys=("LOCAL_NAME",),
                  digest="hmac-sha256:f1144078bb4bc528cf469b8fa83c40fa29921aabc537815836c1b8956b233b5f"),
    ),
)


def slim(name: str, **kw: object) -> FunctionSpec:
    return FunctionSpec(name=name, image=ImageSpec(base=SLIM, python_version="3.11", content_hash=SLIM_HASH),
                        max_replicas=1, cooldown=60.0, **kw)  # type: ignore[arg-type]


EXPECTED = {
    ("agen", 1): FunctionSpec(
        name="agen", max_replicas=1, cooldown=60.0, is_generator=True, is_async=True,
        image=ImageSpec(steps=(ImageStep("dockerfile_commands", args=("FROM python:3.11-slim-bookworm", "RUN true")),),
                        content_hash="346a400f257f932ebb218a80da28ddc5a7c60e8e4fe6f20d063e0a811d13ca2b")),
    ("batched", 1): slim("batched", policies=Policies(
        retry=Retry(max_retries=2), rate_limit_key="named", max_concurrent=3, batch_size=8, batch_wait=0.25)),
    ("full", 1): FULL,
    ("gone", 1): slim("gone"),
    ("on_gpu", 1): slim("on_gpu", resources=Resources(gpu="2:nvidia-a100")),
    ("plain", 1): slim("plain"),
    ("plain", 2): slim("plain"),
}


def load_fixture(tmp_path: Path) -> tuple[Catalog, dict[str, bytes]]:
    path = tmp_path / "chalkd.db"
    shutil.copyfile(FIXTURE, path)
    db = sqlite3.connect(path)
    rows = dict(db.execute("SELECT id, spec FROM functions").fetchall())
    db.close()

    async def main() -> Catalog:
        store = Store(path)
        await store.open()
        try:
            catalog = Catalog(store)
            catalog.load(decode_function_bytes)
            return catalog
        finally:
            await store.close()

    return asyncio.run(main()), rows


@pytest.mark.timeout(30)
def test_the_catalog_decodes_every_function_of_a_c2704aa_database_as_it_was_registered(tmp_path: Path) -> None:
    catalog, rows = load_fixture(tmp_path)
    got = {(fv.name, fv.version): fv for fv in catalog.by_id.values()}
    assert sorted(got) == sorted(EXPECTED)
    for key, spec in EXPECTED.items():
        fv = got[key]
        assert fv.spec == spec, key
        assert fv.wire == rows[fv.id]  # stored bytes kept as they are: clients get them back unchanged
        # the settings the queue and autoscaler read are the spec's
        assert (fv.min_replicas, fv.max_replicas, fv.cooldown) == (spec.min_replicas, spec.max_replicas, spec.cooldown)
        assert (fv.cpu_millis, fv.memory_bytes, fv.gpu) == (spec.resources.cpu_millis, spec.resources.memory_bytes,
                                                             spec.resources.gpu)
        assert (fv.policies, fv.is_generator, fv.image_hash) == (spec.policies, spec.is_generator,
                                                                 spec.image.content_hash)
    assert got[("gone", 1)].deleted and not got[("gone", 1)].latest
    assert not got[("plain", 1)].latest and got[("plain", 2)].latest
    assert catalog.get(name="plain") is got[("plain", 2)]
    # The image identity of a stored spec is the one its images were built and cached under.
    assert image_identity(got[("full", 1)].spec.image) == FULL.image.content_hash


def test_a_container_spec_decodes_with_its_local_secret_values_left_out() -> None:
    msg = pb.ContainerSpec(name="web", image=Image.debian_slim("3.11").to_proto(),
                           resources=pb.Resources(cpu_millis=250, memory_bytes=2**30), env={"A": "1"},
                           volumes=[pb.VolumeMount(volume="v", path="/v")],
                           secrets=[pb.SecretRef(kind="local", keys=["K"], digest="d")], local_secrets={"K": "x"})
    assert decode_container(msg) == ContainerSpec(
        name="web", image=ImageSpec(base=SLIM, python_version="3.11", content_hash=SLIM_HASH),
        resources=Resources(cpu_millis=250, memory_bytes=2**30), env={"A": "1"}, volumes=(VolumeMount("v", "/v"),),
        secrets=(SecretRef("local", keys=("K",), digest="d"),))


def test_an_empty_function_spec_decodes_to_the_defaults_the_queue_always_used() -> None:
    fs = decode_function(pb.FunctionSpec(name="f"))
    assert fs == FunctionSpec(name="f") and fs.policies == Policies()
    assert fs.kind == "sync"
    assert decode_function(pb.FunctionSpec(name="g", is_generator=True, is_async=True)).kind == "generator"
    assert decode_function(pb.FunctionSpec(name="a", is_async=True)).kind == "async"


def _known(content_hash: str = "") -> pb.ImageSpec:
    return pb.ImageSpec(base=SLIM, python_version="3.11", content_hash=content_hash, steps=[
        pb.ImageStep(kind="env", env={"B": "2", "A": "1"}),
        pb.ImageStep(kind="pip_install", args=["six==1.16.0", "attrs"]),
        pb.ImageStep(kind="workdir", path="/app"),
        pb.ImageStep(kind="copy_file", path="/app/c.txt", content=b"copied\n", mode=0o640, source="/home/me/c.txt"),
    ])


def test_image_cache_keys_are_the_ones_chalkd_used_before_the_spec_dataclasses() -> None:
    # Pinned with c2704aa's docker_build._identity (Image.from_proto(spec).content_hash): images the
    # engine already has are found under the same tag after an upgrade.
    known = "328678063e688606f80088ca6953b161155c4e05a78a840d1ee8777596b984f8"
    for claim in ("", "../escape", "claimed-by-client"):  # a client's claim never changes the key
        assert _identity(decode_image(_known(claim))) == known
    assert _identity(decode_image(pb.ImageSpec())) == (
        "7fa53174a4cb898a298314bb68e01a7a80e7edb0b87e2e33eef656c4cb9d545b")
    # The SDK computes the same hash (one formula, chalkcompute._contract).
    img = Image.debian_slim("3.11").env({"A": "1"}).pip_install(["six"]).workdir("/app")
    assert _identity(decode_image(img.to_proto())) == img.content_hash


def test_an_unknown_step_kind_is_an_invalid_image_spec() -> None:
    spec = _known()
    spec.steps.add(kind="teleport")
    with pytest.raises(ImageBuildError, match="invalid image spec: unknown image step kind 'teleport'"):
        _identity(decode_image(spec))
