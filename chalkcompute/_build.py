"""Getting an Image ready on the daemon: upload its lazy files, build it, show the log.

    result = await prepare_image(client, image, what="function 'square'")
    result.image_ref        # the engine's tag; the build log went to stderr as it came

A build that actually runs prints its log to ``sys.stderr`` line by line (a
person sees progress in their terminal); a cached image prints nothing. Set
``CHALK_BUILD_LOG=0`` to silence it. When displays are on (stderr a terminal or a notebook, or
``CHALK_PROGRESS=1``; see :mod:`chalkcompute._progress`) a progress row stays under the log lines: the
Dockerfile step the engine is on ("step 2 of 5") and the time so far; a lazy local file of 8 MiB or more
shows its upload's bytes. A failed build raises
:class:`ImageBuildFailed`, which callers turn into ``FunctionBuildError`` or
``ImageBuildError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chalkcompute import _progress, _rpc
from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import ImagesStub
from chalkcompute.image import Image

if TYPE_CHECKING:
    from chalkcompute._client import Client

__all__ = ["prepare_image", "upload_lazy_files", "ImageBuildFailed", "BuildOutcome"]

PIECE = 1 << 20  # upload pieces, well under any message limit


class ImageBuildFailed(Exception):
    def __init__(self, message: str, step: str = "", tail: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.tail = tail


@dataclass(frozen=True)
class BuildOutcome:
    image_ref: str
    cached: bool


async def upload_lazy_files(client: Client, image: Image) -> int:
    """Upload the image's lazy local files the daemon does not have yet; returns how many."""
    files = {f.digest: f.local_path for f in image.lazy_local_files}
    if not files:
        return 0
    image.validate_lazy_local_files()
    stub = ImagesStub(client.channel)
    request = pb.MissingBlobsRequest(digests=sorted(files))
    missing = (await _rpc.unary(stub.MissingBlobs, request, target=client.target, timeout=None)).digests
    for digest in missing:
        await _put(client, stub, digest, files[digest])
    return len(missing)


async def _put(client: Client, stub: ImagesStub, digest: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise FileNotFoundError(f"lazy local file {path!r} cannot be read for upload: {exc}") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"lazy local file {path!r} changed since it was added to the Image; build the Image again")
    transfer = _progress.Transfer(f"upload {path}")  # a large file shows a bar (see _progress)
    transfer.sized(len(data))
    try:
        with _rpc.guarded(client.target):
            async with stub.PutBlob.open() as stream:
                for start in range(0, max(len(data), 1), PIECE):
                    piece = data[start:start + PIECE]
                    await stream.send_message(pb.PutBlobRequest(digest=digest, data=piece,
                                                                last=start + PIECE >= len(data)))
                    transfer.done += len(piece)
                await stream.end()
                await stream.recv_message()
    finally:
        transfer.close()


async def prepare_image(client: Client, image: Image, *, what: str, timeout: float | None = None,
                        bare: bool = False) -> BuildOutcome:
    """Upload lazy files, then build ``image`` on the daemon (or find it cached).

    ``bare`` (sandboxes): the image's own steps only, without chalkd's runtime
    layer or its python3 check, so an image without Python builds too."""
    await upload_lazy_files(client, image)
    stub = ImagesStub(client.channel)
    show = os.environ.get("CHALK_BUILD_LOG", "1") != "0"
    announced = False
    result: pb.BuildResult | None = None
    bar: _progress.BuildSteps | None = None  # made when a build actually runs (its first lines) and displays are on

    async def run() -> None:
        nonlocal announced, result, bar
        with _rpc.guarded(client.target):
            async with stub.Build.open() as stream:
                await stream.send_message(pb.BuildImageRequest(image=image.to_proto(), bare=bare), end=True)
                async for event in stream:
                    if event.lines and not announced:
                        announced = True
                        header = f"chalkd: building image {image.content_hash[:12]} for {what}"
                        if _progress.enabled():
                            bar = _progress.BuildSteps(header[len("chalkd: "):])
                            bar.start()
                        if show and not (bar is not None and _progress.print_above(header)):
                            print(header, file=sys.stderr)
                    if event.lines:
                        if bar is not None:
                            bar.feed(event.lines)  # before the lines go out: the bar under them is drawn fresh
                        if show and not (bar is not None and _progress.print_above("\n".join(event.lines))):
                            for line in event.lines:
                                print(line, file=sys.stderr)
                            sys.stderr.flush()
                    if event.HasField("result"):
                        result = event.result
                        if bar is not None and result.ok:
                            bar.finish()

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        raise ImageBuildFailed(f"the image build for {what} did not finish within build_timeout={timeout:g}s") \
            from None
    finally:
        if bar is not None:
            bar.close()
    if result is None:
        raise ImageBuildFailed(f"the daemon ended the image build for {what} without a result")
    if not result.ok:
        raise ImageBuildFailed(result.error, result.failed_step, result.log_tail)
    return BuildOutcome(result.image_ref, result.cached)

