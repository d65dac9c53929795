"""The reference's function examples, as written, against a real chalkd."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys

import pytest

import chalkcompute
from chalkcompute import Image, RemoteFunction

pytestmark = pytest.mark.usefixtures("daemon")


@chalkcompute.function
def add(x: int, y: int) -> int:
    return x + y


def test_add(daemon):
    add.wait_ready()
    result = add(3, 5)
    assert result == 8
    info = add.info
    assert info.function_name == "add" and info.version >= 1
    assert info.scaling_group_name


def square(x: int) -> int:
    return x * x


def test_imperative_remote_function():
    fn = RemoteFunction(
        square,
        image=Image.debian_slim(),
        name="square",
        min_replicas=1,
        max_replicas=2,
    )
    fn.deploy()
    assert fn(7) == 49
    assert fn.refresh().function_name == "square"


img = (
    Image.debian_slim()
    .pip_install(["numpy"])
)


@chalkcompute.function(
    image=img,
    cpu="1",
    memory="2Gi",
    min_replicas=1,
    max_replicas=4,
)
def embed(text: str) -> list[float]:
    import numpy as np
    return np.ones(8).tolist()


@pytest.mark.timeout(600)
def test_embed_with_pip_image():
    embed.deploy()
    assert embed("hello world") == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


@chalkcompute.function
def divide(a: float, b: float) -> float:
    return a / b


def test_divide_error():
    divide.wait_ready()
    with pytest.raises(RuntimeError) as info:
        divide(1.0, 0.0)
    err = info.value
    assert isinstance(err, chalkcompute.RemoteExecutionError)
    assert isinstance(err, chalkcompute.FunctionError)
    assert str(err) == "ZeroDivisionError: float division by zero"
    assert err.function_name == "divide"
    assert err.exception_type == "builtins.ZeroDivisionError"
    assert err.message == "float division by zero"
    assert "ZeroDivisionError" in err.remote_traceback and "a / b" in err.remote_traceback
    assert err.call_id.startswith("fc-")


@chalkcompute.function
async def fragile_gen():
    yield "ok-1"
    yield "ok-2"
    raise ValueError("something went wrong")


def test_fragile_gen():
    seen = []
    with pytest.raises(RuntimeError, match="^ValueError: something went wrong$"):
        for item in fragile_gen():
            seen.append(item)
    assert seen == ["ok-1", "ok-2"]


@chalkcompute.function
async def gated_stream(gate_path: str):
    import asyncio
    import os

    yield "first"
    # Wait for the caller to say it has the first chunk: if chunks only left
    # the worker at the end, the caller would never see it and this would hang.
    while not os.path.exists(gate_path):
        await asyncio.sleep(0.01)
    yield "second"


def test_first_chunk_arrives_while_generator_runs(tmp_path):
    gate = tmp_path / "gate"
    stream = gated_stream(str(gate))
    assert next(stream) == "first"
    gate.touch()
    assert list(stream) == ["second"]


@chalkcompute.function
def translate(text: str, target_lang: str) -> str:
    return f"[{target_lang}] {text.upper()}"


@chalkcompute.function
async def transcribe(audio_uri: str):
    for i, text in enumerate(["welcome to the review", "revenue numbers"]):
        yield {"start": float(i * 3), "end": float(i * 3 + 2), "text": text}


@chalkcompute.function
async def transcribe_and_translate(audio_uri: str, target_lang: str):
    """Transcribe audio, then translate each segment."""
    translate.wait_ready()

    async for segment in transcribe(audio_uri):
        translated = translate(segment["text"], target_lang)
        yield {
            **segment,
            "translated": translated,
        }


def test_nested_calls():
    transcribe_and_translate.wait_ready()
    segs = list(transcribe_and_translate("https://example.com/meeting.wav", target_lang="es"))
    assert [s["translated"] for s in segs] == ["[es] WELCOME TO THE REVIEW", "[es] REVENUE NUMBERS"]
    assert segs[1]["start"] == 3.0 and segs[1]["text"] == "revenue numbers"


def test_sync_calls_inside_async_code():
    async def main():
        # A blocking call inside a running event loop must not deadlock...
        blocking = add(1, 2)
        # ... and the async twins work alongside it.
        results = await asyncio.gather(*(add.aio(i, i) for i in range(10)))
        chunks = [c async for c in transcribe.aio("x")]
        return blocking, results, chunks

    blocking, results, chunks = asyncio.run(main())
    assert blocking == 3
    assert results == [2 * i for i in range(10)]
    assert [c["text"] for c in chunks] == ["welcome to the review", "revenue numbers"]


def test_from_name_in_second_process(daemon):
    add.wait_ready()
    code = (
        "import chalkcompute\n"
        "f = chalkcompute.RemoteFunction.from_name('add')\n"
        "print(f(20, 22))\n"
        "print(f.info.id)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CHALK_COMPUTE_TARGET": daemon.target})
    assert out.returncode == 0, out.stderr
    value, fid = out.stdout.split()
    assert value == "42" and fid == add.info.id


@dataclasses.dataclass
class Point:
    x: float
    y: float
    label: str = ""


@chalkcompute.function
def midpoint(a: Point, b: Point) -> Point:
    return Point((a.x + b.x) / 2, (a.y + b.y) / 2, label=f"{a.label}-{b.label}")


def test_dataclass_argument_and_result():
    result = midpoint(Point(0, 0, "a"), Point(2, 4, "b"))
    assert result == Point(1.0, 2.0, "a-b")
    assert type(result) is Point


@chalkcompute.function
def describe(values: list[int], weights: dict[str, float], blob: bytes, flag: bool, nothing: None) -> dict[str, float]:
    return {"sum": float(sum(values)), "w": sum(weights.values()), "n": float(len(blob)), "flag": float(flag)}


def test_container_types_round_trip():
    out = describe([1, 2, 3], {"a": 0.5, "b": 1.5}, b"\x00\x01", True, None)
    assert out == {"sum": 6.0, "w": 2.0, "n": 2.0, "flag": 1.0}


@chalkcompute.function
def count_up(n: int):
    for i in range(n):
        yield {"i": i}


def test_sync_generator_streams_many_chunks():
    got = [c["i"] for c in count_up(5000)]
    assert got == list(range(5000))


def test_script_top_level_never_runs_in_worker(daemon, tmp_path):
    marker = tmp_path / "marker"
    script = tmp_path / "script.py"
    script.write_text(
        "import chalkcompute\n"
        f"open({str(marker)!r}, 'a').write('top\\n')\n"
        "@chalkcompute.function(name='script_fn')\n"
        "def script_fn(x: int) -> int:\n"
        "    return x + 1\n"
        "if __name__ == '__main__':\n"
        "    print(script_fn(1))\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CHALK_COMPUTE_TARGET": daemon.target}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"
    assert marker.read_text() == "top\n"  # once: in the caller, never in the worker


def test_same_content_same_version_changed_content_next_version(daemon):
    def v(x: int) -> int:
        return x

    a = RemoteFunction(v, name="versioned")
    b = RemoteFunction(v, name="versioned")
    a.deploy()
    b.deploy()
    assert a.info.id == b.info.id

    def v(x: int) -> int:  # noqa: F811  (new content, same name)
        return x + 1

    c = RemoteFunction(v, name="versioned")
    c.deploy()
    assert c.info.version == a.info.version + 1
    assert c(1) == 2
    assert RemoteFunction.from_id(a.info.id)(1) == 1
    assert RemoteFunction.from_name("versioned").info.id == c.info.id


@chalkcompute.function
def endless():
    i = 0
    while True:
        yield i
        i += 1


def test_abandoned_streams_do_not_exhaust_the_worker():
    # Each abandoned stream is cancelled; a sync generator's thread must stop too,
    # or the worker would run out of threads after a handful.
    for _ in range(10):
        stream = endless()
        assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
        del stream
    assert next(endless()) == 0


@chalkcompute.function
def big_chunks(n: int, size: int):
    for i in range(n):
        yield bytes([i % 256]) * size


def test_large_chunks_are_split_under_the_message_limit():
    # 40 chunks of 1 MiB would be one 40 MiB message if coalesced blindly.
    got = list(big_chunks(40, 2**20))
    assert len(got) == 40 and all(len(c) == 2**20 and c[0] == i for i, c in enumerate(got))


@chalkcompute.function
def numbers(n: int):
    yield from range(n)


def test_aio_on_a_lazy_handle_never_blocks_the_loop():
    # A handle by name (how nested calls are bound in workers) hydrates with a round trip;
    # `.aio` does it on the caller's loop, which keeps running meanwhile.
    add.deploy()
    numbers.deploy()
    lazy_add, lazy_count = RemoteFunction._lazy("add"), RemoteFunction._lazy("numbers")
    ticks = []

    async def main():
        async def ticker():
            while not done.is_set():
                ticks.append(1)
                await asyncio.sleep(0)

        done = asyncio.Event()
        tick = asyncio.ensure_future(ticker())
        pending = lazy_add.aio(2, 3)  # returns at once: no round trip before the await
        assert lazy_add.info is None and ticks == []
        value = await pending
        chunks = [c async for c in lazy_count.aio(3)]
        done.set()
        await tick
        return value, chunks

    value, chunks = asyncio.run(main())
    assert (value, chunks) == (5, [0, 1, 2])
    assert len(ticks) > 1  # the loop ran while the handles hydrated
    with pytest.raises(TypeError, match="generator function"):
        asyncio.run(_await(RemoteFunction._lazy("numbers").aio(1)))


async def _await(x):
    return await x


def test_from_name_and_from_id_have_async_twins():
    add.deploy()

    async def main():
        by_name = await RemoteFunction.from_name.aio("add")
        by_id = await RemoteFunction.from_id.aio(by_name.info.id)
        return await by_name.aio(1, 2), by_id.info.id == by_name.info.id

    assert asyncio.run(main()) == (3, True)
    assert RemoteFunction.from_name("add")(2, 2) == 4
    with pytest.raises(chalkcompute.FunctionNotFoundError):
        RemoteFunction.from_name("never-deployed-anywhere")
