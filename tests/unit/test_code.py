"""Code shipping (chalkcompute._code): functions travel as source and run plain in the worker."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
import textwrap
import threading
import typing

import pytest

from chalkcompute._code import CodeBundleData, build_bundle, check_function, load_bundle
from chalkcompute.exceptions import FunctionCodeError
from tests.unit.codeship_samples import _sidefx, app, fakesdk


def _remote(name):
    return lambda *args: ("remote", name, args)


def _ship(fn, tmp_path, remote_name=fakesdk.remote_name):
    bundle = build_bundle(fn, remote_name=remote_name)
    return bundle, load_bundle(bundle, tmp_path / "code", make_remote=_remote)


def _run(args, cwd, **kw):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60, **kw)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# --- the sample project -----------------------------------------------------------------


def test_shipped_function_computes_with_its_helpers_types_and_imports(tmp_path):
    _, fn = _ship(app.compute.fn, tmp_path)
    report = fn([1, 2, 3, 4])
    assert dataclasses.is_dataclass(report) and type(report).__name__ == "Report"
    assert [(p.x, p.y, p.color.name) for p in report.points] == [
        (3.0, 1.0, "BLUE"), (6.0, 4.0, "BLUE"), (9.0, 9.0, "BLUE")]
    assert report.rejected == ["VeryTooBig: 12 > 10"]  # raised and caught by type inside
    assert report.length == 46
    assert json.loads(report.summary) == {"n": "3", "nan": True}
    assert report.remote == ("remote", "samples-other", (3,))  # a helper's remote, via make_remote


def test_worker_types_are_the_shipped_ones_and_hints_resolve(tmp_path):
    _, fn = _ship(app.compute.fn, tmp_path)
    ns = fn.__globals__
    assert fn.__module__.startswith("__chalk_fn__") and sys.modules[fn.__module__].__dict__ is ns
    assert issubclass(ns["VeryTooBig"], ns["TooBig"]) and issubclass(ns["TooBig"], ValueError)
    with pytest.raises(ns["TooBig"]):
        ns["_checked"](99)
    assert typing.get_type_hints(fn)["return"] is ns["Report"]
    # ruff reads the "Point" key inside list[...] as a forward reference.
    assert typing.get_type_hints(ns["Report"])["points"] == list[ns["Point"]]  # noqa: F821
    assert ns["_square"].cache_info().maxsize is None  # an importable helper decorator is kept
    assert ns["other"](1) == ("remote", "samples-other", (1,))  # bound before the module ran


def test_function_arrives_plain_without_its_decorator(tmp_path):
    bundle, fn = _ship(app.compute.fn, tmp_path)
    assert inspect.isfunction(fn) and fn.__name__ == bundle.function_name == "compute"
    assert "fakesdk" not in bundle.module_source and "@functools.lru_cache" in bundle.module_source
    assert "\ndef compute(values" in bundle.module_source
    assert bundle.module_source.splitlines()[1] == "from __future__ import annotations"


def test_bundle_layout(tmp_path):
    bundle = build_bundle(app.compute.fn, remote_name=fakesdk.remote_name)
    src = bundle.module_source
    assert bundle.remote_refs == {"other": "samples-other"}
    assert set(bundle.files) == {
        "tests/__init__.py", "tests/unit/__init__.py", "tests/unit/codeship_samples/__init__.py",
        "tests/unit/codeship_samples/units.py", "tests/unit/codeship_samples/_base.py"}
    assert "import math as m\n" in src and "import json\n" in src
    assert "import tests.unit.codeship_samples.units as units\n" in src
    assert "from tests.unit.codeship_samples.units import hypot\n" in src
    assert "__import__('xml.etree.ElementTree')" in src  # used as xml.etree.ElementTree.Element
    assert "SCALE = 3\n" in src and "DEFAULT_COLOR = Color.BLUE\n" in src
    assert "frozenset({'x', 'y'})" in src and "float('nan')" in src
    order = [src.index(s) for s in ("import json", "SCALE =", "class Color", "class TooBig",
                                    "class VeryTooBig", "class Point", "class Report", "def compute")]
    assert order == sorted(order)
    assert "print(" not in src and "_sidefx" not in src and "def other" not in src
    assert build_bundle(app.compute.fn, remote_name=fakesdk.remote_name) == bundle  # deterministic


def test_loading_runs_no_top_level_statement_of_the_module(tmp_path, capsys):
    events = list(_sidefx.EVENTS)
    _ship(app.compute.fn, tmp_path)
    assert _sidefx.EVENTS == events
    assert "codeship sample app imported" not in capsys.readouterr().out


def test_fresh_interpreter_gets_project_modules_from_files(tmp_path):
    bundle = build_bundle(app.compute.fn, remote_name=fakesdk.remote_name)
    (tmp_path / "bundle.json").write_text(json.dumps(dataclasses.asdict(bundle)))
    loader = textwrap.dedent("""
        import json, sys
        from chalkcompute._code import CodeBundleData, load_bundle
        bundle = CodeBundleData(**json.load(open("bundle.json")))
        fn = load_bundle(bundle, "dest", make_remote=lambda name: lambda *a: name)
        r = fn([1, 5])
        print("RESULT", len(r.points), r.rejected, r.remote, sys.modules["tests.unit.codeship_samples.units"].__file__)
        print("APP LOADED", "tests.unit.codeship_samples.app" in sys.modules)
    """)
    out = _run(["-c", loader], cwd=tmp_path)
    assert "RESULT 1 ['VeryTooBig: 15 > 10'] samples-other" in out
    assert str(tmp_path / "dest" / "tests" / "unit" / "codeship_samples" / "units.py") in out
    assert "APP LOADED False" in out and "codeship sample app imported" not in out


def test_script_function_from_main_travels_without_its_top_level(tmp_path):
    script = tmp_path / "proj" / "script.py"
    script.parent.mkdir()
    script.write_text(textwrap.dedent("""
        import dataclasses, json, sys
        from dataclasses import dataclass
        from chalkcompute._code import build_bundle

        print("SCRIPT TOP LEVEL RAN")
        OFFSET = 10

        @dataclass
        class Acc:
            total: int

        class Boom(Exception):
            pass

        def helper(x):
            return x + OFFSET

        def main_fn(xs):
            try:
                raise Boom("inner")
            except Boom as e:
                note = str(e)
            return [Acc(sum(helper(x) for x in xs)).total, note]

        if __name__ == "__main__":
            bundle = build_bundle(main_fn, remote_name=lambda obj: None)
            with open(sys.argv[1], "w") as fh:
                json.dump(dataclasses.asdict(bundle), fh)
    """))
    out = _run([str(script), str(tmp_path / "bundle.json")], cwd=script.parent)
    assert "SCRIPT TOP LEVEL RAN" in out
    loader = textwrap.dedent("""
        import json
        from chalkcompute._code import CodeBundleData, load_bundle
        fn = load_bundle(CodeBundleData(**json.load(open("bundle.json"))), "dest", make_remote=None)
        print("RESULT", fn([1, 2]))
    """)
    out = _run(["-c", loader], cwd=tmp_path)
    assert "RESULT [23, 'inner']" in out and "SCRIPT TOP LEVEL RAN" not in out


# --- what cannot travel -----------------------------------------------------------------

_LOCK = threading.Lock()
_DOUBLE = lambda x: x * 2  # noqa: E731 - a lambda with findable source travels
_HIDDEN: dict = {}
exec("_NO_SOURCE = lambda x: x", _HIDDEN)
_NO_SOURCE = _HIDDEN["_NO_SOURCE"]


class _Opaque:
    pass


_INSTANCE = _Opaque()


def uses_lock():
    with _LOCK:
        return 1


def uses_lock_through_helper():
    return uses_lock()


def uses_instance():
    return [_INSTANCE for _ in range(1)]  # found inside a comprehension


def uses_undefined():
    return NOT_DEFINED_ANYWHERE + 1  # noqa: F821


def uses_lambdas(v):
    return _DOUBLE(v), _NO_SOURCE(v)


def uses_double(v):
    return _DOUBLE(v)


def _no_remotes(obj):
    return None


def test_lock_is_an_error_naming_the_global():
    with pytest.raises(FunctionCodeError, match=r"function 'uses_lock' uses global '_LOCK' \(a _thread.lock\)"):
        build_bundle(uses_lock, remote_name=_no_remotes)
    with pytest.raises(FunctionCodeError, match=r"'_LOCK' \(through 'uses_lock'\)"):
        check_function(uses_lock_through_helper, remote_name=_no_remotes)


def test_open_file_in_a_closure_is_an_error(tmp_path):
    fh = open(tmp_path / "data.txt", "w")

    def reads():
        return fh.write("x")

    with fh, pytest.raises(FunctionCodeError, match=r"global 'fh' \(a _io.TextIOWrapper\).*inside the function"):
        build_bundle(reads, remote_name=_no_remotes)


def test_arbitrary_instance_is_an_error():
    with pytest.raises(FunctionCodeError, match=r"'_INSTANCE' \(a tests.unit.test_code._Opaque\)"):
        build_bundle(uses_instance, remote_name=_no_remotes)


def test_undefined_names_fail_only_at_deploy():
    check_function(uses_undefined, remote_name=_no_remotes)  # the module may still be executing
    with pytest.raises(FunctionCodeError, match="'NOT_DEFINED_ANYWHERE'"):
        build_bundle(uses_undefined, remote_name=_no_remotes)


def test_lambdas_travel_only_with_their_source(tmp_path):
    assert _ship(uses_double, tmp_path, _no_remotes)[1](4) == 8
    with pytest.raises(FunctionCodeError, match="'_NO_SOURCE'.*source"):
        build_bundle(uses_lambdas, remote_name=_no_remotes)


def test_interactively_defined_function_says_source_is_missing():
    ns = {"__name__": "__main__"}
    exec(compile("def typed():\n    return 1\n", "<stdin>", "exec"), ns)
    with pytest.raises(FunctionCodeError, match="cannot get the source of function 'typed'.*interactive"):
        check_function(ns["typed"], remote_name=_no_remotes)


def test_closure_constants_and_self_recursion_travel(tmp_path):
    base = 7

    def fact(n):
        return 1 if n <= 1 else n * fact(n - 1) + base - base

    assert _ship(fact, tmp_path, _no_remotes)[1](5) == 120


def test_load_bundle_rejects_escaping_paths(tmp_path):
    bad = CodeBundleData("def f():\n    return 1\n", "f", {"../evil.py": ""}, {})
    with pytest.raises(FunctionCodeError, match="escapes"):
        load_bundle(bad, tmp_path, make_remote=_remote)


def test_other_kinds_of_globals(tmp_path):
    from tests.unit.codeship_samples import kinds

    bundle, fn = _ship(kinds.summarize, tmp_path, _no_remotes)
    src = bundle.module_source
    assert "Vector = list[float]\n" in src and "MaybeInt = typing.Optional[int]\n" in src
    assert "TOP = Level.HIGH\n" in src and "add_up = total\n" in src and "calls = 0\n" in src
    assert "REGISTRY" not in src and "__import__('concurrent.futures')" in src
    s, pair, top, low, calls, limit = fn([1.0, 2.5])
    assert (s, tuple(pair), top, low, calls, limit) == (3.5, (3, 0), 2, "LOW", 1, None)
    assert type(pair).__name__ == "Pair" and type(top).__name__ == "Level"
    assert fn([1.0])[4] == 2 and kinds.calls == 0  # the worker's module keeps its own state
