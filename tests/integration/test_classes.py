"""Classes (``@chalkcompute.cls``): the reference's Embedder example and the replica lifecycle,
against a real chalkd on the process runtime.

@before and @after write a line to files in ``$HOOK_DIR`` (the test's tmp dir, passed with
``env=``), so a test counts how often they ran and in which process.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import chalkcompute
from chalkcompute import ClassBuildError, ClassError, RemoteClass, RemoteFunction
from chalkcompute.exceptions import ChalkError
from tests.conftest import wait_for


def _note(kind: str) -> None:
    if "HOOK_DIR" not in os.environ:
        return
    with open(os.path.join(os.environ["HOOK_DIR"], kind), "a") as f:
        f.write(f"{os.getpid()}\n")


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


class StandInModel:
    """Stands in for SentenceTransformer: a vector per text, from its characters."""

    def encode(self, texts):
        if isinstance(texts, str):
            return [float(len(texts)), float(sum(map(ord, texts)) % 97)]
        return [self.encode(t) for t in texts]


class Embedder:
    @chalkcompute.before()
    def load(self):
        _note("before")
        self.model = StandInModel()

    @chalkcompute.method()
    def embed(self, text: str) -> list[float]:
        return self.model.encode(text)

    @chalkcompute.method()
    def embed_batch(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode(texts)

    @chalkcompute.method
    def words(self, text: str):
        # A generator method streams; self.embed is a plain local call inside the replica.
        for word in text.split():
            yield [*self.embed(word), float(inspect.ismethod(self.embed))]

    @chalkcompute.after()
    def shutdown(self):
        _note("after")
        del self.model


def deploy(name: str, hook_dir: Path, target: str | None = None, **kw) -> RemoteClass:
    cls = chalkcompute.cls(name=name, env={"HOOK_DIR": str(hook_dir)}, min_replicas=1, max_replicas=1,
                           target=target, **kw)(Embedder)
    return cls.deploy()


def test_embedder_example(daemon, tmp_path):
    Emb = deploy("Embedder", tmp_path)
    # Ready means @before returned: every method's replica has loaded its model before any call.
    assert len(lines(tmp_path / "before")) == 3
    e = Emb()
    vec = e.embed("hello world")
    batch = e.embed_batch(["a", "b", "c"])
    assert vec == StandInModel().encode("hello world")
    assert batch == StandInModel().encode(["a", "b", "c"])
    for text in ("x", "yy", "zzz"):
        assert e.embed(text) == StandInModel().encode(text)
    # Once per replica (one replica per method; the generator method has one too), not per call.
    assert len(lines(tmp_path / "before")) == 3
    assert len(set(lines(tmp_path / "before"))) == 3
    # Each method is a function version of its own, callable by name.
    infos = Emb.refresh()
    assert sorted(infos) == ["embed", "embed_batch", "words"]
    assert {i.function_name for i in infos.values()} == {"Embedder.embed", "Embedder.embed_batch", "Embedder.words"}
    assert RemoteFunction.from_name("Embedder.embed")("abc") == StandInModel().encode("abc")
    # As on functions: .aio, .spawn, .map, .starmap; a generator method streams.
    assert asyncio.run(e.embed.aio("q")) == StandInModel().encode("q")
    assert e.embed.spawn("sp").get(timeout=60) == StandInModel().encode("sp")
    assert list(e.embed.map(["m1", "m2"])) == StandInModel().encode(["m1", "m2"])
    assert list(e.embed_batch.starmap([(["s"],)])) == [StandInModel().encode(["s"])]
    assert list(e.words("ab cde")) == [[*StandInModel().encode("ab"), 1.0], [*StandInModel().encode("cde"), 1.0]]
    assert len(lines(tmp_path / "before")) == 3
    # Attached by name: the same versions.
    again = RemoteClass.from_name("Embedder")
    assert sorted(again.methods) == ["embed", "embed_batch", "words"]
    assert again().embed("hello world") == vec
    assert again.methods["embed"].info.id == infos["embed"].id


def test_shared_replicas_serve_every_method_after_one_before(daemon, tmp_path):
    Emb = deploy("EmbShared", tmp_path, shared_replicas=True)
    e = Emb()
    assert e.embed("hello world") == StandInModel().encode("hello world")
    assert e.embed_batch(["a", "b"]) == StandInModel().encode(["a", "b"])
    assert list(e.words("ab cd")) == [[*StandInModel().encode(w), 1.0] for w in ("ab", "cd")]
    assert len(lines(tmp_path / "before")) == 1  # one replica (max_replicas=1 for the class) for all methods
    infos = Emb.refresh()
    assert {i.function_name for i in infos.values()} == {"EmbShared.embed", "EmbShared.embed_batch",
                                                         "EmbShared.words"}
    Emb.delete()
    wait_for(lambda: lines(tmp_path / "after") == lines(tmp_path / "before"), what="@after in the one replica")


def test_after_runs_on_delete(daemon, tmp_path):
    Emb = deploy("EmbDeleted", tmp_path)
    assert Emb().embed("x") == StandInModel().encode("x")
    replicas = set(lines(tmp_path / "before"))
    Emb.delete()
    wait_for(lambda: set(lines(tmp_path / "after")) == replicas, what="@after in every replica")
    with pytest.raises(ClassError, match="EmbDeleted"):
        RemoteClass.from_name("EmbDeleted")


def test_after_runs_on_scale_down(daemon, tmp_path):
    Emb = chalkcompute.cls(name="EmbIdle", env={"HOOK_DIR": str(tmp_path)}, min_replicas=0,
                           suspend_cooldown_period=0.2)(Embedder)
    assert Emb().embed("x") == StandInModel().encode("x")
    started = lines(tmp_path / "before")
    assert len(started) == 1  # only the method called got a replica
    wait_for(lambda: lines(tmp_path / "after") == started, what="@after in the idle replica")
    assert Emb().embed("y") == StandInModel().encode("y")  # a new replica, a new @before
    assert len(lines(tmp_path / "before")) == 2


def test_after_runs_on_daemon_sigterm(fresh_daemon, tmp_path):
    Emb = deploy("EmbStopped", tmp_path, target=fresh_daemon.target)
    assert Emb().embed("x") == StandInModel().encode("x")
    replicas = set(lines(tmp_path / "before"))
    assert len(replicas) == 3
    fresh_daemon.proc.send_signal(signal.SIGTERM)
    assert fresh_daemon.proc.wait(60) == 0
    assert set(lines(tmp_path / "after")) == replicas


SCRIPT = """
import chalkcompute

