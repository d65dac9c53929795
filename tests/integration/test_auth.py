"""Authentication against a real daemon: the token, the handshake, discovery, TLS, replica scope."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.server import Server as GrpcServer

from chalkcompute import _auth
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import AuthBase, FunctionCatalogStub, SecretsStub
from tests.conftest import ROOT, Daemon, free_port

pytestmark = pytest.mark.timeout(120)


def _env(**extra: str) -> dict[str, str]:
    """This environment without any token hint: the SDK must find it by itself."""
    env = {k: v for k, v in os.environ.items() if k not in ("CHALK_COMPUTE_TOKEN", "CHALKD_HOME")}
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chalkd.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=env or _env())


def test_token_made_at_first_start_private(fresh_daemon):
    token_path = fresh_daemon.home / "token"
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    record = _auth.record_dir() / _auth.record_name(fresh_daemon.target)
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE(record.parent.stat().st_mode) == 0o700
    assert record.read_text().strip() == token_path.read_text().strip()
    # `chalkd token show` prints it; rotate writes a new one.
    shown = _cli("token", "show", "--home", str(fresh_daemon.home))
    assert shown.returncode == 0 and shown.stdout.strip() == token_path.read_text().strip()
    rotated = _cli("token", "rotate", "--home", str(fresh_daemon.home))
    assert rotated.returncode == 0 and rotated.stdout.strip() == token_path.read_text().strip()
    assert rotated.stdout.strip() != shown.stdout.strip()
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600


def test_without_a_token_only_a_hint_answers(fresh_daemon):
    async def run():
        channel = Channel("127.0.0.1", fresh_daemon.port)
        try:
            with pytest.raises(GRPCError) as status:
                await FunctionCatalogStub(channel).Status(pb.StatusRequest(), timeout=10)
            with pytest.raises(GRPCError) as listing:
                await SecretsStub(channel).ListSecrets(pb.ListSecretsRequest(), timeout=10)
            return status.value, listing.value
        finally:
            channel.close()

    status, listing = asyncio.run(run())
    assert status.status == Status.UNAUTHENTICATED and "a chalkd is here: authenticate" in status.message
    assert listing.status == Status.UNAUTHENTICATED and "CHALK_COMPUTE_TOKEN" in listing.message


def test_wrong_token_is_unauthenticated_with_the_fix(fresh_daemon):
    out = _cli("status", "--target", fresh_daemon.target, env=_env(CHALK_COMPUTE_TOKEN="x" * 43))
    assert out.returncode == 1
    assert "could not prove it knows chalkd's token" in out.stderr and "chalkd token show" in out.stderr
    # The SDK raises its own exception for it.
    script = textwrap.dedent("""
        import chalkcompute
        from chalkcompute import AuthenticationError
        try:
            chalkcompute.VolumeClient().list()
        except AuthenticationError as exc:
            print("AUTH", exc)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=_env(CHALK_COMPUTE_TOKEN="x" * 43, CHALK_COMPUTE_TARGET=fresh_daemon.target))
    assert "AUTH" in run.stdout, run.stderr


def test_cli_and_sdk_find_the_token_of_a_daemon_with_its_home_elsewhere(tmp_path):
    # No CHALKD_HOME, no CHALK_COMPUTE_TOKEN: the per-user record the daemon wrote is enough.
    d = Daemon(tmp_path / "elsewhere", env={"CHALKD_HOME": ""}).start()
    try:
        out = _cli("status", "--target", d.target)
        assert out.returncode == 0, out.stderr
        assert str(d.home) in out.stdout
        script = "import chalkcompute; print(sorted(chalkcompute.VolumeClient().list()))"
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                             cwd=ROOT, env=_env(CHALK_COMPUTE_TARGET=d.target))
        assert run.returncode == 0 and "[]" in run.stdout, run.stderr
    finally:
        d.stop()
    # A stopped daemon removes its record.
    assert not (_auth.record_dir() / _auth.record_name(d.target)).exists()


