"""Unit tests for chalkcompute.image (pure data, no daemon)."""

from __future__ import annotations

import copy
import hashlib
import io
import os
import pickle
import sys
import tarfile
from pathlib import Path

import pytest

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute.image import Image, LazyLocalFile


def write(path: Path, text: str = "x", mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        path.chmod(mode)
    return path


def tar_members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def kept_paths(img: Image) -> list[str]:
    return sorted(f.remote_path for f in img.lazy_local_files)


# ---------------------------------------------------------------- constructors


def test_base() -> None:
    spec = Image.base("ghcr.io/my-org/my-image:latest").to_proto()
    assert spec.base == "ghcr.io/my-org/my-image:latest"
    assert spec.python_version == "" and len(spec.steps) == 0


@pytest.mark.parametrize("ref", ["", "  ", "ubuntu 22.04"])
def test_base_rejects_bad_ref(ref: str) -> None:
    with pytest.raises(ValueError, match="ref"):
        Image.base(ref)


def test_debian_slim_default_and_explicit() -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    default = Image.debian_slim().to_proto()
    assert default.base == f"python:{here}-slim-bookworm"
    assert default.python_version == here
    assert Image.debian_slim("3.11").to_proto().base == "python:3.11-slim-bookworm"


@pytest.mark.parametrize("version", ["3.12.1", "2.7", "3", "latest", "3.x"])
def test_debian_slim_rejects_bad_version(version: str) -> None:
    with pytest.raises(ValueError, match=r"python_version.*" + version.replace(".", r"\.")):
        Image.debian_slim(version)


def test_debian_slim_rejects_float() -> None:
    with pytest.raises(TypeError, match="python_version"):
        Image.debian_slim(3.12)  # type: ignore[arg-type]


def test_from_dockerfile(tmp_path: Path) -> None:
    df = write(tmp_path / "Dockerfile",
               "FROM ubuntu:22.04\n\n# tools\nRUN apt-get update && \\\n    apt-get install -y git\n")
    spec = Image.from_dockerfile(df).pip_install(["rich"]).to_proto()
    assert spec.base == ""
    assert spec.steps[0].kind == "dockerfile_commands"
    assert list(spec.steps[0].args) == [
        "FROM ubuntu:22.04", "", "# tools", "RUN apt-get update && \\", "    apt-get install -y git",
    ]
    assert spec.steps[1].kind == "pip_install"


def test_from_dockerfile_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope/Dockerfile"):
        Image.from_dockerfile(str(tmp_path / "nope" / "Dockerfile"))


# ---------------------------------------------------------------- simple builders


def test_run_commands() -> None:
    step = Image.debian_slim().run_commands("apt-get update", "apt-get install -y curl git").to_proto().steps[0]
    assert step.kind == "run_commands"
    assert list(step.args) == ["apt-get update", "apt-get install -y curl git"]


def test_pip_install_and_uv() -> None:
    spec = Image.debian_slim().pip_install(["requests>=2.28", "pandas"]).uv_pip_install("polars").to_proto()
    assert [(s.kind, list(s.args)) for s in spec.steps] == [
        ("pip_install", ["requests>=2.28", "pandas"]),
        ("uv_pip_install", ["polars"]),
    ]


def test_empty_lists_add_nothing() -> None:
    img = Image.debian_slim("3.12")
    assert len(img.pip_install([]).run_commands().env({}).dockerfile_commands([]).to_proto().steps) == 0


@pytest.mark.parametrize("bad", [[""], ["  "], ["ok", ""]])
def test_pip_install_rejects_empty_names(bad: list[str]) -> None:
    with pytest.raises(ValueError, match="packages"):
        Image.debian_slim().pip_install(bad)


def test_pip_install_rejects_non_str() -> None:
    with pytest.raises(TypeError, match="packages.*int 3"):
        Image.debian_slim().pip_install(["ok", 3])  # type: ignore[list-item]


def test_pip_install_from_requirements(tmp_path: Path) -> None:
    write(tmp_path / "base.txt", "numpy==2.0\n")
    req = write(tmp_path / "requirements.txt",
                "# pinned\nrequests>=2.28  # http\n\n   \npandas \\\n  ==2.2\n-r base.txt\n"
                "git+https://example.com/x.git#egg=x\n")
    step = Image.debian_slim().pip_install_from_requirements(req).to_proto().steps[0]
    assert step.kind == "pip_install_from_requirements"
    assert list(step.args) == ["requests>=2.28", "pandas   ==2.2", "numpy==2.0", "git+https://example.com/x.git#egg=x"]
    assert step.source == str(req)


def test_pip_install_from_requirements_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        Image.debian_slim().pip_install_from_requirements(tmp_path / "missing.txt")


def test_env_workdir_entrypoint_cmd() -> None:
    spec = (
        Image.debian_slim()
        .env({"LOG_LEVEL": "DEBUG", "PORT": "8080"})
        .workdir("/home/user/app")
        .entrypoint(["python"])
        .cmd(["-m", "my_app"])
        .to_proto()
    )
    env, wd, ep, cmd = spec.steps
    assert env.kind == "env" and dict(env.env) == {"LOG_LEVEL": "DEBUG", "PORT": "8080"}
    assert wd.kind == "workdir" and wd.path == "/home/user/app"
    assert ep.kind == "entrypoint" and list(ep.args) == ["python"]
    assert cmd.kind == "cmd" and list(cmd.args) == ["-m", "my_app"]


def test_env_validation() -> None:
    img = Image.debian_slim()
    with pytest.raises(TypeError, match=r"env value for 'PORT'.*int 8080"):
        img.env({"PORT": 8080})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="env key"):
        img.env({1: "x"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="env key"):
        img.env({"A=B": "x"})
    with pytest.raises(TypeError, match="vars"):
        img.env([("A", "B")])  # type: ignore[arg-type]


def test_workdir_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="workdir path must be absolute, got 'app'"):
        Image.debian_slim().workdir("app")


