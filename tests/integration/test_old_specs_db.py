"""A database whose specs were stored by commit c2704aa (before the spec dataclasses) still serves every function.

tests/fixtures/chalkd-specs-c2704aa.db holds functions using every spec feature
(image steps with copied and lazy files, volumes, the three secret kinds, GPU,
CPU and memory, every queue policy, a generator, two versions of one name and
a deleted one), made by tests/fixtures/make_specs_db.py. A daemon of today
loads them all and hands each spec back to clients byte for byte as stored.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from chalkcompute._bridge import run_sync
from chalkcompute._client import Client
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from tests.conftest import Daemon

FIXTURE = Path(__file__).parent.parent / "fixtures" / "chalkd-specs-c2704aa.db"


def stored_specs() -> dict[str, pb.FunctionSpec]:
    db = sqlite3.connect(FIXTURE)
    try:
        rows = db.execute("SELECT id, spec FROM functions WHERE deleted=0").fetchall()
    finally:
        db.close()
    return {fid: pb.FunctionSpec.FromString(spec) for fid, spec in rows}


@pytest.mark.timeout(60)
def test_a_daemon_serves_every_function_of_a_c2704aa_database_with_its_spec_as_stored(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(FIXTURE, home / "chalkd.db")
    d = Daemon(home).start()
    try:
        client = Client.get(d.target)
        listed = run_sync(client.rpc("ListFunctions", pb.ListFunctionsRequest(include_old_versions=True))).functions
        assert sorted((f.function_name, f.version) for f in listed) == [
            ("agen", 1), ("batched", 1), ("full", 1), ("on_gpu", 1), ("plain", 1), ("plain", 2)]
        assert [f.function_name for f in listed if f.latest] == ["agen", "batched", "full", "on_gpu", "plain"]
        for fid, spec in stored_specs().items():
            got = run_sync(client.rpc("GetFunction", pb.GetFunctionRequest(id=fid))).function
            assert got.spec == spec, got.function_name
            assert got.state == "pending"  # min_replicas=0: loaded, nothing started
        full = run_sync(client.rpc("GetFunction", pb.GetFunctionRequest(name="full"))).function
        assert [m.volume for m in full.spec.volumes] == ["data", "models"]
        assert full.spec.secrets[2].digest.startswith("hmac-sha256:")  # keyed by that daemon: sent back as is
    finally:
        d.stop()
