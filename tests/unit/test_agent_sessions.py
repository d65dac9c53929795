"""Protocol v2 exec sessions: a real agent (chalkcompute.agent, as a subprocess of the host's python)
driven through the daemon's client (chalkd.sandboxes.agent_link): output events, stdin credits,
signals, timeouts, acks and the window, detach / reattach / takeover, and the v1 exec unchanged."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal

import pytest

from chalkd.containers.agent_client import AgentProtocolError, AgentUnavailableError, agent_exec
from chalkd.sandboxes.agent_link import (
    AgentEvent,
    ExecLink,
    SessionExists,
    SessionGone,
    SessionNotFound,
    TooManySessions,
    list_sessions,
)
from tests.unit import test_agent

# The agent-as-a-subprocess fixtures of the v1 tests.
start_agent, agent, until = test_agent.start_agent, test_agent.agent, test_agent.until

pytestmark = pytest.mark.timeout(60)

READ_MAX = 1 << 20  # the agent's largest output event


def run(coro):
    return asyncio.run(coro)


async def collect(link: ExecLink, *, ack: bool = True) -> tuple[bytes, bytes, AgentEvent, list[int]]:
    """(stdout, stderr, exit event, every seq seen), acking as it goes."""
    out, err, seqs = bytearray(), bytearray(), []
    exit_event = None
    while events := await link.next_events():
        for ev in events:
            if ev.kind == "stdin_credit":
                continue
            seqs.append(ev.seq)
            if ev.kind == "stdout":
                out += ev.data
            elif ev.kind == "stderr":
                err += ev.data
            elif ev.kind == "exit":
                exit_event = ev
        if ack and seqs:
            await link.ack(seqs[-1])
    await link.close()
    assert exit_event is not None
    return bytes(out), bytes(err), exit_event, seqs


async def session_info(sock, sid: str) -> dict | None:
    return next((s for s in await list_sessions(sock) if s["session"] == sid), None)


def test_echo(agent):
    async def go():
        link = await ExecLink.start(agent.socket, "echo-1", ["echo", "hi"])
        assert isinstance(link.pid, int) and link.pid > 0
        assert link.session == "echo-1" and link.stdin_credit == 1 << 20
        out, err, ex, seqs = await collect(link)
        await link.close()
        return out, err, ex, seqs

    out, err, ex, seqs = run(go())
    assert (out, err, ex.exit_code, ex.signal, ex.error) == (b"hi\n", b"", 0, None, None)
    assert seqs == list(range(1, len(seqs) + 1))  # numbered from 1, no gap, exit last


def test_stdout_and_stderr_are_kept_apart(agent):
    script = "for i in $(seq 1 200); do echo out$i; echo err$i >&2; done; exit 3"

    async def go():
        return await collect(await ExecLink.start(agent.socket, "mix", ["sh", "-c", script]))

    out, err, ex, seqs = run(go())
    assert out == b"".join(b"out%d\n" % i for i in range(1, 201))
    assert err == b"".join(b"err%d\n" % i for i in range(1, 201))
    assert ex.exit_code == 3 and seqs == sorted(seqs)


def test_cat_echoes_stdin_until_it_is_closed(agent):
    async def go():
        link = await ExecLink.start(agent.socket, "cat-1", ["cat"])
        got = bytearray()
        for piece in (b"first\n", b"second\n"):
            await link.write_stdin(piece)
            want = len(got) + len(piece)
            while len(got) < want:  # each piece comes back before stdin is closed
                for ev in await link.next_events():
                    if ev.kind == "stdout":
                        got += ev.data
                        await link.ack(ev.seq)
        assert bytes(got) == b"first\nsecond\n"
        assert (await session_info(agent.socket, "cat-1"))["running"]
        await link.close_stdin()
        out, _, ex, _ = await collect(link)
        return out, ex

    out, ex = run(go())
    assert out == b"" and ex.exit_code == 0


def test_stdin_larger_than_the_credit_flows_through(agent):
    data = os.urandom(5 << 20)

    async def go():
        link = await ExecLink.start(agent.socket, "cat-big", ["sh", "-c", "sha256sum; cat /dev/null"])
        credits = []
        view = memoryview(data)
        while view:
            while link.stdin_credit == 0:
                credits += [ev.up_to for ev in await link.next_events() if ev.kind == "stdin_credit"]
            n = min(link.stdin_credit, len(view), 300_000)
            await link.write_stdin(bytes(view[:n]))
            view = view[n:]
        await link.close_stdin()
        out, _, ex, _ = await collect(link)
        return out, ex, credits

    out, ex, credits = run(go())
    assert ex.exit_code == 0 and out.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert credits and credits == sorted(credits)  # the credit only grows


def test_send_signal_reports_the_signal_and_a_bad_number_is_ignored(agent):
    async def go():
        link = await ExecLink.start(agent.socket, "sleeper", ["sleep", "1000"])
        await link.send_signal(9999)  # not a signal: ignored, logged, nothing dies
        await link.send_signal(0)
        await link.send_signal(signal.SIGTERM)
        return await collect(link)

    _, _, ex, _ = run(go())
    assert (ex.exit_code, ex.signal, ex.error) == (None, signal.SIGTERM, None)
    assert "ignoring a request to send signal 9999" in agent.log()


def test_a_missing_binary_exits_127_with_an_error(agent):
    async def go():
        link = await ExecLink.start(agent.socket, "nosuch", ["no-such-program-xyz"])
        assert link.pid is None
        return await collect(link)

    out, err, ex, seqs = run(go())
    assert (ex.exit_code, ex.error, seqs) == (127, "executable file not found: 'no-such-program-xyz'", [1])


def test_timeout_kills_with_signal_9(agent):
    async def go():
        return await collect(await ExecLink.start(agent.socket, "slow", ["sleep", "1000"], timeout=0.3))

    _, _, ex, _ = run(go())
    assert (ex.exit_code, ex.signal, ex.error) == (None, 9, "timed out after 0.3s")


def test_reattach_mid_stream_loses_and_repeats_nothing(agent):
    expected = b"".join(b"%d\n" % i for i in range(1, 300_001))  # ~2 MB

    async def go():
        link = await ExecLink.start(agent.socket, "reattach", ["seq", "1", "300000"], window=256 << 10)
        got, last, acked = bytearray(), 0, 0
        while len(got) < 500_000:
            acked = last
            await link.ack(acked)  # all but the last batch: events acked and not, both sides of `after`
            for ev in await link.next_events():
                if ev.kind == "stdout":
                    got += ev.data
                    last = ev.seq
        await link.close()  # detach mid-stream, with more in flight
        await until(lambda: _detached(agent.socket, "reattach"), what="the agent to see the detach")
        with pytest.raises(SessionGone, match="acked and dropped"):
            await ExecLink.attach(agent.socket, "reattach", after=acked - 1)
        link = await ExecLink.attach(agent.socket, "reattach", after=last)
        out, _, ex, seqs = await collect(link)
        assert seqs[0] == last + 1
        return bytes(got) + out, ex

    out, ex = run(go())
    assert ex.exit_code == 0 and out == expected


async def _detached(sock, sid):
    info = await session_info(sock, sid)
    return info is not None and not info["attached"]


def test_an_unacking_reader_stops_the_process_at_the_window(agent):
    window = 1 << 20
    total = 64 << 20

    async def go():
        link = await ExecLink.start(agent.socket, "flood", ["head", "-c", str(total), "/dev/zero"], window=window)
        # Nobody acks: the agent stops reading the pipe once it holds a window's worth.
        info = await until(lambda: _paused(agent.socket, "flood"), what="the agent to stop reading")
        assert info["running"] and window <= info["held_bytes"] <= window + READ_MAX
        received, last = 0, 0
        while received < info["held_bytes"]:
            for ev in await link.next_events():
                received += len(ev.data)
                last = max(last, ev.seq)
        # Everything sent is everything held: nothing more came while nothing was acked.
        again = await session_info(agent.socket, "flood")
        assert again["held_bytes"] == received == info["held_bytes"] and again["last_seq"] == last
        assert not again["reading"] and again["running"]
        await link.ack(last)  # acks resume the flow
        out, _, ex, _ = await collect(link)
        return received + len(out), ex

    n, ex = run(go())
    assert (n, ex.exit_code) == (total, 0)


async def _paused(sock, sid):
    info = await session_info(sock, sid)
    return info if info is not None and not info["reading"] and info["held_bytes"] > 0 else None


def test_detach_timeout_sends_sighup(agent):
    async def go():
        link = await ExecLink.start(agent.socket, "orphan", ["sleep", "1000"], detach_timeout=0.2)
        await link.close()
        await until(lambda: _exited(agent.socket, "orphan"), what="the detached session to end")
        link = await ExecLink.attach(agent.socket, "orphan")  # exited, not acked: still held
        return await collect(link)

    _, _, ex, seqs = run(go())
    assert (ex.signal, seqs) == (signal.SIGHUP, [1])
    # The exit was acked: forgotten at once (without waiting for RETAIN).
    run(until(lambda: _forgotten(agent.socket, "orphan"), what="the acked session to be forgotten"))


async def _forgotten(sock, sid):
    return await session_info(sock, sid) is None


async def _exited(sock, sid):
    info = await session_info(sock, sid)
    return info is not None and info["exited"]


def test_a_second_attach_takes_the_session_over(agent):
    async def go():
        first = await ExecLink.start(agent.socket, "shared", ["cat"])
        second = await ExecLink.attach(agent.socket, "shared")
        with pytest.raises(AgentUnavailableError):
            while True:  # the agent closes the first connection
                await first.next_events()
        await second.write_stdin(b"via second\n")
        await second.close_stdin()
        return await collect(second)

    out, _, ex, _ = run(go())
    assert (out, ex.exit_code) == (b"via second\n", 0)


def test_unknown_duplicate_and_forgotten_sessions(agent):
    async def go():
        with pytest.raises(SessionNotFound, match="no session 'nope'"):
            await ExecLink.attach(agent.socket, "nope")
        link = await ExecLink.start(agent.socket, "dup", ["sleep", "1000"])
        with pytest.raises(SessionExists, match="'dup' already exists"):
            await ExecLink.start(agent.socket, "dup", ["true"])
        with pytest.raises(AgentProtocolError, match="'session' must be 1 to 64"):
            await ExecLink.start(agent.socket, "bad id!", ["true"])
        await link.send_signal(signal.SIGKILL)
        await collect(link)  # acks the exit: the session is forgotten
        await until(lambda: _forgotten(agent.socket, "dup"), what="the acked session to be forgotten")
        with pytest.raises(SessionNotFound):
            await ExecLink.attach(agent.socket, "dup")

    run(go())


def test_v1_exec_still_works_beside_sessions(agent):
    async def go():
        link = await ExecLink.start(agent.socket, "beside", ["cat"])
        out = await agent_exec(agent.socket, ["echo", "v1"])
        await link.close_stdin()
        await collect(link)
        return out

    out = run(go())
    assert (out.stdout, out.exit_code) == (b"v1\n", 0)


def test_agent_stop_signals_sessions(start_agent):
    a = start_agent()

    async def go():
        link = await ExecLink.start(a.socket, "stopme", ["sleep", "1000"])
        a.proc.send_signal(signal.SIGTERM)
        return await collect(link)

    _, _, ex, _ = run(go())
    assert ex.signal == signal.SIGTERM
    assert a.proc.wait(10) == 0


def test_too_many_sessions_and_retention_of_unacked_exits(start_agent):
    a = start_agent(extra=("--max-sessions", "2", "--session-retain", "0.3"))

    async def go():
        first = await ExecLink.start(a.socket, "one", ["true"])
        second = await ExecLink.start(a.socket, "two", ["sleep", "1000"])
        with pytest.raises(TooManySessions, match="too many sessions: 2 held, at most 2"):
            await ExecLink.start(a.socket, "three", ["true"])
        await first.close()  # detached; it exits and nobody acks: kept --session-retain, then forgotten
        await until(lambda: _forgotten(a.socket, "one"), what="the unacked session to be forgotten")
        third = await ExecLink.start(a.socket, "three", ["true"])  # room again
        await collect(third)
        await second.send_signal(signal.SIGKILL)
        await collect(second)

    run(go())


def test_stdin_beyond_the_credit_is_refused(agent):
    async def go():
        link = await ExecLink.start(agent.socket, "greedy", ["sleep", "1000"])
        await link.write_stdin(bytes(link.stdin_credit + 1))  # ignores its credit
        with pytest.raises(AgentProtocolError, match="stdin beyond the credit granted"):
            while True:
                await link.next_events()
        await link.close()
        # Only the connection was dropped: the session lives on, detached.
        link = await ExecLink.attach(agent.socket, "greedy")
        await link.send_signal(signal.SIGKILL)
        return await collect(link)

    assert run(go())[2].signal == signal.SIGKILL


def test_a_background_process_holding_the_pipes_does_not_hold_the_exit(start_agent):
    a = start_agent(extra=("--eof-grace", "0.2"))

    async def go():
        return await collect(await ExecLink.start(a.socket, "bg", ["sh", "-c", "sleep 1000 & echo $!"]))

    out, _, ex, _ = run(go())
    os.kill(int(out), signal.SIGKILL)  # the holder, still running
    assert ex.exit_code == 0


def test_the_agent_going_away_ends_the_link(start_agent):
    a = start_agent()

    async def go():
        link = await ExecLink.start(a.socket, "doomed", ["sleep", "1000"])
        a.proc.kill()
        try:
            with pytest.raises(AgentUnavailableError, match="ended before its exit event"):
                while True:
                    await link.next_events()
        finally:
            os.kill(link.pid, signal.SIGKILL)  # orphaned: no agent to stop it
        await link.close()

    run(go())


def test_stdin_credit_is_counted_per_link_across_a_reattach(agent):
    async def go():
        first = await ExecLink.start(agent.socket, "relay", ["cat"])
        await first.write_stdin(b"a" * 100)
        got = last = 0
        while got < 100:
            for ev in await first.next_events():
                if ev.kind == "stdout":
                    got, last = got + len(ev.data), ev.seq
        await first.close()
        second = await ExecLink.attach(agent.socket, "relay", after=last)
        assert second.stdin_credit == 1 << 20  # all of it: this link has sent nothing yet
        await second.write_stdin(b"b" * 5000)
        assert second.stdin_credit == (1 << 20) - 5000
        credits, out = [], b""
        while len(out) < 5000:
            for ev in await second.next_events():
                if ev.kind == "stdin_credit":
                    credits.append(ev.up_to)
                elif ev.kind == "stdout":
                    out += ev.data
        await second.close_stdin()
        rest, _, ex, _ = await collect(second)
        return credits, out + rest, ex, second.stdin_credit

    credits, out, ex, left = run(go())
    assert credits == [5000 + (1 << 20)] and left == 1 << 20  # this link's own count, not the session's
    assert out == b"b" * 5000 and ex.exit_code == 0


def test_the_link_reads_frames_larger_than_its_buffer_and_pauses_when_full():
    from chalkcompute.agent.protocol import encode
    from chalkd.sandboxes import agent_link

    class Transport:
        paused = False

        def pause_reading(self):
            self.paused = True

        def resume_reading(self):
            self.paused = False

    stream = agent_link._FrameStream("test")
    transport = Transport()
    stream.connection_made(transport)
    big = os.urandom(5 << 20)
    wire = encode({"t": "hello", "v": 1, "pid": 1}) + encode({"t": "out", "seq": 1, "fd": 1}, big)
    wire += encode({"t": "out", "seq": 2, "fd": 2}, b"tail")
    fed = pauses = 0
    while fed < len(wire):  # as a transport would: recv_into whatever room the protocol offers
        room = stream.get_buffer(-1)
        n = min(len(room), 200_000, len(wire) - fed)
        room[:n] = wire[fed:fed + n]
        room.release()
        stream.buffer_updated(n)
        fed += n
        if transport.paused and fed < len(wire):
            pauses += 1
            assert stream.wpos - stream.rpos >= agent_link.BUFFER_HIGH
            assert stream.take() == []  # no whole frame yet: reading resumes, or it would never complete
            assert not transport.paused
    frames = stream.take()
    assert [(h["seq"], len(p)) for h, p in frames] == [(1, len(big)), (2, 4)] and frames[0][1] == big
    assert pauses > 0 and len(stream.buf) >= len(big)  # it paused at BUFFER_HIGH, and grew for the frame
