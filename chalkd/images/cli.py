"""``chalkd image ls`` and ``chalkd image prune``: the ``chalkd-img:`` tags our builds leave on the engine.

Every function, container and sandbox image chalkd builds is tagged ``chalkd-img:<24 hex>``
(~450 MB each, most of it the shared base); they pile up as specs change. These commands
talk to the engine only (no daemon needed) and never touch another repository's tags::

    chalkd image ls                                   # tag, id, size, unique bytes, age, what uses it
    chalkd image prune --dry-run                      # what would go, and what it would free
    chalkd image prune --older-than 7d                # only images built more than 7 days ago
    chalkd image prune chalkd-img:5c0f...             # only these tags

What is kept: an image any container uses (running or stopped, ours or anyone's: a stopped
Container API container is restarted from it), and images built within ``--older-than``
(default 1h: a build that just finished is about to start its first replica). Removing a tag of
an image that has other tags only untags it; the image goes when its last tag does. A function
whose image was pruned builds it again at its next replica start (from the engine's cache
where layers remain).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

TAG_PREFIX = "chalkd-img:"
DEFAULT_OLDER_THAN = "1h"
_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``"7d"`` -> 604800.0; ``s``, ``m``, ``h``, ``d``, ``w`` units, or a plain ``0``."""
    text = text.strip()
    if text == "0":
        return 0.0
    m = _AGE.fullmatch(text)
    if not m:
        raise ValueError(f"--older-than must be a number with a unit s, m, h, d or w (e.g. 7d, 12h), got {text!r}")
    return float(m[1]) * _UNIT[m[2]]


def human_bytes(n: float) -> str:
    """``human_bytes(471859200) == "450.0 MiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    """``human_age(90000) == "1d ago"``."""
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return "just now"


@dataclass
class OurImage:
    """One engine image carrying at least one of our tags."""

    id: str
    tags: list[str]                 # ours (chalkd-img:...)
    other_tags: list[str]           # another repository's: never removed, and the image stays for them
    created: float
    size: int
    unique: int                     # bytes no other image shares (what deleting it frees)
    used_by: list[str] = field(default_factory=list)

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.created)


def _container_use(container: dict[str, Any]) -> str:
    """What a container is to chalkd, from its labels: ``function add``, ``sandbox sb-1``, ..."""
    labels = container.get("Labels") or {}
    name = ((container.get("Names") or ["?"])[0]).lstrip("/")
    state = container.get("State", "")
    for label, what in (("dev.chalkd.function", "function"), ("dev.chalkd.group", "group"),
                        ("dev.chalkd.sandbox", "sandbox")):
        if labels.get(label):
            return f"{what} {labels[label]} ({state})"
    if labels.get("dev.chalkd.container"):
        return f"container {labels.get('dev.chalkd.name') or labels['dev.chalkd.container']} ({state})"
    return f"{'chalkd' if labels.get('dev.chalkd.owner') == 'chalkd' else 'other'} container {name} ({state})"


async def list_ours(docker: Any) -> list[OurImage]:
    """Our images, newest first, with their unique size and the containers using them."""
    # /system/df has what `docker images` lacks: each image's shared bytes (so its unique ones).
    df = await docker._query_json("system/df", params={"type": "image"})
    images = []
    for img in df.get("Images") or []:
        tags = [t for t in img.get("RepoTags") or [] if t.startswith(TAG_PREFIX)]
        if not tags:
            continue
        size, shared = int(img.get("Size") or 0), int(img.get("SharedSize") or 0)
        images.append(OurImage(id=img["Id"], tags=sorted(tags),
                               other_tags=sorted(t for t in img.get("RepoTags") or [] if t not in tags),
                               created=float(img.get("Created") or 0), size=size,
                               unique=size - shared if shared >= 0 else size))
    by_id = {i.id: i for i in images}
    for c in await docker.containers.list(all=True):
        img = by_id.get(c._container.get("ImageID", ""))
        if img is not None:
            img.used_by.append(_container_use(c._container))
    return sorted(images, key=lambda i: -i.created)


def add_parsers(image_sub) -> None:
    """``ls`` and ``prune`` under ``chalkd image``."""
    image_sub.add_parser("ls", help="chalkd's images (chalkd-img:*): size, unique bytes, age, what uses them")
    prune = image_sub.add_parser("prune", help="remove chalkd-img:* tags no container uses (never other images)")
    prune.add_argument("tags", nargs="*", metavar="TAG", help="only these chalkd-img: tags (default: all of ours)")
    prune.add_argument("--older-than", default=DEFAULT_OLDER_THAN,
                       help=f"only images built longer ago than this: 30m, 12h, 7d, 2w, or 0 (default "
                            f"{DEFAULT_OLDER_THAN}: a fresh build is about to be used)")
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed and freed; remove nothing")


def image_command(args) -> int:
    """``chalkd image ls|prune``; 0 on success, 1 when the engine cannot be reached or a tag is unknown,
    2 for a bad argument (a tag not ours, a malformed --older-than)."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    if args.action == "prune":
        try:
            min_age = parse_age(args.older_than)
        except ValueError as exc:
            print(f"chalkd: {exc}", file=sys.stderr)
            return 2
        foreign = [t for t in args.tags if not t.startswith(TAG_PREFIX)]
        if foreign:
            print(f"chalkd: image prune removes only chalkd's own {TAG_PREFIX}* tags; not ours: {', '.join(foreign)}",
                  file=sys.stderr)
            return 2
    try:
        return asyncio.run(_run(args, console, min_age if args.action == "prune" else 0.0))
    except _EngineError as exc:
        print(f"chalkd: {exc}", file=sys.stderr)
        return 1


