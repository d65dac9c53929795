"""Getting the images chalkd builds onto every node that may run them.

Two ways, and chalkd says at start which one it uses (``chalkd serve`` logs it, ``chalkd nodes`` shows it):

* ``--registry HOST:PORT``: each built image is tagged ``HOST:PORT/chalkd-img:<hash>`` and pushed; nodes pull
  it when Swarm places a replica there. The tag carries the content hash, so every node runs the same bytes.
* no registry: the image is copied with ``docker save | docker load`` (streamed, never whole in memory) to
  each node whose engine chalkd was given (``--node-engine NODE=URL``). A node neither way reaches is left
  out of placement (a ``node.id!=`` constraint), and said so once in the log.

    shipper = ImageShipper(manager, registry=None, node_engines={"swnode2": "unix:///tmp/swarm/node2.sock"})
    placed = await shipper.ship("chalkd-img:ab12cd")   # Shipped(image="chalkd-img:ab12cd", excluded=())
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

log = logging.getLogger(__name__)

__all__ = ["ImageShipper", "Shipped", "ShipError", "parse_node_engines"]

ENGINE_TIMEOUT = 30.0     # an engine call that says nothing for this long is given up (see the swarm recipe)
COPY_TIMEOUT = 1800.0     # one save | load of one image to one node


class ShipError(Exception):
    """An image could not be put where replicas need it (the message names the node or registry)."""


@dataclass(frozen=True)
class Shipped:
    image: str                       # the reference services use
    excluded: tuple[str, ...] = ()   # node ids the image cannot reach (placement constraints "node.id!=...")


def parse_node_engines(items: list[str]) -> dict[str, str]:
    """``["swnode2=unix:///s/node2.sock"]`` -> ``{"swnode2": "unix:///s/node2.sock"}``; ValueError naming a bad one.

    >>> parse_node_engines(["gpu-box=tcp://10.0.0.7:2376"])
    {'gpu-box': 'tcp://10.0.0.7:2376'}
    """
    out: dict[str, str] = {}
    for item in items:
        name, sep, url = item.partition("=")
        if not sep or not name or not url.startswith(("unix://", "tcp://", "http://", "https://")):
            raise ValueError(f"--node-engine {item!r} must be NODE=URL, the node's hostname and its engine's "
                             "address (unix:///path.sock or tcp://host:port)")
        if name in out:
            raise ValueError(f"--node-engine names node {name!r} twice")
        out[name] = url
    return out


def registry_ref(registry: str, tag: str) -> str:
    """``registry_ref("10.0.0.1:5000", "chalkd-img:ab12") == "10.0.0.1:5000/chalkd-img:ab12"``."""
    return f"{registry.rstrip('/')}/{tag}"


class ImageShipper:
    def __init__(self, manager: aiodocker.Docker, *, registry: str | None, node_engines: Mapping[str, str],
                 daemon_node: str = "") -> None:
        self.manager = manager
        self.registry = registry
        self.node_engines = dict(node_engines)
        self.daemon_node = daemon_node      # the node id whose engine builds: it has every image already
        self._engines: dict[str, aiodocker.Docker] = {}
        self._copied: set[tuple[str, str]] = set()   # (node name, image id) done this run
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._warned: set[tuple[str, str]] = set()

    def describe(self) -> str:
        """How images reach nodes, for the log and ``chalkd nodes``."""
        if self.registry:
            return f"images are pushed to the registry {self.registry}; nodes pull them"
        if self.node_engines:
            return ("images are copied with docker save | load to " + ", ".join(sorted(self.node_engines))
                    + "; other nodes only run replicas if they already have them")
        return "images stay on the daemon's node (no --registry, no --node-engine): replicas run there only"

    async def ship(self, tag: str, image_id: str = "") -> Shipped:
        """Make ``tag`` (built on the manager's engine) reachable; returns the reference to run and the nodes
        left out. Raises ShipError."""
        if self.registry:
            return Shipped(await self._push(tag))
        nodes = await self._nodes()
        excluded = []
        targets = []
        for node_id, (hostname, state) in nodes.items():
            if node_id == self.daemon_node:
                continue
            if hostname in self.node_engines and state == "ready":
                targets.append((node_id, hostname))
            else:
                excluded.append(node_id)
                why = (f"it is {state}" if hostname in self.node_engines else
                       f"there is no --registry and no --node-engine {hostname}=URL to copy images to it")
                if (hostname, why) not in self._warned:
                    self._warned.add((hostname, why))
                    log.warning("node %s gets no replicas of image %s: %s", hostname, tag, why)
        # A node whose engine fails is left out of this image's placement, not a failure of the function:
        # the others (the daemon's node at least) can still run it.
        results = await asyncio.gather(*(self._copy(h, tag, image_id or tag) for _, h in targets),
                                       return_exceptions=True)
        for (node_id, hostname), result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("node %s gets no replicas of image %s: %s", hostname, tag, result)
                excluded.append(node_id)
        return Shipped(tag, tuple(excluded))

    async def _nodes(self) -> dict[str, tuple[str, str]]:
        """``{node id: (hostname, state)}``."""
        try:
            nodes = await asyncio.wait_for(self.manager.nodes.list(), ENGINE_TIMEOUT)
        except (DockerError, TimeoutError) as exc:
            raise ShipError(f"cannot list the swarm's nodes: {exc}") from None
        return {n["ID"]: ((n.get("Description") or {}).get("Hostname", n["ID"]),
                          (n.get("Status") or {}).get("State", "")) for n in nodes}

    async def _push(self, tag: str) -> str:
        assert self.registry
        repo, _, version = tag.partition(":")
        ref = registry_ref(self.registry, tag)
        try:
            await asyncio.wait_for(self.manager.images.tag(tag, registry_ref(self.registry, repo), tag=version),
                                   ENGINE_TIMEOUT)
            # X-Registry-Auth must be present even for a registry with no auth.
            async for line in self.manager.images.push(registry_ref(self.registry, repo), tag=version, stream=True,
                                                       auth={}):
                if "error" in line:
                    raise ShipError(f"pushing {ref} failed: {line.get('error')}")
        except DockerError as exc:
            raise ShipError(f"pushing {ref} to --registry {self.registry} failed: {exc.message}") from None
        except TimeoutError:
            raise ShipError(f"tagging {ref} timed out after {ENGINE_TIMEOUT:g}s") from None
        log.info("pushed %s", ref)
        return ref

    def _engine(self, hostname: str) -> aiodocker.Docker:
        engine = self._engines.get(hostname)
        if engine is None:
            engine = self._engines[hostname] = aiodocker.Docker(url=self.node_engines[hostname])
        return engine

    async def _copy(self, hostname: str, tag: str, image_id: str) -> None:
        key = (hostname, image_id)
        if key in self._copied:
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key in self._copied:
                return
            engine = self._engine(hostname)
            try:
                have = await asyncio.wait_for(engine.images.inspect(tag), ENGINE_TIMEOUT)
                if not image_id or have.get("Id") == image_id:
                    self._copied.add(key)
                    return
            except DockerError:
                # The same bytes under another tag (the same image built for another spec): a tag, no copy.
                if image_id and image_id != tag and await self._tag_existing(engine, image_id, tag):
                    self._copied.add(key)
                    return
            except (OSError, aiohttp.ClientError) as exc:
                raise ShipError(f"node {hostname}'s engine ({self.node_engines[hostname]}) cannot be reached: "
                                f"{exc}") from None
            except TimeoutError:
                raise ShipError(f"node {hostname}'s engine ({self.node_engines[hostname]}) did not answer within "
                                f"{ENGINE_TIMEOUT:g}s") from None
            try:
                await asyncio.wait_for(self._save_load(engine, tag), COPY_TIMEOUT)
            except DockerError as exc:
                raise ShipError(f"copying image {tag} to node {hostname} failed: {exc.message}") from None
            except TimeoutError:
                raise ShipError(f"copying image {tag} to node {hostname} took over {COPY_TIMEOUT:g}s") from None
            except (OSError, aiohttp.ClientError) as exc:
                raise ShipError(f"copying image {tag} to node {hostname} failed: {exc}") from None
            self._copied.add(key)
            log.info("copied image %s to node %s (docker save | load)", tag, hostname)

    @staticmethod
    async def _tag_existing(engine: aiodocker.Docker, image_id: str, tag: str) -> bool:
        repo, _, version = tag.partition(":")
        try:
            await asyncio.wait_for(engine.images.inspect(image_id), ENGINE_TIMEOUT)
            await asyncio.wait_for(engine.images.tag(image_id, repo, tag=version), ENGINE_TIMEOUT)
            return True
        except (DockerError, TimeoutError):
            return False

    async def _save_load(self, engine: aiodocker.Docker, tag: str) -> None:
        async with self.manager.images.export_image(tag) as tar:
            async def chunks() -> AsyncIterator[bytes]:
                while chunk := await tar.read(1 << 20):
                    yield chunk
            reply = await engine.images.import_image(chunks())
        for line in reply if isinstance(reply, list) else []:
            if isinstance(line, dict) and line.get("error"):
                raise ShipError(f"loading {tag}: {line['error']}")
            if isinstance(line, str) and '"error"' in line:
                with contextlib.suppress(ValueError):
                    raise ShipError(f"loading {tag}: {json.loads(line).get('error')}")

    async def close(self) -> None:
        for engine in self._engines.values():
            with contextlib.suppress(Exception):
                await engine.close()
        self._engines.clear()
