"""ConnectionGuard on a real grpclib server in this process: what "authenticated" and "idle" mean.

The sweeps are run by hand with a clock reading given to them, so nothing waits for a timeout."""

from __future__ import annotations

import asyncio
import os
import resource

import pytest
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.health.service import Health
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.server import Server as GrpcServer

from chalkcompute import _auth
from chalkd import connections
from chalkd.auth import Authenticator
from chalkd.connections import ConnectionGuard

pytestmark = pytest.mark.timeout(30)

TOKEN = "t" * 43


async def _serve(guard: ConnectionGuard, path: str | None = None) -> tuple[GrpcServer, Channel]:
    """A gRPC server guarded as the daemon's are (auth first, then the guard), and a channel to it."""
    auth = Authenticator(TOKEN, lambda replica_id: None)
    server = GrpcServer([auth, Health()])
    auth.install(server)
    guard.install(server)
    if path:
        await server.start(path=path)
        return server, Channel(path=path)
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return server, Channel("127.0.0.1", port)


def _authenticate(channel: Channel) -> _auth.SessionCredentials:
    creds = _auth.SessionCredentials("test", TOKEN)
    creds.attach(channel)
    return creds


def _lost(channel: Channel) -> asyncio.Future:
    """A future set when the channel's current connection is closed."""
    protocol = channel._protocol
    assert protocol is not None
    done = asyncio.get_running_loop().create_future()
    original = protocol.connection_lost

    def on_lost(exc: BaseException | None) -> None:
        original(exc)
        if not done.done():
            done.set_result(None)

    protocol.connection_lost = on_lost  # type: ignore[method-assign]
    return done


async def _close(server: GrpcServer, *channels: Channel) -> None:
    for channel in channels:
        channel.close()
    server.close()
    await server.wait_closed()


def test_only_an_rpc_that_passes_auth_authenticates_a_connection():
    async def run() -> None:
        guard = ConnectionGuard(auth_timeout=5, idle_timeout=0)
        server, channel = await _serve(guard)
        try:
            # Without a credential: refused, and the connection stays unauthenticated.
            with pytest.raises(GRPCError) as refused:
                await HealthStub(channel).Check(HealthCheckRequest(), timeout=10)
            assert refused.value.status is Status.UNAUTHENTICATED
            assert guard.stats()["unauthenticated"] == 1
            # A challenge alone proves nothing (anyone may ask for one).
            creds = _authenticate(channel)
            await creds.for_connection(channel)
            assert guard.stats()["open"] == 1 and guard.stats()["unauthenticated"] == 1
            # The first RPC carrying the credential does.
            reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=10)
            assert reply.status == HealthCheckResponse.SERVING
            assert guard.stats()["unauthenticated"] == 0
            # Authenticated connections are not closed by the unauthenticated timeout.
            guard.sweep(now=guard._clock() + 3600)
            assert guard.stats()["closed_auth_timeout"] == 0 and guard.stats()["open"] == 1
        finally:
            await _close(server, channel)

    asyncio.run(run())


def test_unauthenticated_timeout_closes_and_only_the_late_ones():
    async def run() -> None:
        guard = ConnectionGuard(auth_timeout=5, idle_timeout=0)
        server, channel = await _serve(guard)
        try:
            with pytest.raises(GRPCError):
                await HealthStub(channel).Check(HealthCheckRequest(), timeout=10)
            lost = _lost(channel)
            guard.sweep(now=guard._clock() + 1)  # in time
            assert guard.stats()["open"] == 1
            guard.sweep(now=guard._clock() + 6)
            assert guard.stats()["closed_auth_timeout"] == 1
            await asyncio.wait_for(lost, 10)
        finally:
            await _close(server, channel)

    asyncio.run(run())