class _FakeAuth(AuthBase):
    """Answers the challenge without knowing the token (as any impostor must)."""

    async def Challenge(self, stream) -> None:
        await stream.recv_message()
        await stream.send_message(pb.ChallengeResponse(server_nonce=os.urandom(16), server_proof=os.urandom(32)))


def test_a_fake_listener_learns_no_token_and_no_secret(tmp_path):
    token = "tok-" + os.urandom(16).hex()
    secret_value = "sv-" + os.urandom(16).hex()
    port = free_port()
    script = textwrap.dedent("""
        import chalkcompute
        from chalkcompute import Secret

        def f():
            return 1

        fn = chalkcompute.RemoteFunction(f, secrets=[Secret.from_local_env("MY_SECRET")])
        try:
            fn()
        except chalkcompute.AuthenticationError as exc:
            print("REFUSED", exc)
    """)

    caller = tmp_path / "caller.py"  # a file: the SDK ships functions' source
    caller.write_text(script)

    async def run() -> tuple[bytes, subprocess.CompletedProcess]:
        captured = bytearray()
        server = GrpcServer([_FakeAuth()])
        await server.start("127.0.0.1", 0)
        inner = server._server.sockets[0].getsockname()[1]

        async def proxy(reader, writer):
            # Every byte the SDK sends passes here on its way to the impostor.
            r2, w2 = await asyncio.open_connection("127.0.0.1", inner)

            async def pipe(src, dst, keep):
                try:
                    while data := await src.read(65536):
                        if keep:
                            captured.extend(data)
                        dst.write(data)
                        await dst.drain()
                except ConnectionError:
                    pass
                finally:
                    dst.close()

            await asyncio.gather(pipe(reader, w2, True), pipe(r2, writer, False))

        front = await asyncio.start_server(proxy, "127.0.0.1", port)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(caller), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=_env(CHALK_COMPUTE_TOKEN=token, MY_SECRET=secret_value, CHALK_COMPUTE_TARGET=f"127.0.0.1:{port}"))
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        front.close()
        server.close()
        return bytes(captured), subprocess.CompletedProcess([], proc.returncode, out.decode(), err.decode())

    captured, done = asyncio.run(run())
    assert "REFUSED" in done.stdout and "could not prove" in done.stdout, done.stderr
    assert captured, "the SDK never reached the fake listener: the test proves nothing"
    assert token.encode() not in captured
    assert secret_value.encode() not in captured
    assert b"RegisterFunction" not in captured


def _openssl_cert(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a self-signed certificate for the TLS test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_on_loopback_with_a_self_signed_cert(tmp_path):
    cert, key = _openssl_cert(tmp_path)
    d = Daemon(tmp_path / "home", extra_args=("--tls-cert", str(cert), "--tls-key", str(key))).start()
    try:
        script = textwrap.dedent(f"""
            import chalkcompute
            vc = chalkcompute.VolumeClient({d.target!r}, credentials={str(cert)!r}, metadata=[("x-test", "1")])
            vc.create("tls-vol")
            print(sorted(v.name for v in vc.list()))
        """)
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                             cwd=ROOT, env=_env())
        assert run.returncode == 0 and "tls-vol" in run.stdout, run.stderr + d.log()
        # Functions and calls take the CA from $CHALK_COMPUTE_TLS.
        script2 = textwrap.dedent("""
            import chalkcompute
            print(sorted(v.name for v in chalkcompute.VolumeClient().list()))
        """)
        run2 = subprocess.run([sys.executable, "-c", script2], capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env=_env(CHALK_COMPUTE_TLS=str(cert), CHALK_COMPUTE_TARGET=d.target))
        assert run2.returncode == 0 and "tls-vol" in run2.stdout, run2.stderr
        tls_cli = _cli("status", "--target", d.target, env=_env(CHALK_COMPUTE_TLS=str(cert)))
        assert tls_cli.returncode == 0, tls_cli.stderr
        # Plain HTTP/2 gets no answer from a TLS daemon.
        plain = _cli("status", "--target", d.target)
        assert plain.returncode != 0
    finally:
        d.stop()


# -- a replica's scoped credential (process runtime) -------------------------------------------


