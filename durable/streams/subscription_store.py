"""Subscriptions in PostgreSQL (protocol 6): create or re-confirm, read, delete (tombstone) and explicit
membership. Links to streams are kept by the subscription (backfill at creation) and by triggers on
``streams`` (a new matching stream is linked at its start, so its first append is pending work); see
migration 0005. The two serialize on the schema's link lock (migration 0006): every transaction here
that writes links or changes which subscriptions are live takes it exclusively first (``sub_link_lock``,
before any row lock, so no lock-order deadlock), the triggers take it shared, so a stream created
concurrently with a subscription is linked whichever commits first. Wakes, leases and acks are
:mod:`durable.streams.wakes`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .._pg import Conn, Record
from ..sql import Q
from .errors import SubscriptionError
from .offsets import format_offset
from .store import Store
from .subscriptions import Config, full_path, glob_regex, relative_path


def not_found(root: str, name: str) -> SubscriptionError:
    """404 NOT_FOUND for subscription ``name`` under ``root``."""
    return SubscriptionError(404, "NOT_FOUND", f"no subscription {name!r} under {root or '/'}")


@dataclass(frozen=True, slots=True)
class Link:
    """One stream cursor of a subscription."""

    path: str  # full stream path
    explicit: bool
    glob: bool
    acked: int
    tail: int | None  # None: the stream does not exist (yet)

    @property
    def pending(self) -> bool:
        """Whether the stream has messages past the acknowledged offset."""
        return self.tail is not None and self.tail > self.acked

    def json(self, root: str, *, with_tail: bool = False) -> dict[str, object]:
        """The link as the protocol shows it (paths relative to ``root``; the tail too with ``with_tail``)."""
        out: dict[str, object] = {
            "path": relative_path(root, self.path),
            "link_type": "explicit" if self.explicit else "glob",
            "acked_offset": format_offset(self.acked),
        }
        if with_tail:
            tail = self.tail if self.tail is not None else self.acked
            out["tail_offset"] = format_offset(tail)
            out["has_pending"] = self.pending
        return out

    @classmethod
    def of(cls, row: Record) -> Link:
        """The link of a ``sub_links`` row."""
        return cls(row["path"], row["explicit"], row["glob"], row["acked_pos"], row["tail"])


@dataclass(frozen=True, slots=True)
class Subscription:
    """A subscription row (configuration and wake state)."""

    id: int
    root: str
    name: str
    type: str
    pattern: str | None
    streams: tuple[str, ...]
    webhook_url: str | None
    wake_stream: str | None
    wake_path: str | None
    lease_ttl_ms: int
    description: str | None
    origin: str
    created_at: datetime
    deleted: bool
    generation: int
    wake_id: str | None
    holder: str | None
    lease_active: bool
    failed_attempts: int
    last_error: str | None

    @property
    def status(self) -> str:
        """``failed`` after a failed delivery attempt, else ``active``."""
        return "failed" if self.failed_attempts > 0 else "active"

    @classmethod
    def of(cls, row: Record) -> Subscription:
        """The subscription of a ``sub_get`` / ``sub_lock`` row."""
        return cls(
            row["id"],
            row["root"],
            row["name"],
            row["type"],
            row["pattern"],
            tuple(row["streams"]),
            row["webhook_url"],
            row["wake_stream"],
            row["wake_path"],
            row["lease_ttl_ms"],
            row["description"],
            row["origin"],
            row["created_at"],
            row["deleted_at"] is not None,
            row["generation"],
            row["wake_id"],
            row["holder"],
            row["lease_active"],
            row["failed_attempts"],
            row["last_error"],
        )


@dataclass(frozen=True, slots=True)
class View:
    """A subscription with its links (what GET and PUT answer)."""

    sub: Subscription
    links: list[Link]


async def links_of(conn: Conn, sub_id: int) -> list[Link]:
    """The stream links of subscription ``sub_id``."""
    return [Link.of(r) for r in await conn.fetch(Q.sub_links, sub_id)]


async def live(conn: Conn, root: str, name: str, *, lock: bool = True) -> Subscription:
    """The subscription (locked when asked); 404 when missing or tombstoned."""
    row = await conn.fetchrow(Q.sub_lock if lock else Q.sub_get, root, name)
    if row is None or row["deleted_at"] is not None:
        raise not_found(root, name)
    return Subscription.of(row)


class SubscriptionStore:
    """Subscriptions in PostgreSQL (protocol 6-7): create or match (put), get, delete, link streams."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def put(self, root: str, name: str, config: Config, origin: str) -> tuple[View, bool]:
        """Create (True) or re-confirm an identical configuration (False); 409 for a different one."""
        digest = config.hash()
        regex = glob_regex(root, config.pattern) if config.pattern is not None else None
        wake_path = full_path(root, config.wake_stream) if config.wake_stream is not None else None
        values = (
            config.type,
            config.pattern,
            regex,
            list(config.streams),
            config.webhook_url,
            config.wake_stream,
            wake_path,
            config.lease_ttl_ms,
            config.description,
            digest,
            origin,
        )
        for _ in range(3):
            async with self.store.transaction() as conn:
                await conn.execute(Q.sub_link_lock)
                row = await conn.fetchrow(Q.sub_lock, root, name)
                if row is not None and row["deleted_at"] is None:
                    if row["config_hash"] != digest:
                        raise SubscriptionError(
                            409, "SUBSCRIPTION_EXISTS", f"subscription {name!r} exists with a different configuration"
                        )
                    return View(Subscription.of(row), await links_of(conn, row["id"])), False
                if row is None:
                    sub_id = await conn.fetchval(Q.sub_insert, root, name, *values)
                    if sub_id is None:
                        continue  # created concurrently: compare with the winner
                else:
                    sub_id = row["id"]
                    await conn.execute(Q.sub_revive, sub_id, name, *values)
                if regex is not None:
                    await conn.execute(Q.sub_link_glob, sub_id, regex, wake_path)
                if config.streams:
                    await conn.execute(Q.sub_link_explicit, sub_id, [full_path(root, s) for s in config.streams])
                created = await conn.fetchrow(Q.sub_get, root, name)
                assert created is not None
                return View(Subscription.of(created), await links_of(conn, sub_id)), True
        raise SubscriptionError(409, "SUBSCRIPTION_EXISTS", f"subscription {name!r} is being created concurrently")

    async def get(self, root: str, name: str) -> View:
        """Subscription ``name`` under ``root`` with its links; 404 when missing or deleted."""
        async with self.store.transaction() as conn:
            sub = await live(conn, root, name, lock=False)
            return View(sub, await links_of(conn, sub.id))

    async def delete(self, root: str, name: str) -> None:
        """Tombstone: its wake, lease and links go; callbacks, acks and releases then fail (404)."""
        async with self.store.transaction() as conn:
            await conn.execute(Q.sub_link_lock)
            row = await conn.fetchrow(Q.sub_lock, root, name)
            if row is None:
                raise not_found(root, name)
            if row["deleted_at"] is None:
                await conn.execute(Q.sub_tombstone, row["id"])

    async def add_streams(self, root: str, name: str, streams: list[str]) -> None:
        """Explicit links at each stream's current tail; already linked ones are left as they are."""
        async with self.store.transaction() as conn:
            await conn.execute(Q.sub_link_lock)
            sub = await live(conn, root, name)
            paths = [full_path(root, s) for s in streams]
            if sub.wake_path in paths:
                raise SubscriptionError(400, "INVALID_REQUEST", "a subscription cannot link its own wake stream")
            await conn.execute(Q.sub_link_explicit, sub.id, paths)

    async def remove_stream(self, root: str, name: str, stream: str) -> None:
        """Remove the explicit link (idempotent); a glob link of the same stream stays."""
        async with self.store.transaction() as conn:
            sub = await live(conn, root, name)
            await conn.execute(Q.sub_unlink_explicit, sub.id, full_path(root, stream))
