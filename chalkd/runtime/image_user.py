"""Which uid and gid a container of an image runs as: the image's ``USER``.

    uid, gid = await image_user(docker, "chalkd-img:ab12...")   # (1000, 1000) for `USER app`

Replicas and Container API containers run as the image's own ``USER`` (root
when it names none), exactly as ``docker run`` would. The daemon needs the
numbers to hand that uid what it must reach (its agent directory, the volumes
it mounts), so names are looked up in the image's own ``/etc/passwd`` and
``/etc/group``, read from a created, never started, container. Results are
cached per image id (an image never changes).
"""

from __future__ import annotations

import contextlib
import logging

import aiodocker
from aiodocker.exceptions import DockerError

log = logging.getLogger(__name__)

__all__ = ["ImageUserError", "image_user", "parse_user"]

_cache: dict[str, tuple[int, int]] = {}


class ImageUserError(ValueError):
    """The image's USER names a user or group its /etc/passwd or /etc/group does not have."""


def _table(text: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] and not line.startswith("#"):
            rows.setdefault(fields[0], fields)
    return rows


def parse_user(user: str, passwd: str = "", group: str = "") -> tuple[int, int]:
    """``USER`` as Docker reads it -> (uid, gid), names looked up in the given file texts.

        >>> parse_user("1000")                                       # no passwd entry: gid 0, as Docker does
        (1000, 0)
        >>> parse_user("app", "app:x:1000:1001::/home/app:/bin/sh\\n")
        (1000, 1001)
    """
    name, _, grp = (user or "").partition(":")
    users = _table(passwd)
    if not name:
        uid, entry = 0, None
    elif name.isdigit():
        uid = int(name)
        entry = next((f for f in users.values() if f[2] == name), None)
    else:
        entry = users.get(name)
        if entry is None:
            raise ImageUserError(f"the image's USER {user!r} names user {name!r}, which is not in its /etc/passwd")
        uid = int(entry[2])
    if not grp:
        return uid, int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    if grp.isdigit():
        return uid, int(grp)
    g = _table(group).get(grp)
    if g is None:
        raise ImageUserError(f"the image's USER {user!r} names group {grp!r}, which is not in its /etc/group")
    return uid, int(g[2])


async def _read(container, path: str) -> str:
    try:
        tar = await container.get_archive(path)
    except DockerError:
        return ""  # an image without the file: numeric users only
    with contextlib.closing(tar):
        for member in tar.getmembers():
            if member.isfile():
                f = tar.extractfile(member)
                if f is not None:
                    return f.read().decode("utf-8", "replace")
    return ""


async def image_user(docker: aiodocker.Docker, tag: str) -> tuple[int, int]:
    """(uid, gid) a container of ``tag`` runs as; ImageUserError for an unknown name."""
    info = await docker.images.inspect(tag)
    image_id = info.get("Id") or tag
    if image_id in _cache:
        return _cache[image_id]
    user = ((info.get("Config") or {}).get("User") or "").strip()
    name, _, grp = user.partition(":")
    if (not name or name.isdigit()) and (not grp or grp.isdigit()) and (grp or not name or name == "0"):
        found = parse_user(user)  # numbers only, nothing to look up
    else:
        container = await docker.containers.create({"Image": tag, "Entrypoint": ["/nonexistent"], "Cmd": [],
                                                    "Labels": {"dev.chalkd.owner": "chalkd"},
                                                    "NetworkDisabled": True})
        try:
            found = parse_user(user, await _read(container, "/etc/passwd"), await _read(container, "/etc/group"))
        finally:
            with contextlib.suppress(DockerError):
                await container.delete(force=True)
    _cache[image_id] = found
    log.debug("image %s runs as uid %d gid %d (USER %r)", tag, found[0], found[1], user)
    return found