def test_entrypoint_rejects_plain_string() -> None:
    with pytest.raises(TypeError, match="entrypoint"):
        Image.debian_slim().entrypoint("python -m app")  # type: ignore[arg-type]


# ---------------------------------------------------------------- immutability


def test_builders_return_new_images() -> None:
    base = Image.debian_slim("3.12")
    before = base.to_proto()
    child = base.pip_install(["requests"])
    other = base.pip_install(["fastapi"])
    assert child is not base and child != base and child != other
    assert base.to_proto() == before
    assert len(child.to_proto().steps) == 1 and len(other.to_proto().steps) == 1


def test_image_attributes_cannot_be_set() -> None:
    img = Image.debian_slim()
    with pytest.raises(AttributeError):
        img._steps = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        img.foo = 1  # type: ignore[attr-defined]


def test_pickle_and_copy(tmp_path: Path) -> None:
    f = write(tmp_path / "a.py")
    img = Image.debian_slim("3.12").add_local_file(f, "/app/a.py").add_local_file(f, "/b/a.py", strategy="copy")
    for clone in (pickle.loads(pickle.dumps(img)), copy.copy(img), copy.deepcopy(img)):
        assert clone == img and clone.to_proto() == img.to_proto()
        assert clone.lazy_local_files == img.lazy_local_files


def test_lazy_local_files_is_a_copy(tmp_path: Path) -> None:
    f = write(tmp_path / "a.py")
    img = Image.debian_slim().add_local_file(f, "/app/a.py")
    img.lazy_local_files.clear()
    assert len(img.lazy_local_files) == 1


# ---------------------------------------------------------------- hashing / proto


def test_hash_stable_and_sensitive(tmp_path: Path) -> None:
    f = write(tmp_path / "a.py", "print(1)")

    def build() -> Image:
        return Image.debian_slim("3.12").pip_install(["requests"]).add_local_file(f, "/app/a.py").workdir("/app")

    a, b = build(), build()
    assert a == b and hash(a) == hash(b) and a.content_hash == b.content_hash
    assert len(a.content_hash) == 64 and a.to_proto().content_hash == a.content_hash
    assert len({a, b}) == 1
    variants = [
        Image.debian_slim("3.11").pip_install(["requests"]).add_local_file(f, "/app/a.py").workdir("/app"),
        build().pip_install(["x"]),
        Image.debian_slim("3.12").pip_install(["requests"]).add_local_file(f, "/app/b.py").workdir("/app"),
        Image.debian_slim("3.12").pip_install(["requests"]).add_local_file(f, "/app/a.py", mode=0o755).workdir("/app"),
        Image.debian_slim("3.12").pip_install(["requests"])
        .add_local_file(f, "/app/a.py", strategy="copy").workdir("/app"),
        Image.debian_slim("3.12").add_local_file(f, "/app/a.py").pip_install(["requests"]).workdir("/app"),
    ]
    hashes = {v.content_hash for v in variants} | {a.content_hash}
    assert len(hashes) == len(variants) + 1
    f.write_text("print(2)")
    assert build() != a