def test_idle_means_no_stream_and_no_traffic():
    async def run() -> None:
        guard = ConnectionGuard(auth_timeout=5, idle_timeout=60)
        server, quiet = await _serve(guard)
        busy = Channel("127.0.0.1", server._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        _authenticate(quiet)
        _authenticate(busy)
        try:
            await HealthStub(quiet).Check(HealthCheckRequest(), timeout=10)
            # An open stream (a watch that never ends) keeps its connection however long it is silent.
            async with HealthStub(busy).Watch.open() as watch:
                await watch.send_message(HealthCheckRequest(), end=True)
                assert (await watch.recv_message()).status == HealthCheckResponse.SERVING
                lost = _lost(quiet)
                t0 = guard._clock()
                guard.sweep(now=t0)
                # Traffic since the last sweep counts as activity: a new RPC restarts the quiet clock.
                await HealthStub(quiet).Check(HealthCheckRequest(), timeout=10)
                guard.sweep(now=t0 + 59)
                guard.sweep(now=t0 + 100)
                assert guard.stats()["closed_idle"] == 0
                guard.sweep(now=t0 + 200)
                assert guard.stats()["closed_idle"] == 1 and guard.stats()["open"] == 1
                await asyncio.wait_for(lost, 10)
                # The client reconnects by itself (and handshakes again) on its next RPC.
                reply = await HealthStub(quiet).Check(HealthCheckRequest(), timeout=10)
                assert reply.status == HealthCheckResponse.SERVING
                watch_protocol = busy._protocol
                assert watch_protocol is not None and not watch_protocol.handler.connection_lost
                await watch.cancel()
        finally:
            await _close(server, quiet, busy)

    asyncio.run(run())


def test_unix_socket_peer_is_the_uid(tmp_path):
    async def run() -> None:
        guard = ConnectionGuard(auth_timeout=5, idle_timeout=0, max_unauthenticated_per_peer=1)
        server, first = await _serve(guard, path=str(tmp_path / "s.sock"))
        second = Channel(path=str(tmp_path / "s.sock"))
        try:
            for channel in (first, second):
                with pytest.raises(GRPCError):
                    await HealthStub(channel).Check(HealthCheckRequest(), timeout=10)
            assert {c.peer for c in guard.conns.values()} == {f"uid:{os.getuid()}"}
            # One unauthenticated connection per uid: the second closed the first.
            assert guard.stats()["closed_peer_cap"] == 1 and guard.stats()["unauthenticated"] == 1
        finally:
            await _close(server, first, second)

    asyncio.run(run())


def test_all_unauthenticated_capped_by_the_fd_limit():
    guard = ConnectionGuard(fd_limit=256)
    assert guard.max_unauthenticated == 64
    assert ConnectionGuard(fd_limit=20).max_unauthenticated == connections.MIN_UNAUTHENTICATED_TOTAL


@pytest.mark.parametrize("flag", [{"auth_timeout": 0}, {"idle_timeout": -1}, {"max_unauthenticated_per_peer": 0}])
def test_bad_settings_are_refused_by_name(flag):
    name = "--" + next(iter(flag)).replace("_", "-")
    with pytest.raises(ValueError, match=name):
        ConnectionGuard(**flag)


def test_fd_limit_warning_names_the_figure(caplog):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with caplog.at_level("WARNING", logger="chalkd.connections"):
        assert connections.raise_fd_limit(low=hard + 1 if hard != resource.RLIM_INFINITY else 1 << 62) == \
            resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if hard != resource.RLIM_INFINITY:
        assert f"at most {hard} files" in caplog.text and "ulimit -Hn" in caplog.text


def test_closes_are_summed_up_in_one_line_a_minute(caplog):
    guard = ConnectionGuard()
    t0 = guard._reported_at
    guard.closed["auth_timeout"] += 300
    with caplog.at_level("INFO", logger="chalkd.connections"):
        guard.report(t0 + 1)  # too soon
        assert "closed connections" not in caplog.text
        guard.report(t0 + 61)
        guard.report(t0 + 200)  # nothing new
    assert caplog.text.count("closed connections") == 1 and "300 auth timeout" in caplog.text


def test_tls_connections_are_tracked_and_authenticated(tmp_path):
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a self-signed certificate for the TLS test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)

    async def run() -> None:
        guard = ConnectionGuard(auth_timeout=5, idle_timeout=0)
        auth = Authenticator(TOKEN, lambda replica_id: None)
        server = GrpcServer([auth, Health()])
        auth.install(server)
        guard.install(server)
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(str(cert), str(key))
        server_ctx.set_alpn_protocols(["h2"])
        await server.start("127.0.0.1", 0, ssl=server_ctx)
        client_ctx = _auth.client_ssl_context(str(cert))
        channel = Channel("127.0.0.1", server._server.sockets[0].getsockname()[1], ssl=client_ctx)  # type: ignore[union-attr]
        _authenticate(channel)
        try:
            await HealthStub(channel).Check(HealthCheckRequest(), timeout=10)
            assert guard.stats()["open"] == 1 and guard.stats()["unauthenticated"] == 0
            assert next(iter(guard.conns.values())).peer == "ip:127.0.0.1"
        finally:
            await _close(server, channel)

    asyncio.run(run())
