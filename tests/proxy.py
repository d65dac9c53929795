"""A loopback TCP proxy whose connections a test can cut, to drop a caller's link."""

from __future__ import annotations

import asyncio
import threading


class CuttableProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.port = 0

    def start(self) -> CuttableProxy:
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(5)
        return self

    async def _listen(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers |= {writer, up_writer}

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Drop every open connection (new ones are still accepted)."""
        def _cut():
            for w in list(self.writers):
                w.transport.abort()
            self.writers.clear()
        self.loop.call_soon_threadsafe(_cut)

    def close(self) -> None:
        async def _close():
            for w in list(self.writers):
                w.transport.abort()
            self.writers.clear()
            self.server.close()
            await self.server.wait_closed()
            await asyncio.sleep(0.05)  # let aborted transports finish closing
        asyncio.run_coroutine_threadsafe(_close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