def test_copied_file_change_changes_hash(tmp_path: Path) -> None:
    f = write(tmp_path / "a.py", "1")
    a = Image.debian_slim("3.12").add_local_file(f, "/app/a.py", strategy="copy")
    f.write_text("2")
    assert Image.debian_slim("3.12").add_local_file(f, "/app/a.py", strategy="copy") != a


def test_dir_file_change_changes_hash(tmp_path: Path) -> None:
    write(tmp_path / "src" / "m.py", "1")
    for strategy in ("copy", "volume"):
        a = Image.debian_slim("3.12").add_local_dir(tmp_path / "src", "/app/src", strategy=strategy)  # type: ignore[arg-type]
        write(tmp_path / "src" / "m.py", "2" if strategy == "copy" else "3")
        assert Image.debian_slim("3.12").add_local_dir(tmp_path / "src", "/app/src", strategy=strategy) != a  # type: ignore[arg-type]


def test_env_order_does_not_matter() -> None:
    a = Image.debian_slim("3.12").env({"A": "1", "B": "2"})
    b = Image.debian_slim("3.12").env({"B": "2", "A": "1"})
    assert a == b


def test_hash_ignores_local_source_path(tmp_path: Path) -> None:
    one, two = write(tmp_path / "one" / "a.py", "same"), write(tmp_path / "two" / "a.py", "same")
    assert Image.base("x").add_local_file(one, "/app/a.py") == Image.base("x").add_local_file(two, "/app/a.py")


def test_proto_round_trip(tmp_path: Path) -> None:
    write(tmp_path / "src" / "m.py", "m")
    f = write(tmp_path / "run.sh", "#!/bin/sh\n", mode=0o755)
    img = (
        Image.debian_slim("3.12")
        .run_commands("apt-get update")
        .pip_install(["requests"])
        .uv_pip_install(["polars"])
        .env({"A": "1"})
        .add_local_file(f, "/app/run.sh", mode=0o755, strategy="copy")
        .add_local_file(f, "/opt/run.sh")
        .add_local_dir(tmp_path / "src", "/app/src", strategy="copy")
        .add_local_dir(tmp_path / "src", "/srv/src")
        .dockerfile_commands(["EXPOSE 8080"])
        .workdir("/app")
        .entrypoint(["/app/run.sh"])
        .cmd(["--help"])
    )
    spec = img.to_proto()
    wire = pb.ImageSpec.FromString(spec.SerializeToString())
    back = Image.from_proto(wire)
    assert back == img and back.content_hash == spec.content_hash
    assert back.to_proto() == spec
    assert back.lazy_local_files == img.lazy_local_files


def test_from_proto_rejects_unknown_kind() -> None:
    spec = pb.ImageSpec(base="x", steps=[pb.ImageStep(kind="bogus")])
    with pytest.raises(ValueError, match="bogus"):
        Image.from_proto(spec)


def test_repr() -> None:
    r = repr(Image.debian_slim("3.12").pip_install(["pandas"]).workdir("/app"))
    assert "python:3.12-slim-bookworm" in r and "pip_install('pandas')" in r and "workdir('/app')" in r


# ---------------------------------------------------------------- add_local_file


def test_add_local_file_volume(tmp_path: Path) -> None:
    f = write(tmp_path / "config.yaml", "a: 1")
    img = Image.debian_slim().add_local_file(f, "/app/config.yaml", mode=0o644)
    step = img.to_proto().steps[0]
    assert step.kind == "lazy_file" and step.path == "/app/config.yaml" and step.source == str(f)
    assert step.mode == 0o644 and step.digest == hashlib.sha256(b"a: 1").hexdigest()
    assert img.lazy_local_files == {
        LazyLocalFile(str(f), "/app/config.yaml", 0o644, None, hashlib.sha256(b"a: 1").hexdigest())
    }


def test_add_local_file_copy(tmp_path: Path) -> None:
    f = write(tmp_path / "run.sh", "#!/bin/sh\necho hi\n")
    img = Image.debian_slim().add_local_file(str(f), "/app/run.sh", mode=0o755, strategy="copy")
    step = img.to_proto().steps[0]
    assert step.kind == "copy_file" and step.path == "/app/run.sh"
    assert step.content == b"#!/bin/sh\necho hi\n" and step.mode == 0o755 and step.source == str(f)
    assert img.lazy_local_files == set()


