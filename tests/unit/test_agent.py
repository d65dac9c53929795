"""The in-container agent (chalkcompute.agent) as a plain subprocess on this host, driven
through the daemon's client (chalkd.containers.agent_client): exec results, errors,
timeouts, stdin, streaming, concurrency, the main command, reaping and shutdown."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chalkcompute.agent import entrypoint
from chalkcompute.agent.protocol import PROTOCOL_VERSION, FrameParser, ProtocolError, encode
from chalkd.containers.agent_client import (
    AgentProtocolError,
    AgentUnavailableError,
    agent_exec,
    agent_status,
    wait_agent_ready,
)

ROOT = Path(__file__).resolve().parents[2]
AGENT_DIR = ROOT / "chalkcompute" / "agent"


async def until(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll an (async or plain) predicate that another process makes true."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)


def gone(pid: int) -> bool:
    """The process no longer exists: not running, and not a zombie left unreaped either."""
    return not Path(f"/proc/{pid}").exists()


class AgentProc:
    def __init__(self, tmp: Path, command: tuple[str, ...] = (), *, how: str = "path",
                 extra: tuple[str, ...] = (), env: dict[str, str] | None = None, socket: Path | None = None):
        self.socket = socket or tmp / "agent.sock"
        self.ready = tmp / "agent.ready"
        self.log_path = tmp / "agent.log"
        options = ("--ready-file", str(self.ready), "--log-level", "INFO", *extra)
        if how == "entrypoint":  # what the daemon puts in a container's config
            argv = [*entrypoint(str(self.socket), python=sys.executable, extra=options), *command]
        else:
            entry = ["-m", "chalkcompute.agent"] if how == "module" else [str(AGENT_DIR / "__main__.py")]
            argv = [sys.executable, *entry, "--socket", str(self.socket), *options]
            if command:
                argv += ["--", *command]
        full_env = {**os.environ, "LC_ALL": "C", "AGENT_TEST_ENV": "from-agent", **(env or {})}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_agent(tmp_path):
    agents: list[AgentProc] = []

    def start(*command: str, **kwargs) -> AgentProc:
        a = AgentProc(tmp_path, command, **kwargs)
        agents.append(a)
        try:
            asyncio.run(wait_agent_ready(a.socket, 20))
        except TimeoutError:
            a.stop()
            raise AssertionError(f"agent did not start:\n{a.log()}") from None
        return a

    yield start
    for a in agents:
        a.stop()


@pytest.fixture
def agent(start_agent):
    return start_agent()


def run(coro):
    return asyncio.run(coro)


# -- exec results -----------------------------------------------------------------------


def test_echo(agent):
    out = run(agent_exec(agent.socket, ["echo", "hi"]))
    assert (out.stdout, out.stderr, out.exit_code, out.signal, out.error) == (b"hi\n", b"", 0, None, None)
    assert isinstance(out.pid, int) and out.pid > 0


def test_nonzero_exit_and_stderr(agent):
    out = run(agent_exec(agent.socket, ["ls", "/does-not-exist"]))
    assert out.exit_code == 2
    assert out.signal is None and out.error is None and out.stdout == b""
    assert out.stderr.decode() == "ls: cannot access '/does-not-exist': No such file or directory\n"


def test_killed_by_signal(agent):
    out = run(agent_exec(agent.socket, ["sh", "-c", "kill -9 $$"]))
    assert (out.exit_code, out.signal, out.error) == (None, 9, None)


def test_start_failures_have_shell_exit_codes(agent, tmp_path):
    """A command that cannot start: no pid, an error like docker exec's, 127 or 126 like a shell."""
    missing = run(agent_exec(agent.socket, ["nosuch-program-xyz", "arg"]))
    assert (missing.exit_code, missing.signal, missing.pid) == (127, None, None)
    assert missing.error == "executable file not found: 'nosuch-program-xyz'"
    no_path = run(agent_exec(agent.socket, ["/no/such/program"]))
    assert (no_path.exit_code, no_path.error) == (127, "no such file or directory: '/no/such/program'")
    not_exec = tmp_path / "data.txt"
    not_exec.write_text("x")
    denied = run(agent_exec(agent.socket, [str(not_exec)]))
    assert (denied.exit_code, denied.error) == (126, f"permission denied: {str(not_exec)!r}")
    bad_cwd = run(agent_exec(agent.socket, ["pwd"], cwd="/no/such/dir"))
    assert bad_cwd.exit_code == 126
    assert bad_cwd.error == "chdir to cwd '/no/such/dir' failed: no such file or directory"


