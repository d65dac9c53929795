"""Dockerfile generation for the Docker runtime (pure: no engine).

Example of what is checked::

    text, files = dockerfile_for(decode_image(Image.debian_slim("3.11").pip_install(["six"]).to_proto()),
                                 base="python:3.11-slim", runtime=FAKE_RUNTIME)
    assert "RUN python3 -m pip install --no-cache-dir six" in text
"""

from __future__ import annotations

import io
import json
import shlex
import tarfile

import pytest

from chalkcompute.image import Image
from chalkd.images.docker_build import _tag
from chalkd.images.dockerfile import (
    ImageBuildError,
    _split_instructions,
    dockerfile_for,
    from_refs,
    plan_for,
)
from chalkd.images.runtime_dist import ContextFile, RuntimeLayer
from chalkd.services.convert import decode_image

FAKE_RUNTIME = RuntimeLayer("f" * 64, "3.11", (ContextFile("chalkd-runtime/deps/install.py", b"#"),))


def render(img: Image, base: str = "python:3.11-slim", **kw) -> tuple[str, list[ContextFile]]:
    return dockerfile_for(decode_image(img.to_proto()), base=base, runtime=FAKE_RUNTIME, **kw)


def instructions(text: str) -> list[str]:
    return [" ".join(p.strip() for p in phys) for kw, phys in _split_instructions(text.splitlines()) if kw]


def user_part(text: str) -> list[str]:
    """The instructions between the base's build settings and the runtime layer."""
    instrs = instructions(text)
    start = next(i for i, x in enumerate(instrs) if x.startswith("ARG ")) + 1
    end = next(i for i, x in enumerate(instrs) if "command -v python3" in x)
    return instrs[start:end]


def test_every_step_kind(tmp_path):
    (tmp_path / "f.sh").write_text("echo hi\n")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "req.txt").write_text("requests>=2\nsix\n")
    img = (Image.debian_slim("3.11")
           .run_commands("echo one", "echo two")
           .pip_install(["six"])
           .uv_pip_install(["rich"])
           .pip_install_from_requirements(tmp_path / "req.txt")
           .env({"A": "1"})
           .workdir("/app")
           .add_local_file(tmp_path / "f.sh", "/app/f.sh", mode=0o755, strategy="copy")
           .add_local_dir(tmp_path / "d", "/app/d", strategy="copy")
           .dockerfile_commands(["EXPOSE 8080"])
           .entrypoint(["python3", "-m", "app"])
           .cmd(["--port", "8080"]))
    text, files = render(img)
    assert instructions(text)[0] == "FROM python:3.11-slim"
    assert user_part(text) == [
        "RUN echo one",
        "RUN echo two",
        "RUN python3 -m pip install --no-cache-dir six",
        "RUN uv pip install --system rich",
        "RUN python3 -m pip install --no-cache-dir 'requests>=2' six",
        'ENV A="1"',
        "WORKDIR /app",
        'COPY ["chalkd-ctx/7/f.sh", "/app/f.sh"]',
        'ADD ["chalkd-ctx/8.tar", "/app/d/"]',
        "EXPOSE 8080",
        'ENTRYPOINT ["python3", "-m", "app"]',
        'CMD ["--port", "8080"]',
    ]
    by_path = {f.path: f for f in files}
    assert by_path["chalkd-ctx/7/f.sh"].data == b"echo hi\n"
    assert by_path["chalkd-ctx/7/f.sh"].mode == 0o755
    with tarfile.open(fileobj=io.BytesIO(by_path["chalkd-ctx/8.tar"].data)) as tar:
        assert tar.getnames() == ["a.txt"]


def test_pip_specs_are_shell_quoted():
    specs = ["pandas>=2,<3", "name with space", "it's", 'quo"te', "x[extra]==1; python_version>'3'"]
    text, _ = render(Image.debian_slim("3.11").pip_install(specs))
    (line,) = user_part(text)
    assert line.startswith("RUN python3 -m pip install --no-cache-dir ")
    assert shlex.split(line.removeprefix("RUN "))[5:] == specs  # a shell sees exactly the specs


