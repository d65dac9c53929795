"""chalkcompute.Secret: every constructor, validation, local resolution at to_ref()
time, .env parsing, and that no value ever shows in a repr or an error."""

from __future__ import annotations

import hashlib

import pytest

from chalkcompute import InvalidArgumentError, Secret
from chalkcompute.secret import parse_env_file

pytestmark = pytest.mark.timeout(30)

VALUE = "v4lue-that-must-not-show"


def test_secret_is_from_name_and_from_env_too():
    assert Secret("OPENAI_API_TOKEN") == Secret.from_name("OPENAI_API_TOKEN") == Secret.from_env("OPENAI_API_TOKEN")
    ref, values = Secret("OPENAI_API_TOKEN").to_ref()
    assert (ref.kind, ref.name, ref.alias, ref.prefix, list(ref.keys)) == ("name", "OPENAI_API_TOKEN", "", "", [])
    assert values == {}
    assert not Secret("A").requires_local_resolution


def test_from_name_with_alias_and_prefix():
    s = Secret.from_name("OPENAI_API_TOKEN", alias="TOKEN", prefix="MY_")
    assert (s.kind, s.name, s.alias, s.prefix) == ("name", "OPENAI_API_TOKEN", "TOKEN", "MY_")
    ref, values = s.to_ref()
    assert (ref.kind, ref.name, ref.alias, ref.prefix) == ("name", "OPENAI_API_TOKEN", "TOKEN", "MY_")
    assert values == {}
    assert repr(s) == "Secret.from_name('OPENAI_API_TOKEN', alias='TOKEN', prefix='MY_')"
    assert Secret.from_env("A", alias="B", prefix="P_") == Secret.from_name("A", alias="B", prefix="P_")
    # A prefix may start with a digit only when what follows makes a valid name... it never does.
    with pytest.raises(InvalidArgumentError, match="invalid env var name for secret 'A' '9A'"):
        Secret.from_name("A", prefix="9")