def test_timeout_kills_the_process_group(agent):
    pids: asyncio.Future

    async def go():
        nonlocal pids
        pids = asyncio.get_running_loop().create_future()

        def on_output(stream, data):
            if not pids.done():
                pids.set_result([int(p) for p in data.split()])

        t = time.monotonic()
        # The shell's background child is in the exec's process group: the timeout must reach it too.
        out = await agent_exec(agent.socket, ["sh", "-c", "sleep 30 & echo $! $$; wait"], timeout=0.5,
                               on_output=on_output)
        return out, time.monotonic() - t

    out, elapsed = run(go())
    assert (out.exit_code, out.signal, out.error) == (None, 9, "timed out after 0.5s")
    assert elapsed < 1.5  # not the 2 s EOF grace: the background sleep died with the group
    background, shell = pids.result()
    run(until(lambda: gone(background) and gone(shell), what="the timed-out processes to be reaped"))


def test_stdin_passthrough(agent):
    data = bytes(range(256)) * 4096  # 1 MiB, more than a pipe buffer both ways
    out = run(agent_exec(agent.socket, ["cat"], stdin=data))
    assert out.exit_code == 0 and out.stdout == data
    # No stdin: /dev/null, so cat ends at once.
    empty = run(agent_exec(agent.socket, ["cat"]))
    assert (empty.exit_code, empty.stdout) == (0, b"")


def test_env_and_cwd(agent, tmp_path):
    out = run(agent_exec(agent.socket, ["sh", "-c", 'echo "$FOO $AGENT_TEST_ENV"; pwd'],
                         env={"FOO": "bar baz"}, cwd=str(tmp_path)))
    assert out.stdout.decode() == f"bar baz from-agent\n{tmp_path}\n"


def test_output_streams_before_the_process_ends(agent, tmp_path):
    release = tmp_path / "release"
    chunks: list[tuple[str, bytes]] = []

    async def go():
        first = asyncio.Event()

        def on_output(stream, data):
            chunks.append((stream, data))
            first.set()

        script = f'echo a; echo e >&2; while [ ! -e "{release}" ]; do sleep 0.01; done; echo b'
        task = asyncio.ensure_future(agent_exec(agent.socket, ["sh", "-c", script], on_output=on_output))
        await asyncio.wait_for(first.wait(), 10)
        assert not task.done()  # 'a' arrived while the command still runs
        assert chunks[0] == ("stdout", b"a\n")
        release.touch()
        return await asyncio.wait_for(task, 10)

    out = run(go())
    assert out.exit_code == 0
    assert [d for s, d in chunks if s == "stdout"] == [b"a\n", b"b\n"]
    assert [d for s, d in chunks if s == "stderr"] == [b"e\n"]
    assert (out.stdout, out.stderr) == (b"a\nb\n", b"e\n")


def test_async_callback_and_no_capture(agent):
    seen = []

    async def on_output(stream, data):
        await asyncio.sleep(0)
        seen.append(data)

    out = run(agent_exec(agent.socket, ["echo", "x"], on_output=on_output, capture=False))
    assert (out.exit_code, out.stdout, b"".join(seen)) == (0, b"", b"x\n")


def test_concurrent_execs(agent, tmp_path):
    """20 execs run at the same time (all are running before any may finish)."""
    release = tmp_path / "go"
    n = 20

    async def go():
        script = f'while [ ! -e "{release}" ]; do sleep 0.01; done; echo "$N"'
        tasks = [asyncio.ensure_future(agent_exec(agent.socket, ["sh", "-c", script], env={"N": str(i)}))
                 for i in range(n)]
        await until(lambda: _status_execs(agent.socket, n), what=f"{n} execs running")
        release.touch()
        return await asyncio.wait_for(asyncio.gather(*tasks), 30)

    outs = run(go())
    assert [o.stdout for o in outs] == [f"{i}\n".encode() for i in range(n)]
    assert all(o.exit_code == 0 for o in outs)
    assert len({o.pid for o in outs}) == n


async def _status_execs(sock, n):
    return (await agent_status(sock))["execs"] == n


def test_disconnect_kills_the_exec(agent):
    async def go():
        pid = asyncio.get_running_loop().create_future()

        def on_output(stream, data):
            if not pid.done():
                pid.set_result(int(data))

        task = asyncio.ensure_future(agent_exec(agent.socket, ["sh", "-c", "echo $$; exec sleep 1000"],
                                                on_output=on_output))
        p = await asyncio.wait_for(pid, 10)
        task.cancel()  # closes the connection
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: gone(p), what="the abandoned exec to be killed")
        await until(lambda: _status_execs(agent.socket, 0), what="the agent to forget it")

    run(go())