@chalkcompute.cls(min_replicas=0, name="AtExitGreeter")
class Greeter:
    @chalkcompute.method()
    def greet(self, who: str) -> str:
        return "hello " + who


@chalkcompute.function(min_replicas=0)
def at_exit_double(x: int) -> int:
    return 2 * x

print("defined")
"""


def test_a_script_registers_its_class_and_function_when_it_exits(daemon, tmp_path):
    script = tmp_path / "greeter.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "CHALK_COMPUTE_TARGET": daemon.target, "CHALK_REGISTER_AT_EXIT": "1"})
    assert out.returncode == 0 and out.stdout.strip() == "defined", out.stderr
    greeter = RemoteClass.from_name("AtExitGreeter")
    assert sorted(greeter.methods) == ["greet"]
    assert greeter().greet("you") == "hello you"
    assert RemoteFunction.from_name("at_exit_double")(21) == 42  # functions too (they failed at exit alike)


def test_from_name_of_a_missing_class_names_it(daemon):
    with pytest.raises(ClassError, match="'NoSuchClass'"):
        RemoteClass.from_name("NoSuchClass")


def test_constructor_arguments_are_refused(daemon, tmp_path):
    Emb = chalkcompute.cls(name="EmbArgs")(Embedder)
    with pytest.raises(TypeError, match="classes are built with no arguments"):
        Emb("model-name")
    with pytest.raises(TypeError, match="no arguments"):
        Emb(model="x")


class NoMethods:
    def run(self) -> int:
        return 1


class TwoBefores:
    @chalkcompute.before
    def a(self):
        pass

    @chalkcompute.before
    def b(self):
        pass

    @chalkcompute.method
    def run(self) -> int:
        return 1


class NeedsArgs:
    def __init__(self, model: str) -> None:
        self.model = model

    @chalkcompute.method
    def run(self) -> int:
        return 1


class HookWithArgs:
    @chalkcompute.after
    def bye(self, code: int):
        pass

    @chalkcompute.method
    def run(self) -> int:
        return 1


def test_class_errors():
    with pytest.raises(ClassError, match="'NoMethods' has no @chalkcompute.method"):
        chalkcompute.cls(NoMethods)
    with pytest.raises(ClassError, match=r"more than one @chalkcompute.before\(\) \(a, b\)"):
        chalkcompute.cls(TwoBefores)
    with pytest.raises(ClassError, match="__init__ must take no arguments"):
        chalkcompute.cls()(NeedsArgs)
    with pytest.raises(ClassError, match=r"HookWithArgs.bye must take only self"):
        chalkcompute.cls(HookWithArgs)
    with pytest.raises(ClassError, match="cannot contain '.'"):
        chalkcompute.cls(name="a.b")(Embedder)
    assert issubclass(ClassBuildError, ClassError) and issubclass(ClassError, ChalkError)


def test_parameters_work_or_say_they_do_not():
    with pytest.raises(TypeError, match="shared_replicas must be True or False"):
        chalkcompute.cls(shared_replicas="yes")(Embedder)
    with pytest.raises(ValueError, match="serialization_format must be 'pyarrow'"):
        chalkcompute.cls(serialization_format="json")(Embedder)
    with pytest.raises(TypeError, match="cls"):
        chalkcompute.cls(no_such_option=1)(Embedder)
    c = chalkcompute.cls(name="EmbOpts", cpu="1", memory="256Mi", max_replicas=3, min_replicas=0, retries=2,
                         timeout=30, concurrency=2, options={"team": "search"}, suspend_cooldown_period=5)(Embedder)
    spec, _ = c.embed._spec()
    assert (spec.name, spec.resources.cpu_millis, spec.max_replicas, spec.min_replicas) == ("EmbOpts.embed", 1000, 3, 0)
    assert spec.options["team"] == "search" and spec.concurrency.max_concurrent == 2
    assert spec.code.function_name == "Embedder.embed"


class BrokenModel:
    @chalkcompute.before()
    def load(self):
        _note("before")
        raise ValueError("model weights missing")

    @chalkcompute.method()
    def run(self, x: int) -> int:
        return x


def test_failing_before_fails_the_method_after_backoff(daemon, tmp_path):
    Broken = chalkcompute.cls(name="Broken", env={"HOOK_DIR": str(tmp_path)}, min_replicas=0)(BrokenModel)
    # A call queued while replicas keep failing fails as unschedulable instead of hanging.
    with pytest.raises(ChalkError, match="model weights missing"):
        Broken().run(1)
    with pytest.raises(ClassError) as info:
        Broken.wait_ready(timeout=60)
    message = str(info.value)
    assert "'Broken'" in message and "'run'" in message
    assert message.endswith("@before BrokenModel.load failed: ValueError: model weights missing")
    assert len(lines(tmp_path / "before")) == 5  # five starts in a row, then Failed
    out = subprocess.run([sys.executable, "-m", "chalkd.cli", "functions", "--target", daemon.target],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "400"})
    assert "Broken.run" in out.stdout and "model weights missing" in out.stdout


class BrokenPair:
    @chalkcompute.before()
    def load(self):
        _note("before")
        raise KeyError("weights")

    @chalkcompute.method()
    def one(self) -> int:
        return 1

    @chalkcompute.method()
    def two(self) -> int:
        return 2


def test_failing_before_with_shared_replicas_fails_every_method(daemon, tmp_path):
    Broken = chalkcompute.cls(name="BrokenPair", env={"HOOK_DIR": str(tmp_path)}, min_replicas=0,
                              shared_replicas=True)(BrokenPair)
    with pytest.raises(ClassError, match="@before BrokenPair.load failed: KeyError: 'weights'"):
        Broken.wait_ready(timeout=60)
    assert len(lines(tmp_path / "before")) == 5  # one pool: five starts in all, not five per method
    assert {i.function_name for i in Broken.refresh().values()} == {"BrokenPair.one", "BrokenPair.two"}
    with pytest.raises(ChalkError, match="weights"):
        Broken().two()


class Caller:
    @chalkcompute.method()
    def relay(self, text: str) -> list[float]:
        return NESTED().embed(text)


NESTED = chalkcompute.cls(name="NestedEmb", min_replicas=0)(Embedder)


@chalkcompute.function(min_replicas=0)
def relay_fn(text: str) -> list[float]:
    return NESTED().embed(text)


def test_nested_call_goes_through_the_queue(daemon):
    assert relay_fn(" nested ") == StandInModel().encode(" nested ")
    Relay = chalkcompute.cls(name="Relay", min_replicas=0)(Caller)
    assert Relay().relay("from a class") == StandInModel().encode("from a class")
    assert {i.function_name for i in NESTED.refresh().values()} >= {"NestedEmb.embed"}