def test_from_integration_with_keys_aliases_prefix():
    s = Secret.from_integration("prod_postgres", keys=["HOST", "PASSWORD", "HOST"],
                                aliases={"HOST": "PG_HOST"}, prefix="DB_")
    assert s.keys == ("HOST", "PASSWORD") and s.aliases == {"HOST": "PG_HOST"} and s.prefix == "DB_"
    ref, values = s.to_ref()
    assert (ref.kind, ref.name, ref.prefix) == ("integration", "prod_postgres", "DB_")
    assert list(ref.keys) == ["HOST", "PASSWORD"] and dict(ref.aliases) == {"HOST": "PG_HOST"}
    assert values == {}
    all_keys, _ = Secret.from_integration("prod_postgres").to_ref()
    assert list(all_keys.keys) == [] and dict(all_keys.aliases) == {} and all_keys.prefix == ""
    assert repr(s) == ("Secret.from_integration('prod_postgres', keys=['HOST', 'PASSWORD'], "
                       "aliases={'HOST': 'PG_HOST'}, prefix='DB_')")
    assert not s.requires_local_resolution


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="-pg"), "invalid integration name '-pg'"),
    (dict(name="pg", keys="HOST"), "must be a list of key names"),
    (dict(name="pg", keys=[]), "keys=\\[\\] injects nothing"),
    (dict(name="pg", keys=["BAD-KEY"]), "invalid key of integration 'pg' 'BAD-KEY'"),
    (dict(name="pg", keys=["HOST"], aliases={"PORT": "P"}), "rename 'PORT', which is not in keys"),
    (dict(name="pg", aliases={"HOST": "1X"}), "invalid alias of key 'HOST'"),
    (dict(name="pg", aliases=[("HOST", "X")]), "must map key names"),
    (dict(name="pg", keys=["A", "B"], aliases={"A": "B"}), "'B' and 'B'|'A' and 'B'"),
    (dict(name="pg", prefix="P-"), "invalid env var prefix 'P-'"),
])
def test_from_integration_refuses_bad_arguments(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        Secret.from_integration(**kwargs)


@pytest.mark.parametrize("make, message", [
    (lambda: Secret("1ABC"), "invalid secret name '1ABC'"),
    (lambda: Secret(""), "invalid secret name ''"),
    (lambda: Secret("A" * 256), "invalid secret name"),
    (lambda: Secret.from_name("A", alias="B C"), "invalid alias 'B C'"),
    (lambda: Secret.from_local_env("NO-DASH"), "invalid local env var name 'NO-DASH'"),
    (lambda: Secret.from_local_env("A", env_var_name="=X"), "invalid env_var_name '=X'"),
    (lambda: Secret.from_local_env_file(""), "needs a file path"),
    (lambda: Secret.from_local_env_file(3), "needs a file path"),
])
def test_bad_names_are_clear_errors(make, message):
    with pytest.raises(InvalidArgumentError, match=message):
        make()


def test_from_local_env_reads_at_to_ref_time(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    s = Secret.from_local_env("OPENAI_API_KEY")  # not set yet: reading is deferred
    assert s.requires_local_resolution and s.env_var_name == "OPENAI_API_KEY"
    with pytest.raises(InvalidArgumentError, match="local environment variable 'OPENAI_API_KEY' is not set"):
        s.to_ref()
    monkeypatch.setenv("OPENAI_API_KEY", VALUE)
    ref, values = s.to_ref()
    assert ref.kind == "local" and list(ref.keys) == ["OPENAI_API_KEY"] and values == {"OPENAI_API_KEY": VALUE}
    assert ref.digest == hashlib.sha256(f"OPENAI_API_KEY={VALUE}\0".encode()).hexdigest()
    assert VALUE not in str(ref)  # the value travels beside the reference, not in it
    monkeypatch.setenv("OPENAI_API_KEY", VALUE + "2")
    ref2, values2 = s.to_ref()
    assert values2 == {"OPENAI_API_KEY": VALUE + "2"} and ref2.digest != ref.digest

    renamed = Secret.from_local_env("OPENAI_API_KEY", env_var_name="API_KEY")
    ref, values = renamed.to_ref()
    assert list(ref.keys) == ["API_KEY"] and values == {"API_KEY": VALUE + "2"}
    assert repr(renamed) == "Secret.from_local_env('OPENAI_API_KEY', env_var_name='API_KEY')"
    assert VALUE not in repr(renamed) and VALUE not in repr(s)


def test_from_local_env_file_parses_comments_blanks_export_quotes(tmp_path, monkeypatch):
    env = tmp_path / ".env"
    env.write_text(
        "# a comment\n"
        "\n"
        "   \n"
        "PLAIN=plain value\n"
        "export EXPORTED=exp\n"
        "DOUBLE=\"double # not a comment\"\n"
        "SINGLE='single'\n"
        "SPACED = spaced  \n"
        "INLINE=inline # a comment\n"
        "HASH=pa#ss\n"
        "EMPTY=\n"
        "EQUALS=a=b=c\n"
        "QUOTED_THEN_COMMENT='q' # note\n"
        "PLAIN=later wins\n"
    )
    s = Secret.from_local_env_file(env)
    assert s.requires_local_resolution and s.path == env
    monkeypatch.chdir(tmp_path)
    rel = Secret.from_local_env_file(".env")
    assert rel.path == env  # absolute at construction: a later chdir reads the same file
    expected = {"PLAIN": "later wins", "EXPORTED": "exp", "DOUBLE": "double # not a comment", "SINGLE": "single",
                "SPACED": "spaced", "INLINE": "inline", "HASH": "pa#ss", "EMPTY": "", "EQUALS": "a=b=c",
                "QUOTED_THEN_COMMENT": "q"}
    ref, values = s.to_ref()
    assert values == expected
    assert ref.kind == "local" and list(ref.keys) == sorted(expected) and len(ref.digest) == 64
    # Read at to_ref() time: an edit shows up, and changes the digest.
    env.write_text("PLAIN=changed\n")
    ref2, values2 = s.to_ref()
    assert values2 == {"PLAIN": "changed"} and ref2.digest != ref.digest
    assert repr(s) == f"Secret.from_local_env_file({str(env)!r})"


@pytest.mark.parametrize("content, line", [
    ("A=1\nthis line has no equals sign " + VALUE + "\n", 2),
    ("# ok\n\n1BAD=" + VALUE + "\n", 3),
    ("A='" + VALUE + "\n", 1),
    ("A=\"" + VALUE + "\" trailing\n", 1),
    ("=" + VALUE + "\n", 1),
])
def test_a_bad_env_file_line_names_file_and_line_not_value(tmp_path, content, line):
    env = tmp_path / "bad.env"
    env.write_text(content)
    with pytest.raises(InvalidArgumentError) as err:
        Secret.from_local_env_file(env).to_ref()
    assert f"{env}, line {line}:" in str(err.value)
    assert VALUE not in str(err.value)


def test_missing_or_empty_env_file(tmp_path):
    with pytest.raises(InvalidArgumentError, match="cannot read .*missing.env"):
        Secret.from_local_env_file(tmp_path / "missing.env").to_ref()
    (tmp_path / "empty.env").write_text("# nothing\n\n")
    with pytest.raises(InvalidArgumentError, match="defines no variables"):
        Secret.from_local_env_file(tmp_path / "empty.env").to_ref()
    assert parse_env_file(tmp_path / "empty.env") == {}


def test_repr_never_shows_a_value(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCAL_SECRET", VALUE)
    env = tmp_path / ".env"
    env.write_text(f"K={VALUE}\n")
    for s in (Secret("A"), Secret.from_local_env("LOCAL_SECRET"), Secret.from_local_env_file(env),
              Secret.from_integration("pg", keys=["K"])):
        s.to_ref()
        assert VALUE not in repr(s) and VALUE not in str(s)


def test_secrets_are_hashable_and_compare_by_fields():
    assert len({Secret("A"), Secret.from_name("A"), Secret("A", alias="B")}) == 2
    assert Secret.from_integration("pg", aliases={"X": "Y"}) == Secret.from_integration("pg", aliases={"X": "Y"})
    assert Secret.from_local_env("A") != Secret("A")
