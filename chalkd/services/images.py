"""Images: lazy-file uploads and image builds with their log streamed as it comes.

    async for event in ImagesStub(channel).Build(pb.BuildImageRequest(image=spec)):
        print(*event.lines, sep="\\n")          # "Step 2/6 : RUN python3 -m pip install six", ...
        if event.HasField("result"): ...      # ok, image_ref, cached / error, failed_step, log_tail
"""

from __future__ import annotations

import asyncio
import logging

from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
from chalkcompute._proto.chalk_v1_chalk_grpc import ImagesBase
from chalkd.errors import FailedPrecondition, InvalidArgument
from chalkd.images.blobs import BlobStore, check_lazy_files
from chalkd.services.convert import decode_image
from chalkd.services.errors import grpc_errors

log = logging.getLogger(__name__)

LINES_PER_EVENT = 64


class ImagesService(ImagesBase):
    def __init__(self, blobs: BlobStore, builder=None, runtime_name: str = "process") -> None:
        self.blobs = blobs
        self.builder = builder  # a DockerImageBuilder on the Docker runtime, else None
        self.runtime_name = runtime_name

    @grpc_errors
    async def MissingBlobs(self, stream) -> None:
        req: pb.MissingBlobsRequest = await stream.recv_message()
        missing = self.blobs.missing(list(req.digests))  # BlobError: INVALID_ARGUMENT by the error table
        await stream.send_message(pb.MissingBlobsResponse(digests=missing))

    @grpc_errors
    async def PutBlob(self, stream) -> None:
        first: pb.PutBlobRequest | None = await stream.recv_message()
        if first is None:
            raise InvalidArgument("PutBlob got no data")
        with self.blobs.writer(first.digest) as w:  # BlobError: INVALID_ARGUMENT by the error table
            piece: pb.PutBlobRequest | None = first
            while piece is not None:
                w.write(piece.data)
                if piece.last:
                    break
                piece = await stream.recv_message()
            else:
                raise InvalidArgument("the upload ended before its last piece")
        await stream.send_message(pb.PutBlobResponse(size=w.size))

    @grpc_errors
    async def Build(self, stream) -> None:
        req: pb.BuildImageRequest = await stream.recv_message()
        image = decode_image(req.image)
        check_lazy_files(image)  # LazyFileError: INVALID_ARGUMENT by the error table
        if self.builder is None:
            raise FailedPrecondition(
                f"image builds need the Docker runtime; this daemon runs --runtime {self.runtime_name}")
        from chalkd.images.docker_build import ImageBuildError

        lines: asyncio.Queue[str | None] = asyncio.Queue()
        task = asyncio.get_running_loop().create_task(self.builder.build(image, log=lines.put_nowait, bare=req.bare))
        task.add_done_callback(lambda _: lines.put_nowait(None))
        # A caller that goes away does not stop the build: others may share it, and the cache keeps it.
        done = False
        while not done:
            batch = [await lines.get()]
            while not lines.empty() and len(batch) < LINES_PER_EVENT:
                batch.append(lines.get_nowait())
            if None in batch:
                batch, done = [x for x in batch if x is not None], True
            if batch:
                await stream.send_message(pb.BuildEvent(lines=[b.rstrip("\n") for b in batch]))
        try:
            built = task.result()
        except ImageBuildError as exc:
            result = pb.BuildResult(ok=False, error=str(exc), failed_step=exc.step, log_tail=exc.tail)
        except Exception as exc:
            log.exception("building image %s failed", req.image.content_hash[:12])
            result = pb.BuildResult(ok=False, error=f"the image build failed inside chalkd: {exc}")
        else:
            result = pb.BuildResult(ok=True, image_ref=built.tag, cached=built.cached)
        await stream.send_message(pb.BuildEvent(result=result))
