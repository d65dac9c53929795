"""chalkd.secrets.SecretStore on a real Store: secrets, integrations, owned (local)
secrets, resolution into env vars, errors that name what is missing (never a value),
and the database file's mode."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkd.secrets import InvalidSecret, SecretNotFound, SecretStore
from chalkd.store.db import Store

pytestmark = pytest.mark.timeout(30)

VALUE = "s3cr3t-value-never-shown"


def ref(kind: str, name: str = "", alias: str = "", prefix: str = "", keys=(), aliases=None):
    return SimpleNamespace(kind=kind, name=name, alias=alias, prefix=prefix, keys=list(keys),
                           aliases=dict(aliases or {}))


def run(tmp_path: Path, body) -> None:
    """Run ``body(secrets)`` against a fresh store, then close it."""
    async def main() -> None:
        store = Store(tmp_path / "chalkd.db")
        await store.open()
        try:
            await body(SecretStore(store))
        finally:
            await store.close()
    asyncio.run(main())


def test_set_list_delete_and_survive_a_restart(tmp_path):
    async def first(s: SecretStore) -> None:
        assert s.set("OPENAI_API_TOKEN", VALUE) is True
        assert s.set("OPENAI_API_TOKEN", VALUE + "2") is False
        assert s.set("OTHER", "x") is True
        s.set_owned("fv-1", {"LOCAL": "l"})
        assert [m.name for m in s.list()] == ["OPENAI_API_TOKEN", "OTHER"]  # owned ones are not listed
        meta = s.get_meta("OPENAI_API_TOKEN")
        assert meta.updated_at >= meta.created_at > 0
        s.delete("OTHER")
        with pytest.raises(SecretNotFound, match="'OTHER' does not exist"):
            s.delete("OTHER")
        await s.store.flush()

    async def second(s: SecretStore) -> None:
        assert [m.name for m in s.list()] == ["OPENAI_API_TOKEN"]
        assert s.resolve([ref("name", "OPENAI_API_TOKEN")], "fv-1") == {"OPENAI_API_TOKEN": VALUE + "2"}
        assert s.owned_names("fv-1") == ["LOCAL"]
        assert s.list_integrations()[0].keys == ("HOST", "PASSWORD")

    async def setup_integration(s: SecretStore) -> None:
        s.set_integration("prod_postgres", {"HOST": "db", "PASSWORD": "pw"})

    run(tmp_path, first)
    run(tmp_path, setup_integration)
    run(tmp_path, second)


def test_integrations_replace_their_key_set(tmp_path):
    async def body(s: SecretStore) -> None:
        assert s.set_integration("prod_postgres", {"HOST": "db", "PASSWORD": "pw", "USER": "u"}) is True
        assert s.set_integration("prod_postgres", {"HOST": "db2", "PORT": "5432"}) is False
        [meta] = s.list_integrations()
        assert meta.name == "prod_postgres" and meta.keys == ("HOST", "PORT")
        assert s.resolve([ref("integration", "prod_postgres")], "x") == {"HOST": "db2", "PORT": "5432"}
        await s.store.flush()
        rows = s.store.query("SELECT key FROM integration_keys WHERE integration='prod_postgres' ORDER BY key")
        assert [r["key"] for r in rows] == ["HOST", "PORT"]
        s.delete_integration("prod_postgres")
        assert s.list_integrations() == []
        with pytest.raises(SecretNotFound, match="integration 'prod_postgres' does not exist"):
            s.delete_integration("prod_postgres")
        await s.store.flush()
        assert s.store.query("SELECT * FROM integration_keys") == []

    run(tmp_path, body)


def test_resolve_alias_prefix_keys_aliases_and_local(tmp_path):
    async def body(s: SecretStore) -> None:
        s.set("OPENAI_API_TOKEN", VALUE)
        s.set_integration("prod_postgres", {"HOST": "db", "PASSWORD": "pw", "USER": "u"})
        s.set_owned("ct-1", {"LOCAL_KEY": "local", "FROM_FILE": "file"})
        refs = [
            ref("name", "OPENAI_API_TOKEN"),
            ref("name", "OPENAI_API_TOKEN", alias="TOKEN", prefix="MY_"),
            ref("name", "OPENAI_API_TOKEN", prefix="V2_"),
            ref("integration", "prod_postgres", prefix="PG_"),
            ref("integration", "prod_postgres", keys=["HOST", "PASSWORD"], aliases={"HOST": "DB_HOST"}),
            ref("local", keys=["LOCAL_KEY"]),
            ref("local", keys=["FROM_FILE"], prefix="X_"),
        ]
        s.check(refs, {"LOCAL_KEY", "FROM_FILE"})
        assert s.resolve(refs, "ct-1") == {
            "OPENAI_API_TOKEN": VALUE, "MY_TOKEN": VALUE, "V2_OPENAI_API_TOKEN": VALUE,
            "PG_HOST": "db", "PG_PASSWORD": "pw", "PG_USER": "u",
            "DB_HOST": "db", "PASSWORD": "pw",
            "LOCAL_KEY": "local", "X_FROM_FILE": "file",
        }
        # The protobuf message itself is a valid ref.
        msg = pb.SecretRef(kind="integration", name="prod_postgres", keys=["USER"], aliases={"USER": "PGUSER"})
        assert s.resolve([msg], "ct-1") == {"PGUSER": "u"}

    run(tmp_path, body)


@pytest.mark.parametrize("refs, local, message", [
    ([ref("name", "OPENAI_API_TOKEN")], set(),
     "secret 'OPENAI_API_TOKEN' does not exist; set it with `chalkd secret set OPENAI_API_TOKEN`"),
    ([ref("integration", "prod_mysql")], set(),
     "integration 'prod_mysql' does not exist; set it with `chalkd integration set prod_mysql KEY=VALUE...`"),
    ([ref("integration", "pg", keys=["HOST", "PORT"])], set(), "integration 'pg' has no key 'PORT'"),
    ([ref("integration", "pg", aliases={"PORT": "P"})], set(), "integration 'pg' has no key 'PORT'"),
    ([ref("local", keys=["LOCAL_KEY"])], set(), "no value for local secret 'LOCAL_KEY'"),
])
def test_missing_names_are_errors_naming_them_without_values(tmp_path, refs, local, message):
    async def body(s: SecretStore) -> None:
        s.set("PRESENT", VALUE)
        s.set_integration("pg", {"HOST": VALUE})
        with pytest.raises(SecretNotFound) as check_err:
            s.check(refs, local)
        assert message in str(check_err.value) and VALUE not in str(check_err.value)
        with pytest.raises(SecretNotFound) as resolve_err:
            s.resolve(refs, "fv-none")
        assert message.split(";")[0] in str(resolve_err.value) and VALUE not in str(resolve_err.value)
        assert isinstance(resolve_err.value, LookupError)

    run(tmp_path, body)


@pytest.mark.parametrize("call, message", [
    (lambda s: s.set("1BAD", "v"), "invalid secret name '1BAD'"),
    (lambda s: s.set("A-B", "v"), "invalid secret name 'A-B'"),
    (lambda s: s.set("A" * 256, "v"), "invalid secret name"),
    (lambda s: s.set("OK", "a\0b"), "NUL"),
    (lambda s: s.set("OK", "x" * (64 * 1024 + 1)), "over 64 KiB"),
    (lambda s: s.set_integration("-bad", {"A": "v"}), "invalid integration name '-bad'"),
    (lambda s: s.set_integration("pg", {}), "at least one KEY=VALUE"),
    (lambda s: s.set_integration("pg", {"NOT-ENV": "v"}), "invalid key of integration 'pg' 'NOT-ENV'"),
    (lambda s: s.resolve([ref("name", "PRESENT", alias="BAD-ALIAS")], ""), "invalid env var name"),
    (lambda s: s.resolve([ref("name", "PRESENT", prefix="9")], ""),
     "invalid env var name for secret 'PRESENT' '9PRESENT'"),
    (lambda s: s.resolve([ref("name", "PRESENT", prefix="A-")], ""), "invalid env var prefix 'A-'"),
    (lambda s: s.resolve([ref("bogus", "PRESENT")], ""), "unknown secret reference kind 'bogus'"),
    (lambda s: s.check([ref("local")], set()), "names no env vars"),
])
def test_bad_names_are_invalid(tmp_path, call, message):
    async def body(s: SecretStore) -> None:
        s.set("PRESENT", "present-value")
        with pytest.raises(InvalidSecret) as err:
            call(s)
        assert message in str(err.value)
        assert "present-value" not in str(err.value)
        assert isinstance(err.value, ValueError)

    run(tmp_path, body)


def test_owned_secrets_are_removed_with_their_owner(tmp_path):
    async def body(s: SecretStore) -> None:
        s.set_owned("fv-1", {"A": "1", "B": "2"})
        s.set_owned("ct-2", {"A": "other"})
        assert s.resolve([ref("local", keys=["A", "B"])], "fv-1") == {"A": "1", "B": "2"}
        assert s.resolve([ref("local", keys=["A"])], "ct-2") == {"A": "other"}
        s.set_owned("fv-1", {"B": "3"})  # a new set replaces the old one
        with pytest.raises(SecretNotFound, match="'A' of fv-1"):
            s.resolve([ref("local", keys=["A"])], "fv-1")
        s.delete_owned("fv-1")
        s.delete_owned("fv-1")  # twice is fine
        assert s.owned_names("fv-1") == [] and s.owned_names("ct-2") == ["A"]
        await s.store.flush()
        rows = s.store.query("SELECT owner, name FROM secrets ORDER BY owner, name")
        assert [(r["owner"], r["name"]) for r in rows] == [("ct-2", "A")]
        with pytest.raises(InvalidSecret):
            s.set_owned("", {"A": "1"})

    run(tmp_path, body)


def test_values_are_never_logged(tmp_path, caplog):
    caplog.set_level("DEBUG")

    async def body(s: SecretStore) -> None:
        s.set("TOKEN", VALUE)
        s.set_integration("pg", {"PASSWORD": VALUE})
        s.set_owned("fv-1", {"LOCAL": VALUE})
        s.resolve([ref("name", "TOKEN"), ref("integration", "pg"), ref("local", keys=["LOCAL"])], "fv-1")
        s.delete("TOKEN")
        s.delete_owned("fv-1")

    run(tmp_path, body)
    assert "TOKEN" in caplog.text and VALUE not in caplog.text


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_file_is_private(tmp_path):
    db = tmp_path / "chalkd.db"

    async def body(s: SecretStore) -> None:
        s.set("TOKEN", VALUE)
        await s.store.flush()
        wal = tmp_path / "chalkd.db-wal"
        assert wal.exists()
        assert mode(db) == 0o600 and mode(wal) == 0o600
        for extra in tmp_path.glob("chalkd.db-*"):
            assert mode(extra) == 0o600, extra

    run(tmp_path, body)
    assert mode(db) == 0o600
    # A database (and WAL) an older chalkd left world-readable is tightened on open.
    db.chmod(0o644)
    (tmp_path / "chalkd.db-wal").write_bytes(b"")
    (tmp_path / "chalkd.db-wal").chmod(0o644)

    async def check(s: SecretStore) -> None:
        assert mode(db) == 0o600 and mode(tmp_path / "chalkd.db-wal") == 0o600
        assert [m.name for m in s.list()] == ["TOKEN"]

    run(tmp_path, check)