def test_background_output_holder_does_not_hang_the_exec(start_agent):
    agent = start_agent(extra=("--eof-grace", "0.2"))
    out = run(agent_exec(agent.socket, ["sh", "-c", "sleep 30 & echo started"]))
    assert (out.exit_code, out.stdout) == (0, b"started\n")


def test_orphans_are_reaped(agent):
    """A grandchild orphaned by its exec is adopted (subreaper here, PID 1 in a container) and reaped."""
    out = run(agent_exec(agent.socket, ["sh", "-c", "sleep 0.2 >/dev/null 2>&1 & echo $!"]))
    orphan = int(out.stdout)
    run(until(lambda: gone(orphan), what="the orphan to be reaped, not left a zombie"))


# -- the main command, status and stopping ------------------------------------------------


def test_main_command_exit_is_recorded_and_exec_keeps_working(start_agent):
    a = start_agent("sh", "-c", "echo main-output; exit 7", how="module")
    status = run(until(lambda: _main_done(a.socket), what="the main command to exit"))
    main = status["main"]
    assert (main["running"], main["exit_code"], main["signal"], main["error"]) == (False, 7, None, None)
    assert main["argv"] == ["sh", "-c", "echo main-output; exit 7"] and main["pid"] > 0
    assert a.proc.poll() is None  # the agent stays up
    assert run(agent_exec(a.socket, ["echo", "still"])).stdout == b"still\n"
    assert "main-output" in a.log()  # it inherits the agent's stdout (docker logs)


async def _main_done(sock):
    status = await agent_status(sock)
    return status if not status["main"]["running"] else None


def test_entrypoint_runs_the_agent_and_the_image_command(start_agent):
    a = start_agent("sh", "-c", "exit 3", how="entrypoint")
    assert run(until(lambda: _main_done(a.socket), what="the main command to exit"))["main"]["exit_code"] == 3
    assert run(agent_exec(a.socket, ["echo", "ok"])).stdout == b"ok\n"
    # No main command: the daemon's config still ends the entrypoint with "--".
    assert entrypoint("/s")[-1] == "--"


@pytest.mark.timeout(30)
def test_exit_with_main_ends_the_agent_with_the_apps_code(tmp_path):
    # A scaling group's replica: its container must end when its app does, with the app's code.
    a = AgentProc(tmp_path, ("sh", "-c", "echo app-output; exit 7"), extra=("--exit-with-main",))
    assert a.proc.wait(20) == 7
    assert "app-output" in a.log()
    (tmp_path / "b").mkdir()
    b = AgentProc(tmp_path / "b", ("nosuch-app-xyz",), extra=("--exit-with-main",))
    assert b.proc.wait(20) == 127
    # SIGTERM (a requested stop) is still a clean stop, whatever the app does with it.
    c_dir = tmp_path / "c"
    c_dir.mkdir()
    c = AgentProc(c_dir, ("sleep", "1000"), extra=("--exit-with-main",))
    asyncio.run(wait_agent_ready(c.socket, 20))
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(20) == 0


def test_missing_main_command_is_reported(start_agent):
    a = start_agent("nosuch-entrypoint-xyz")
    main = run(agent_status(a.socket))["main"]
    assert (main["running"], main["exit_code"], main["pid"]) == (False, 127, None)
    assert main["error"] == "executable file not found: 'nosuch-entrypoint-xyz'"


def test_no_main_command(agent):
    status = run(agent_status(agent.socket))
    assert status["main"] is None and status["agent_pid"] == agent.proc.pid and status["execs"] == 0


def test_sigterm_stops_main_command_and_execs(start_agent):
    a = start_agent("sleep", "1000")
    main_pid = run(agent_status(a.socket))["main"]["pid"]

    async def go():
        task = asyncio.ensure_future(agent_exec(a.socket, ["sleep", "1000"]))
        await until(lambda: _status_execs(a.socket, 1), what="the exec to run")
        a.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(task, 10)

    out = run(go())
    assert (out.exit_code, out.signal) == (None, signal.SIGTERM)  # forwarded, and it died of it
    assert a.proc.wait(10) == 0
    assert gone(main_pid)
    assert not a.socket.exists() and not a.ready.exists()
    with pytest.raises(AgentUnavailableError):
        run(agent_exec(a.socket, ["true"]))