def test_requirements_with_options_use_a_file(tmp_path):
    (tmp_path / "r.txt").write_text("--index-url https://example.invalid/simple\nsix==1.16 --hash=sha256:ab\n")
    text, _ = render(Image.debian_slim("3.11").pip_install_from_requirements(tmp_path / "r.txt"))
    (line,) = user_part(text)
    script = line.removeprefix("RUN ")
    assert "-r /tmp/chalkd-requirements.txt" in script
    assert shlex.split(script)[:4] == ["printf", "%s\\n", "--index-url https://example.invalid/simple",
                                       "six==1.16 --hash=sha256:ab"]


def test_env_values_are_quoted_for_the_dockerfile():
    text, _ = render(Image.debian_slim("3.11").env({"A": "b c", "Q": 'say "hi" $HOME \\ x', "E": ""}))
    (line,) = user_part(text)
    assert line == 'ENV A="b c" E="" Q="say \\"hi\\" \\$HOME \\\\ x"'


def test_env_value_with_a_newline_is_refused():
    with pytest.raises(ImageBuildError, match="line break"):
        render(Image.debian_slim("3.11").env({"PEM": "a\nb"}))


def test_multiline_and_bracket_commands_use_exec_form():
    text, _ = render(Image.debian_slim("3.11").run_commands("set -e\necho a", "[ -f /x ] || true", "echo ok \\"))
    assert user_part(text) == [
        'RUN ["/bin/sh", "-c", "set -e\\necho a"]',
        'RUN ["/bin/sh", "-c", "[ -f /x ] || true"]',
        'RUN ["/bin/sh", "-c", "echo ok \\\\"]',
    ]


def test_paths_escape_variable_expansion():
    img = Image.debian_slim("3.11").workdir("/a $b").add_local_dir(".", "/x$y", strategy="copy",
                                                                    exclude=["*", "!pyproject.toml"])
    text, _ = render(img)
    workdir, add = user_part(text)
    assert workdir == "WORKDIR /a \\$b"
    assert json.loads(add.removeprefix("ADD ")) == ["chalkd-ctx/2.tar", "/x\\$y/"]


def test_lazy_files_are_not_baked_in(tmp_path):
    (tmp_path / "lazy.py").write_text("x = 1\n")
    img = Image.debian_slim("3.11").add_local_file(tmp_path / "lazy.py", "/app/lazy.py").run_commands("true")
    text, files = render(img)
    assert user_part(text) == ["RUN true"]
    assert "lazy" not in text
    assert all(b"x = 1" not in f.data for f in files)
    # steps are numbered without the lazy files
    plan = plan_for(decode_image(img.to_proto()), base="python:3.11-slim", runtime=FAKE_RUNTIME)
    assert any(i.desc == "step 1/1: RUN true" for i in plan.instrs)


def test_empty_copy_dir_makes_the_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    text, files = render(Image.debian_slim("3.11").add_local_dir(tmp_path / "empty", "/data", strategy="copy"))
    assert user_part(text) == ['COPY ["chalkd-ctx/1/", "/data/"]']
    assert [f for f in files if f.path == "chalkd-ctx/1"][0].is_dir