def test_add_local_file_trailing_slash_keeps_name(tmp_path: Path) -> None:
    f = write(tmp_path / "a.py")
    assert Image.base("x").add_local_file(f, "/app/").to_proto().steps[0].path == "/app/a.py"


def test_add_local_file_validation(tmp_path: Path) -> None:
    f = write(tmp_path / "a.py")
    img = Image.debian_slim()
    with pytest.raises(ValueError, match="remote_path must be absolute, got 'app/a.py'"):
        img.add_local_file(f, "app/a.py")
    with pytest.raises(FileNotFoundError, match=r"local_path '.*missing\.py'"):
        img.add_local_file(tmp_path / "missing.py", "/app/a.py")
    with pytest.raises(ValueError, match="strategy must be 'copy' or 'volume', got 'bake'"):
        img.add_local_file(f, "/app/a.py", strategy="bake")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        img.add_local_file(f, "/app/a.py", mode=0o17777)
    with pytest.raises(TypeError, match="mode"):
        img.add_local_file(f, "/app/a.py", mode="755")  # type: ignore[arg-type]
    with pytest.raises(IsADirectoryError, match="add_local_dir"):
        img.add_local_file(tmp_path, "/app/a.py")


# ---------------------------------------------------------------- add_local_dir


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    write(root / ".gitignore", "*.log\n/build/\nsecret.txt\n")
    write(root / ".chalkignore", "data/**\n!data/keep.csv\n")
    write(root / "main.py", "main")
    write(root / "app.log", "log")
    write(root / "build" / "out.bin", "bin")
    write(root / "secret.txt", "s")
    write(root / ".git" / "HEAD", "ref")
    write(root / "data" / "big.csv", "1,2")
    write(root / "data" / "keep.csv", "3,4")
    # nested .gitignore: scoped to pkg/, re-includes one log, ignores local stuff
    write(root / "pkg" / ".gitignore", "!important.log\n/local.py\nbuild/\n")
    write(root / "pkg" / "important.log", "keep me")
    write(root / "pkg" / "other.log", "drop me")
    write(root / "pkg" / "local.py", "drop")
    write(root / "pkg" / "mod.py", "mod")
    write(root / "pkg" / "sub" / "local.py", "kept: /local.py anchors to pkg/")
    write(root / "pkg" / "build" / "x.py", "dropped by pkg's build/")
    write(root / "pkg" / "__pycache__" / "mod.cpython-312.pyc", "pyc")
    write(root / "other" / "build" / "y.py", "kept: root /build/ is anchored")
    write(root / "other" / "local.py", "kept: pkg's rule does not reach here")
    write(root / "other" / "secret.txt", "dropped: unanchored root rule")
    # nested .chalkignore, scoped to pkg/sub/
    write(root / "pkg" / "sub" / ".chalkignore", "*.tmp\n")
    write(root / "pkg" / "sub" / "a.tmp", "dropped")
    write(root / "other" / "a.tmp", "kept: pkg/sub/.chalkignore does not reach here")
    return root


EXPECTED = [
    ".chalkignore", ".gitignore", "data/keep.csv", "main.py", "other/a.tmp", "other/build/y.py", "other/local.py",
    "pkg/.gitignore", "pkg/__pycache__/mod.cpython-312.pyc", "pkg/important.log", "pkg/mod.py",
    "pkg/sub/.chalkignore", "pkg/sub/local.py",
]


def test_add_local_dir_ignore_rules(project: Path) -> None:
    img = Image.debian_slim().add_local_dir(project, "/app")
    assert kept_paths(img) == [f"/app/{p}" for p in EXPECTED]


def test_add_local_dir_exclude(project: Path) -> None:
    img = Image.debian_slim().add_local_dir(project, "/app", exclude=["__pycache__", "*.csv", "other/**"])
    expected = [p for p in EXPECTED if not p.endswith(".csv") and "__pycache__" not in p and not p.startswith("other/")]
    assert kept_paths(img) == [f"/app/{p}" for p in expected]