class _EngineError(Exception):
    pass


async def _run(args, console, min_age: float) -> int:
    import os

    import aiodocker

    try:
        docker = aiodocker.Docker()
    except Exception as exc:
        raise _EngineError(f"no Docker engine ({exc})") from None
    try:
        try:
            images = await list_ours(docker)
        except (aiodocker.DockerError, OSError) as exc:
            raise _EngineError(f"no Docker engine answers at "
                               f"{os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')} ({exc})") from None
        if args.action == "ls":
            _print_table(console, images)
            return 0
        return await _prune(docker, console, images, args.tags, min_age, args.dry_run)
    finally:
        await docker.close()


def _print_table(console, images: list[OurImage]) -> None:
    from rich.table import Column, Table

    table = Table(Column("TAG", no_wrap=True), "IMAGE ID", "SIZE", "UNIQUE", "CREATED", Column("USED BY"))
    for img in images:
        used = ", ".join(img.used_by) or "-"
        for tag in img.tags:
            table.add_row(tag, img.id.removeprefix("sha256:")[:12], human_bytes(img.size), human_bytes(img.unique),
                          human_age(img.age), used)
    console.print(table)
    total = sum(i.unique for i in images)
    console.print(f"{len(images)} image(s), {sum(len(i.tags) for i in images)} tag(s); "
                  f"{human_bytes(total)} not shared with other images")


async def _prune(docker, console, images: list[OurImage], only: list[str], min_age: float, dry_run: bool) -> int:
    import aiodocker

    if only:
        known = {t for i in images for t in i.tags}
        unknown = [t for t in only if t not in known]
        if unknown:
            print(f"chalkd: no such image: {', '.join(unknown)} (see `chalkd image ls`)", file=sys.stderr)
            return 1
    verb = "would " if dry_run else ""
    freed, removed, kept = 0, 0, 0
    for img in images:
        tags = [t for t in img.tags if not only or t in only]
        if not tags:
            continue
        short = img.id.removeprefix("sha256:")[:12]
        if img.used_by:
            kept += len(tags)
            console.print(f"kept {', '.join(tags)} ({short}): used by {', '.join(img.used_by)}")
            continue
        if img.age < min_age:
            kept += len(tags)
            if only:  # named: say why; otherwise the young are many and the summary counts them
                console.print(f"kept {', '.join(tags)} ({short}): built {human_age(img.age)}, newer than --older-than")
            continue
        # The image itself goes only with its last tag, ours or another repository's.
        goes = set(tags) == set(img.tags) and not img.other_tags
        if not dry_run:
            try:
                for tag in tags:
                    await docker.images.delete(tag, force=False, noprune=False)
            except aiodocker.DockerError as exc:  # a container started meanwhile: the engine refuses (409)
                kept += len(tags)
                console.print(f"kept {', '.join(tags)} ({short}): {exc.message}")
                continue
        removed += len(tags)
        if goes:
            freed += img.unique
            console.print(f"{verb}delete {', '.join(tags)} ({short}, {human_age(img.age)}): "
                          f"{verb}free {human_bytes(img.unique)}")
        else:
            console.print(f"{verb}untag {', '.join(tags)} ({short}): the image stays for its other tags "
                          f"{', '.join(sorted(set(img.tags) - set(tags)) + img.other_tags)}")
    console.print(f"{verb or ''}{'remove' if dry_run else 'removed'} {removed} tag(s), kept {kept}; "
                  f"{verb}{'free' if dry_run else 'freed'} {human_bytes(freed)}")
    return 0