def test_stop_grace_then_sigkill(start_agent):
    """A main command that ignores SIGTERM is SIGKILLed after --stop-grace."""
    a = start_agent("sh", "-c", "trap '' TERM; while :; do sleep 0.05; done", extra=("--stop-grace", "0.3"))
    main_pid = run(agent_status(a.socket))["main"]["pid"]
    t = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(10) == 0
    assert time.monotonic() - t < 5
    assert gone(main_pid)


# -- sockets, protocol and packaging -------------------------------------------------------


def test_unavailable_and_not_ready(tmp_path):
    with pytest.raises(AgentUnavailableError, match="no agent listening"):
        run(agent_exec(tmp_path / "missing.sock", ["true"]))
    with pytest.raises(TimeoutError, match="did not answer .* within 0.2s"):
        run(wait_agent_ready(tmp_path / "missing.sock", 0.2))


def test_stale_socket_file_is_replaced_and_mode_is_0600(start_agent, tmp_path):
    import socket as socket_mod

    stale = socket_mod.socket(socket_mod.AF_UNIX)
    stale.bind(str(tmp_path / "agent.sock"))
    stale.close()  # a socket file nobody listens on, as after a crash
    a = start_agent()
    assert (a.socket.stat().st_mode & 0o777) == 0o600
    assert run(agent_exec(a.socket, ["echo", "ok"])).stdout == b"ok\n"


def test_long_socket_path(start_agent, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    a = start_agent(socket=deep / "agent.sock")
    assert len(os.fsencode(str(a.socket))) > 108
    assert run(agent_exec(a.socket, ["echo", "deep"])).stdout == b"deep\n"


def test_protocol_version_and_bad_requests(agent):
    async def raw(header):
        reader, writer = await asyncio.open_unix_connection(str(agent.socket))
        writer.write(encode(header))
        data = await reader.read()  # the agent answers and closes
        writer.close()
        return FrameParser().feed(data)

    frames = run(raw({"t": "exec", "v": PROTOCOL_VERSION + 1, "argv": ["true"]}))
    assert frames[0][0] == {"t": "hello", "v": PROTOCOL_VERSION, "pid": agent.proc.pid}
    assert frames[1][0]["t"] == "error" and "version" in frames[1][0]["error"]
    frames = run(raw({"t": "exec", "v": PROTOCOL_VERSION, "argv": []}))
    assert frames[1][0] == {"t": "error", "code": "bad_request",
                            "error": "exec needs 'argv': a non-empty list of strings"}
    with pytest.raises(AgentProtocolError, match="'timeout' must be a positive number"):
        run(agent_exec(agent.socket, ["true"], timeout=-1))


def test_frame_parser_limits():
    with pytest.raises(ProtocolError, match="too large"):
        FrameParser().feed(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    frames = FrameParser().feed(encode({"t": "a"}, b"1") + encode({"t": "b"}))
    assert frames == [({"t": "a"}, b"1"), ({"t": "b"}, b"")]


def test_agent_is_standalone_stdlib_py39():
    """Runs under any image's python3 >= 3.9 and, started by path, imports nothing but itself."""
    for path in AGENT_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(), feature_version=(3, 9))
        for node in ast.walk(tree):
            if isinstance(node, ast.Match):
                raise AssertionError(f"{path.name}: match needs 3.10")
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("chalk"), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("chalk") for a in node.names), path.name
    code = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='probe'); "
            "print(sorted(m for m in sys.modules if m.startswith(('chalk', 'pyarrow', 'grpclib'))))")
    out = subprocess.run([sys.executable, "-c", code, str(AGENT_DIR / "__main__.py")], capture_output=True,
                         text=True, timeout=60, check=True, cwd="/")
    assert out.stdout.strip() == "[]"


def test_await_env_holds_the_main_command_until_the_secrets_arrive(start_agent, tmp_path):
    from chalkd.containers.agent_client import agent_set_env

    out = tmp_path / "main.out"
    a = start_agent("sh", "-c", f'echo "$API_KEY" > {out}', extra=("--await-env",))
    assert run(agent_status(a.socket))["main"] is None  # not started: no secrets yet
    run(agent_set_env(a.socket, {"API_KEY": "s3cr3t-value"}))
    run(until(lambda: _main_done(a.socket), what="the main command to exit"))
    assert out.read_text() == "s3cr3t-value\n"
    assert run(agent_exec(a.socket, ["sh", "-c", "echo $API_KEY"])).stdout == b"s3cr3t-value\n"
    assert "s3cr3t-value" not in a.log()  # never logged