def test_from_dockerfile_keeps_its_own_from(tmp_path):
    (tmp_path / "Dockerfile").write_text(
        "# syntax=docker/dockerfile:1\nARG V=3.11\nFROM python:${V}-slim AS build\nRUN echo a \\\n"
        "  && echo b\nFROM python:3.11-slim\nUSER nobody\n")
    img = Image.from_dockerfile(tmp_path / "Dockerfile").pip_install(["six"])
    spec = decode_image(img.to_proto())
    assert spec.base == ""
    text, files = dockerfile_for(spec, base="", runtime=FAKE_RUNTIME, ca_pem=b"CA")
    lines = text.splitlines()
    assert lines[0] == "# syntax=docker/dockerfile:1"  # parser directives stay first
    instrs = instructions(text)
    assert instrs[0] == "ARG V=3.11"
    assert instrs[1] == "FROM python:${V}-slim AS build"
    # every stage gets the CA and the build settings right after its FROM
    froms = [i for i, x in enumerate(instrs) if x.startswith("FROM ")]
    assert len(froms) == 2
    for i in froms:
        assert instrs[i + 1].startswith("COPY [\"chalkd-build/ca.pem\"")
        assert instrs[i + 2].startswith("ARG PIP_CERT=")
    # the image's USER is restored after our root-only layer
    assert instrs[-1] == "USER nobody"
    assert "USER root" in instrs
    assert from_refs(spec) == ["python:3.11-slim"]  # "${V}" is only known to the engine


def test_from_refs_skip_stages_scratch_and_args():
    img = Image().dockerfile_commands(["FROM alpine:3 AS a", "FROM a", "FROM scratch", "FROM $X", "FROM b:1"])
    assert from_refs(decode_image(img.to_proto())) == ["alpine:3", "b:1"]


def test_no_base_and_no_from_is_an_error():
    with pytest.raises(ImageBuildError, match="no base"):
        dockerfile_for(decode_image(Image().pip_install(["six"]).to_proto()), base="", runtime=FAKE_RUNTIME)
    with pytest.raises(ImageBuildError, match="no base"):
        dockerfile_for(decode_image(Image().to_proto()), base="", runtime=FAKE_RUNTIME)
    with pytest.raises(ImageBuildError, match="no base"):
        dockerfile_for(decode_image(Image().dockerfile_commands(["RUN true"]).to_proto()), base="",
                       runtime=FAKE_RUNTIME)


def test_runtime_layer_is_last_and_after_the_python_check():
    text, files = render(Image.debian_slim("3.11").run_commands("apt-get install -y python3").cmd(["x"]))
    instrs = instructions(text)
    check = next(i for i, x in enumerate(instrs) if "command -v python3" in x)
    assert instrs.index('CMD ["x"]') < check
    assert instrs[check + 1:] == [
        'COPY ["chalkd-runtime/deps/", "/tmp/chalkd-runtime/"]',
        "RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 /tmp/chalkd-runtime/install.py deps",
        'COPY ["chalkd-runtime/wheel/", "/tmp/chalkd-runtime/wheel/"]',
        "RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 /tmp/chalkd-runtime/install.py wheel && rm -rf /tmp/chalkd-runtime",
    ]
    assert "no python3" in instrs[check]
    assert "PIP_BREAK_SYSTEM_PACKAGES" not in "\n".join(instrs[:check])  # our layer only
    assert files[-1].path == "chalkd-runtime/deps/install.py"  # the runtime's context files ride along


