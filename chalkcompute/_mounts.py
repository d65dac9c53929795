"""``volumes=[...]`` and ``secrets=[...]`` on functions and containers: validated once, sent as messages.

    mounts = volume_mounts([(Volume("model-cache"), "/models"), ("scratch", "/tmp/scratch")])
    # -> [VolumeMount(volume="model-cache", path="/models"), VolumeMount(volume="scratch", path="/tmp/scratch")]

A mount is ``(volume, path)`` where ``volume`` is a :class:`chalkcompute.Volume`
(anything with a ``name``) or a volume name, and ``path`` an absolute
directory in the container other than ``/``. A volume named in a mount is
created at deploy when it does not exist. Mounts need chalkd's Docker runtime.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

from chalkcompute._contract import name_too_long, path_too_long, quote, valid_volume_name
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb

__all__ = ["volume_mounts", "check_secrets", "secret_refs"]

def volume_mounts(volumes: Iterable | None) -> list[pb.VolumeMount]:
    if volumes is None:
        return []
    if isinstance(volumes, (str, bytes, dict)) or not isinstance(volumes, Iterable):
        raise TypeError(f"volumes must be a list of (volume, path) pairs, got {volumes!r}")
    out: list[pb.VolumeMount] = []
    seen: dict[str, str] = {}
    for item in volumes:
        if isinstance(item, pb.VolumeMount):  # the reference's type (chalkcompute.VolumeMount)
            item = (item.volume, item.path)
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(f"each entry of volumes must be a (volume, path) pair, got {item!r}")
        volume, path = item
        name = volume if isinstance(volume, str) else getattr(volume, "name", None)
        if not isinstance(name, str):
            raise TypeError(f"a mount's volume must be a chalkcompute.Volume or a volume name, got {volume!r}")
        too_long = name_too_long("volume name", name) or path_too_long("mount path", path)
        if too_long:  # first: nothing below reads a long name or path
            raise ValueError(too_long)
        if not valid_volume_name(name):
            raise ValueError(f"invalid volume name {quote(name)} in volumes: use 1-63 letters, digits, '.', '_' "
                             "or '-', starting with a letter or digit")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"the mount path of volume {name!r} must be an absolute path, got {quote(path)}")
        norm = posixpath.normpath(path)
        if norm == "/" or "\0" in norm or ":" in norm:
            raise ValueError(f"volume {name!r} cannot be mounted at {quote(path)}: choose a directory such as '/data'")
        if norm in seen:
            raise ValueError(f"two volumes are mounted at {norm!r}: {seen[norm]!r} and {name!r}")
        seen[norm] = name
        out.append(pb.VolumeMount(volume=name, path=norm))
    return out


def check_secrets(secrets: Iterable | None) -> list:
    """``secrets=`` as a list of :class:`chalkcompute.Secret` (checked now; local ones are read at deploy)."""
    from chalkcompute.secret import Secret

    if secrets is None:
        return []
    if isinstance(secrets, (str, bytes, dict, Secret)) or not isinstance(secrets, Iterable):
        raise TypeError(f"secrets must be a list of chalkcompute.Secret, got {secrets!r}")
    out = list(secrets)
    for s in out:
        if not isinstance(s, Secret):
            raise TypeError(f"every entry of secrets must be a chalkcompute.Secret (e.g. Secret.from_name('KEY')), "
                            f"got {s!r}")
    return out


def secret_refs(secrets: list) -> tuple[list[pb.SecretRef], dict[str, str]]:
    """The references to send, and the values of local secrets read now (sent apart from the spec)."""
    refs: list[pb.SecretRef] = []
    local: dict[str, str] = {}
    for s in secrets:
        ref, values = s.to_ref()
        refs.append(ref)
        local.update(values)
    return refs, local
