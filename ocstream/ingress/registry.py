"""The network registry in Redis: which networks are followed, where their ingress stands, and
their runtime metadata by spec version.

==========================================  ======  =============================================
key                                         type    content
==========================================  ======  =============================================
``{prefix}networks``                        hash    network URN -> JSON :class:`NetworkRecord`
``{prefix}metadata:{urn}:{specVersion}``    string  raw runtime metadata bytes
==========================================  ======  =============================================
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from ..transport.keys import DEFAULT_PREFIX


class NetworkRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    relay: str | None = None
    genesis_hash: str | None = None
    spec_version: int | None = None
    #: How the network renders addresses (``System.SS58Prefix``); None: shown as hex keys.
    ss58_prefix: int | None = None
    #: The last block published to the blocks topic (the ingress resumes after it).
    tip_number: int | None = None
    #: When the ingress last published a block of this network (Unix seconds).
    updated_at: float | None = None
    tip_hash: str | None = None
    #: The first block of the current unbroken stretch the ingress published (a start with no
    #: tip, or a gap skipped with recovery off), and its timestamp (ms): receipts before it
    #: were never seen (``ocstream/xcm/coverage.py``).
    covered_from: int | None = None
    covered_from_timestamp: int | None = None


class NetworkRegistry:
    def __init__(self, client: Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    @property
    def networks_key(self) -> str:
        return f"{self.prefix}networks"

    def metadata_key(self, network: str, spec_version: int) -> str:
        return f"{self.prefix}metadata:{network}:{spec_version}"

    async def get(self, network: str) -> NetworkRecord | None:
        raw = await self.client.hget(self.networks_key, network)
        return None if raw is None else NetworkRecord.model_validate_json(raw)

    async def all(self) -> dict[str, NetworkRecord]:
        raw = await self.client.hgetall(self.networks_key)
        return {
            (k.decode() if isinstance(k, bytes) else k): NetworkRecord.model_validate_json(v)
            for k, v in raw.items()
        }

    async def declare(self, record: NetworkRecord) -> bool:
        """Add ``record`` unless the network is already registered (an ingress's record, with
        its tip, wins); returns whether it was added."""
        return bool(
            await self.client.hsetnx(self.networks_key, record.id, record.model_dump_json())
        )

    async def put(self, record: NetworkRecord) -> None:
        await self.client.hset(self.networks_key, record.id, record.model_dump_json())

    async def metadata(self, network: str, spec_version: int) -> bytes | None:
        raw = await self.client.get(self.metadata_key(network, spec_version))
        return None if raw is None else raw.encode() if isinstance(raw, str) else bytes(raw)

    async def has_metadata(self, network: str, spec_version: int) -> bool:
        return bool(await self.client.exists(self.metadata_key(network, spec_version)))

    async def put_metadata(self, network: str, spec_version: int, metadata: bytes) -> None:
        await self.client.set(self.metadata_key(network, spec_version), metadata)