def test_build_args_carry_the_ca_but_no_env():
    text, files = render(Image.debian_slim("3.11").run_commands("true"), ca_pem=b"PEM")
    instrs = instructions(text)
    assert instrs[1] == 'COPY ["chalkd-build/ca.pem", "/usr/local/share/chalkd/build-ca.pem"]'
    args = dict(a.split("=", 1) for a in instrs[2].removeprefix("ARG ").split())
    ca = "/usr/local/share/chalkd/build-ca.pem"
    assert args == {"PIP_CERT": ca, "SSL_CERT_FILE": ca, "REQUESTS_CA_BUNDLE": ca, "CURL_CA_BUNDLE": ca,
                    "PIP_ROOT_USER_ACTION": "ignore", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    assert not any(x.startswith("ENV") for x in instrs)
    assert [f.data for f in files if f.path == "chalkd-build/ca.pem"] == [b"PEM"]
    text, files = render(Image.debian_slim("3.11"), ca_pem=None)
    assert "build-ca.pem" not in text and "ARG PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1" in text


def test_non_root_base_user_is_switched_and_restored():
    text, _ = render(Image.base("jupyter:lab"), base="jupyter:lab", base_user="jovyan")
    instrs = instructions(text)
    assert instrs[instrs.index("USER root") + 1].startswith("RUN command -v python3")
    assert instrs[-1] == "USER jovyan"
    text, _ = render(Image.base("x:1"), base="x:1", base_user="root")
    assert not any(x.startswith("USER") for x in instructions(text))


def test_instruction_descriptions_map_engine_steps_to_user_steps():
    img = Image.debian_slim("3.11").pip_install(["nosuchpkg"]).run_commands("true", "exit 3")
    plan = plan_for(decode_image(img.to_proto()), base="python:3.11-slim", runtime=FAKE_RUNTIME, ca_pem=b"x")
    assert len(plan.instrs) == len(instructions(plan.dockerfile))
    descs = [i.desc for i in plan.instrs if i.role == "user"]
    assert descs == ["step 1/2: RUN pip install nosuchpkg", "step 2/2: RUN true", "step 2/2: RUN exit 3"]
    assert [i.role for i in plan.instrs][:3] == ["base", "trust", "trust"]


def test_tag_depends_on_spec_runtime_and_is_short():
    a = _tag("a" * 64, "r1")
    assert a.startswith("chalkd-img:") and len(a.split(":")[1]) == 24
    assert a == _tag("a" * 64, "r1") != _tag("a" * 64, "r2") != _tag("b" * 64, "r1")


def test_unknown_step_kind_is_an_error():
    spec = Image.debian_slim("3.11").to_proto()
    spec.steps.add(kind="teleport")
    spec = decode_image(spec)
    with pytest.raises(ImageBuildError, match="unknown image step kind"):
        dockerfile_for(spec, base="python:3.11-slim", runtime=FAKE_RUNTIME)


def test_dangling_continuation_is_an_error():
    with pytest.raises(ImageBuildError, match="continuation"):
        render(Image.debian_slim("3.11").dockerfile_commands(["RUN echo \\"]))


# ---------------------------------------------------------------- the runtime layer's pure parts

def test_runtime_pins_are_the_hosts_worker_closure():
    import importlib.metadata

    from chalkd.images import runtime_dist

    pins = runtime_dist._pins()
    for name in ("grpclib", "protobuf", "pyarrow", "pathspec", "uvloop", "h2", "hpack", "hyperframe", "multidict"):
        assert pins[name]["version"] == importlib.metadata.version(name)
    assert "aiodocker" not in pins and "rich" not in pins  # daemon-only dependencies stay out of images
    reqs = runtime_dist._worker_requirements()
    assert {r.split(">")[0].split(";")[0].strip() for r in reqs} == set(runtime_dist.WORKER_DEPS)


def test_runtime_fingerprint_follows_the_package_files():
    from chalkd.images import runtime_dist

    snapshot = runtime_dist._snapshot()
    assert "chalkcompute/image.py" in snapshot and "chalkcompute/worker/__main__.py" in snapshot
    assert not any("__pycache__" in k or k.endswith(".pyc") for k in snapshot)
    assert not any(k.startswith("chalkd/") for k in snapshot)  # the daemon's package stays out of images
    a = runtime_dist._fingerprint(snapshot, "3.11")
    assert a == runtime_dist._fingerprint(dict(snapshot), "3.11")
    assert a != runtime_dist._fingerprint({**snapshot, "chalkcompute/image.py": b"# edited\n"}, "3.11")
    assert a != runtime_dist._fingerprint(snapshot, "3.12")


def test_runtime_wheel_is_assembled_from_the_installed_files(tmp_path):
    """No setuptools or source checkout: a zip with a dist-info that pip's format accepts."""
    import base64
    import hashlib
    import zipfile

    from chalkd.images import runtime_dist

    snapshot = runtime_dist._snapshot()
    name, data = runtime_dist.wheel_bytes(snapshot, "0.1.0", ">=3.11")
    assert name == "chalkd-0.1.0-py3-none-any.whl"
    assert runtime_dist.wheel_bytes(snapshot, "0.1.0", ">=3.11") == (name, data)  # deterministic: cacheable
    (tmp_path / name).write_bytes(data)
    with zipfile.ZipFile(tmp_path / name) as zf:
        files = {i.filename: zf.read(i) for i in zf.infolist()}
    meta = files["chalkd-0.1.0.dist-info/METADATA"].decode()
    assert "Name: chalkd\nVersion: 0.1.0\n" in meta and "Requires-Python: >=3.11" in meta
    assert "Root-Is-Purelib: true" in files["chalkd-0.1.0.dist-info/WHEEL"].decode()
    record = files["chalkd-0.1.0.dist-info/RECORD"].decode().splitlines()
    assert len(record) == len(files)
    for line in record:
        path, digest, size = line.rsplit(",", 2)
        if path.endswith("RECORD"):
            continue
        want = base64.urlsafe_b64encode(hashlib.sha256(files[path]).digest()).rstrip(b"=").decode()
        assert digest == f"sha256={want}" and int(size) == len(files[path])
    assert files["chalkcompute/image.py"] == snapshot["chalkcompute/image.py"]


def test_not_installed_is_a_clear_error(monkeypatch):
    from chalkd.images import runtime_dist

    def missing(name):
        raise runtime_dist.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(runtime_dist, "_DIST", None)
    monkeypatch.setattr(runtime_dist.importlib.metadata, "distribution", missing)
    with pytest.raises(runtime_dist.RuntimeDistError, match="chalkd distribution is not installed"):
        runtime_dist.runtime_fingerprint("3.11")


def test_install_script_is_valid_python_for_the_image():
    from chalkd.images.runtime_dist import INSTALL_SCRIPT, RUNTIME_INFO

    compile(INSTALL_SCRIPT, "install.py", "exec")
    assert f'INFO = "{RUNTIME_INFO}"' in INSTALL_SCRIPT


def test_a_bare_plan_is_the_users_steps_only():
    """Sandbox images: no python3 check, no runtime layer, no USER switch; the CA still reaches RUN steps."""
    img = Image.base("ubuntu:24.04").run_commands("apt-get update").cmd(["bash"])
    plan = plan_for(decode_image(img.to_proto()), base="ubuntu:24.04", runtime=None, ca_pem=b"PEM",
                    base_user="app", bare=True)
    instrs = instructions(plan.dockerfile)
    assert instrs[0] == "FROM ubuntu:24.04" and instrs[-2:] == ["RUN apt-get update", 'CMD ["bash"]']
    assert "python3" not in plan.dockerfile and "chalkd-runtime" not in plan.dockerfile
    assert not any(x.startswith("USER") for x in instrs)
    assert {i.role for i in plan.instrs} == {"base", "trust", "user"}
    assert [f.path for f in plan.files] == ["chalkd-build/ca.pem"]
    # The user's part is exactly the full plan's, minus what follows it.
    full, _ = render(img, base="ubuntu:24.04", ca_pem=b"PEM", base_user="app")
    assert instructions(full)[:len(instrs)] == instrs


def test_bare_and_full_plans_need_their_runtime_argument_and_are_tagged_apart():
    spec = decode_image(Image.debian_slim("3.11").to_proto())
    with pytest.raises(ValueError, match="bare plan has no runtime layer"):
        plan_for(spec, base="python:3.11-slim", runtime=FAKE_RUNTIME, bare=True)
    with pytest.raises(ValueError, match="full plan needs one"):
        plan_for(spec, base="python:3.11-slim", runtime=None)
    from chalkd.images.docker_build import BARE

    assert _tag("a" * 64, BARE) != _tag("a" * 64, FAKE_RUNTIME.fingerprint)