def test_add_local_dir_negation_and_pruning(tmp_path: Path) -> None:
    # go-git semantics: each file is checked by its full path, so a later
    # negation re-includes a file even inside an ignored directory
    write(tmp_path / "a" / ".gitignore", "build/\n!build/keep.txt\n")
    write(tmp_path / "a" / "build" / "keep.txt")
    write(tmp_path / "a" / "build" / "drop.txt")
    # no negation in scope: ignored directories are skipped whole
    write(tmp_path / "b" / ".gitignore", "node_modules\n")
    write(tmp_path / "b" / "node_modules" / "x" / "index.js")
    write(tmp_path / "b" / "index.js")
    img = Image.base("x").add_local_dir(tmp_path / "a", "/a").add_local_dir(tmp_path / "b", "/b")
    assert kept_paths(img) == ["/a/.gitignore", "/a/build/keep.txt", "/b/.gitignore", "/b/index.js"]


def test_add_local_dir_exclude_negation_overrides_ignore_files(tmp_path: Path) -> None:
    write(tmp_path / ".gitignore", "*.env\n")
    write(tmp_path / "prod.env")
    write(tmp_path / "dev.env")
    img = Image.base("x").add_local_dir(tmp_path, "/app", exclude=["*.txt", "!dev.env"])
    assert kept_paths(img) == ["/app/.gitignore", "/app/dev.env"]


def test_add_local_dir_volume_fields(project: Path) -> None:
    img = Image.debian_slim().add_local_dir(project, "/app/src/")
    by_path = {f.remote_path: f for f in img.lazy_local_files}
    main = by_path["/app/src/main.py"]
    assert main.local_path == str(project / "main.py") and main.mount_root == "/app/src"
    assert main.digest == hashlib.sha256(b"main").hexdigest()
    assert main.mode == (project / "main.py").stat().st_mode & 0o777
    assert all(s.kind == "lazy_file" and s.mount_root == "/app/src" for s in img.to_proto().steps)


def test_add_local_dir_copy_is_deterministic_tar(project: Path) -> None:
    (project / "main.py").chmod(0o751)
    a = Image.debian_slim().add_local_dir(project, "/app", strategy="copy")
    os.utime(project / "main.py", (1, 1))
    b = Image.debian_slim().add_local_dir(project, "/app", strategy="copy")
    assert a == b and a.lazy_local_files == set()
    step = a.to_proto().steps[0]
    assert step.kind == "copy_dir" and step.path == "/app" and step.source == str(project)
    members = tar_members(step.content)
    assert sorted(members) == EXPECTED and list(members) == EXPECTED
    main = members["main.py"]
    assert main.mtime == 0 and main.uid == 0 and main.gid == 0 and main.mode == 0o751


def test_add_local_dir_archive(project: Path) -> None:
    img = Image.debian_slim().add_local_dir(project, "/app/src", archive=True)
    (lazy,) = img.lazy_local_files
    assert lazy.remote_path == "/app/src.tar" and lazy.mount_root is None
    data = Path(lazy.local_path).read_bytes()
    assert lazy.digest == hashlib.sha256(data).hexdigest()
    assert Path(lazy.local_path).name == f"{lazy.digest}.tar"
    assert Path(lazy.local_path).parent.name == "chalkcompute-archives"
    assert sorted(tar_members(data)) == EXPECTED
    assert img == Image.debian_slim().add_local_dir(project, "/app/src", archive=True)


def test_add_local_dir_validation(tmp_path: Path) -> None:
    f = write(tmp_path / "a.py")
    img = Image.debian_slim()
    with pytest.raises(ValueError, match="archive=True requires strategy='volume'"):
        img.add_local_dir(tmp_path, "/app", strategy="copy", archive=True)
    with pytest.raises(ValueError, match="remote_path must be absolute, got 'app'"):
        img.add_local_dir(tmp_path, "app")
    with pytest.raises(FileNotFoundError, match="local_path 'nope-dir'"):
        img.add_local_dir("nope-dir", "/app")
    with pytest.raises(NotADirectoryError, match="local_path"):
        img.add_local_dir(f, "/app")
    with pytest.raises(ValueError, match="strategy"):
        img.add_local_dir(tmp_path, "/app", strategy="link")  # type: ignore[arg-type]


# ---------------------------------------------------------------- lazy files: grouping / validation