def _probe_scope(others_call: str) -> dict:
    """Runs inside a replica: what its own credential lets it do."""
    import chalkcompute as cc
    from chalkcompute._client import Client, run_sync
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
    from chalkcompute._proto.chalk_v1_chalk_grpc import ContainersStub, ScalingGroupsStub, SecretsStub

    def thief() -> str:
        return "stolen"

    out = {}
    try:
        cc.RemoteFunction(thief, secrets=[cc.Secret("TOPSECRET")])()
        out["register"] = "allowed"
    except cc.PermissionDeniedError as exc:
        out["register"] = str(exc)
    channel = Client.get().channel
    for name, call in (("secrets", lambda: SecretsStub(channel).ListSecrets(pb.ListSecretsRequest(), timeout=10)),
                       ("containers", lambda: ContainersStub(channel).List(pb.ListContainersRequest(), timeout=10)),
                       ("groups", lambda: ScalingGroupsStub(channel).List(pb.ListScalingGroupsRequest(), timeout=10))):
        try:
            run_sync(call())
            out[name] = "allowed"
        except Exception as exc:  # a GRPCError from the raw stub
            out[name] = f"{getattr(exc, 'status', '')} {getattr(exc, 'message', exc)}"
    out["nested"] = _nested_double(21)
    # Naming another caller's call as the parent borrows nothing: the call runs as a top-level one.
    from chalkcompute._client import current_call_id
    borrowed = current_call_id.set(others_call)
    try:
        out["foreign_parent"] = _nested_double(5)
    finally:
        current_call_id.reset(borrowed)
    mine = _nested_double.spawn(4)
    out["mine"] = cc.FunctionCall.from_id(mine.object_id).get(timeout=60)  # a call it started: allowed
    try:
        cc.FunctionCall.from_id(others_call).get(timeout=60)
        out["others"] = "allowed"
    except cc.PermissionDeniedError as exc:
        out["others"] = str(exc)
    return out


def _double(x: int) -> int:
    return 2 * x


_nested_double = None


def test_a_process_replica_is_limited_to_its_scope(daemon):
    global _nested_double
    import chalkcompute as cc

    _nested_double = cc.RemoteFunction(_double, name="auth-double")
    probe = cc.RemoteFunction(_probe_scope, name="auth-probe")
    others = _nested_double.spawn(1)  # the owner's call: not the replica's to read
    result = probe(others.object_id)
    assert "PERMISSION_DENIED" not in result["register"] and "RegisterFunction" in result["register"], result
    assert "PERMISSION_DENIED" in result["secrets"] and "ListSecrets" in result["secrets"], result
    assert "PERMISSION_DENIED" in result["containers"] and "Containers/List" in result["containers"], result
    assert "PERMISSION_DENIED" in result["groups"] and "ScalingGroups/List" in result["groups"], result
    assert result["nested"] == 42  # nested calls still work with the scoped credential
    assert result["foreign_parent"] == 10
    assert "as a parent it is not running; submitted as top-level" in daemon.log()
    assert result["mine"] == 8
    assert "cannot read call" in result["others"] and others.object_id in result["others"], result


def test_the_quickstart_daemon_with_its_default_home_needs_no_variable(tmp_path):
    # `chalkd serve` with no --home (the README's quickstart), as a user whose HOME is tmp_path.
    env = _env(HOME=str(tmp_path))
    for name in ("XDG_RUNTIME_DIR", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        env.pop(name, None)
    port = free_port()
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "chalkd.cli", "serve", "--port", str(port), "--runtime", "process"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        target = f"127.0.0.1:{port}"
        status = None
        for _ in range(200):  # until it listens (the status command says when)
            status = _cli("status", "--target", target, env=env)
            if status.returncode == 0 or proc.poll() is not None:
                break
        assert status is not None and status.returncode == 0, status.stderr + (tmp_path / "daemon.log").read_text()
        # Without its per-user record, the default home's token still does it.
        for record in (tmp_path / ".config" / "chalkd" / "daemons").iterdir():
            record.unlink()
        again = _cli("status", "--target", target, env=env)
        assert again.returncode == 0, again.stderr
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