def test_lazy_local_files_by_mount_dir(tmp_path: Path) -> None:
    write(tmp_path / "src" / "a.py")
    write(tmp_path / "src" / "pkg" / "b.py")
    cfg = write(tmp_path / "config.yaml")
    img = (
        Image.debian_slim()
        .add_local_dir(tmp_path / "src", "/app/src")
        .add_local_file(cfg, "/etc/app/config.yaml")
        .add_local_file(cfg, "/app/src/pkg/extra.yaml", strategy="copy")
    )
    groups = img.lazy_local_files_by_mount_dir()
    assert list(groups) == ["/app/src", "/etc/app"]
    assert [f.remote_path for f in groups["/app/src"]] == ["/app/src/a.py", "/app/src/pkg/b.py"]
    assert [f.remote_path for f in groups["/etc/app"]] == ["/etc/app/config.yaml"]
    img.validate_lazy_local_files()


def test_validate_lazy_local_files_rejects_root(tmp_path: Path) -> None:
    f = write(tmp_path / "x.py")
    img = Image.debian_slim().add_local_file(f, "/x.py")
    with pytest.raises(ValueError, match=r"'/x\.py'.*mounted at '/'"):
        img.validate_lazy_local_files()
    Image.debian_slim().add_local_file(f, "/x.py", strategy="copy").validate_lazy_local_files()
    with pytest.raises(ValueError, match="'/'"):
        Image.debian_slim().add_local_dir(tmp_path, "/").validate_lazy_local_files()


# ---------------------------------------------------------------- reference examples, as written


@pytest.fixture
def in_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("analyze.py", "config.yaml", "entrypoint.sh", "script.py"):
        write(tmp_path / name)
    write(tmp_path / "Dockerfile", "FROM python:3.12-slim\nRUN pip install uv\n")
    write(tmp_path / "requirements.txt", "requests\n")
    write(tmp_path / "src" / "m.py")
    write(tmp_path / "src" / "__pycache__" / "m.pyc")
    return tmp_path


def test_reference_examples(in_project: Path) -> None:
    img = (
        Image.debian_slim("3.12")
        .pip_install(["pandas", "requests"])
        .add_local_file(
            "./analyze.py",
            "/app/analyze.py",
        )
        .workdir("/app")
    )
    assert {f.remote_path for f in img.lazy_local_files} == {"/app/analyze.py"}
    img = (
        Image.debian_slim("3.12")
        .pip_install(["requests", "pandas"])
        .workdir("/home/user/app")
    )
    img = Image.base("ubuntu:22.04")
    img = Image.base("ghcr.io/my-org/my-image:latest")
    img = Image.debian_slim()
    img = Image.debian_slim("3.11")
    img = Image.from_dockerfile("./Dockerfile")
    img = (
        Image.from_dockerfile("./Dockerfile")
        .pip_install(["rich"])
    )
    img = (
        Image.debian_slim()
        .run_commands(
            "apt-get update",
            "apt-get install -y curl git",
        )
    )
    img = (
        Image.debian_slim()
        .pip_install(["requests>=2.28", "pandas"])
    )
    img = (
        Image.debian_slim()
        .pip_install_from_requirements("./requirements.txt")
    )
    img = (
        Image.base("ghcr.io/astral-sh/uv:python3.12-bookworm-slim")
        .uv_pip_install(["requests", "polars"])
    )
    img = (
        Image.debian_slim()
        .add_local_file(
            "./config.yaml",
            "/app/config.yaml",
        )
        .add_local_file(
            "./entrypoint.sh",
            "/app/entrypoint.sh",
            mode=0o755,
        )
    )
    assert len(img.lazy_local_files_by_mount_dir()["/app"]) == 2
    img = (
        Image.debian_slim()
        .add_local_dir(
            "./src",
            "/app/src",
            exclude=["*.pyc", "__pycache__"],
        )
    )
    assert kept_paths(img) == ["/app/src/m.py"]
    img = (
        Image.debian_slim()
        .dockerfile_commands([
            "USER root",
            "EXPOSE 8080",
        ])
    )
    img = (
        Image.debian_slim()
        .env({
            "LOG_LEVEL": "DEBUG",
            "PORT": "8080",
        })
    )
    img = (
        Image.debian_slim()
        .workdir("/home/user/app")
    )
    img = (
        Image.debian_slim()
        .entrypoint(["python", "-m", "my_app"])
    )
    img = (
        Image.debian_slim()
        .entrypoint(["python"])
        .cmd(["-m", "my_app"])
    )
    img = (
        Image.debian_slim()
        .pip_install(["requests"])
        .add_local_file("./script.py", "/app/script.py")
    )
    img.validate_lazy_local_files()
    assert isinstance(img.to_proto(), pb.ImageSpec)
