"""Subscription delivery state (protocol 7): wakes, generation fencing, leases, acks.

A subscription is idle when it has no wake in flight (``wake_id`` NULL). Pending work on an idle
subscription issues a wake: ``generation`` + 1 and a new ``wake_id``. A webhook wake holds a lease from
issue (extended by callbacks); a pull-wake wake writes wake events to the wake stream (in the same
transaction) and holds a lease once a worker claims it (extended by acks without ``done``). Callback,
ack and release are accepted only with a token of this subscription and the current generation and wake
(else ``409 FENCED``); ``done`` (or release) ends the wake, and an expired lease is cleared by the
sweep. Each transition is one transaction holding the subscription's row lock.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, replace

from .._pg import Conn
from ..errors import DurableError
from ..sql import Q
from .errors import BadRequest, SubscriptionError, fenced, invalid
from .offsets import format_offset, parse_offset
from .store import Store, is_json, json_message
from .subscription_store import Link, Subscription, links_of, live
from .subscriptions import check_relative, full_path, relative_path
from .text import MAX_BIGINT, load_json
from .tokens import CALLBACK, CLAIM, Token, issue, verify


@dataclass(frozen=True, slots=True)
class Wake:
    """An issued (or claimed) wake: the subscription, its generation and wake id, the stream snapshot
    and the token (``callback_token`` of a webhook wake, ``token`` of a claim)."""

    sub: Subscription
    generation: int
    wake_id: str
    links: list[Link]
    token: str

    def streams_json(self) -> list[dict[str, object]]:
        """The wake's streams as the protocol lists them (with their tails)."""
        return [link.json(self.sub.root, with_tail=True) for link in self.links]


@dataclass(frozen=True, slots=True)
class AckRequest:
    """The body of a callback, ack or release."""

    wake_id: str
    generation: int
    acks: list[tuple[str, str]]  # (root-relative stream, offset)
    done: bool

    @classmethod
    def parse(cls, body: bytes, *, release: bool = False) -> AckRequest:
        """The request of a JSON body; 400 INVALID_REQUEST naming what is wrong."""
        try:
            data = load_json(body) if body.strip() else None
        except ValueError as exc:
            raise invalid(str(exc)) from None
        if not isinstance(data, dict):
            raise invalid("body must be a JSON object")
        wake_id, generation = data.get("wake_id"), data.get("generation")
        if not isinstance(wake_id, str) or not wake_id:
            raise invalid("wake_id (string) is required")
        if not isinstance(generation, int) or isinstance(generation, bool) or not 0 <= generation <= MAX_BIGINT:
            raise invalid("generation (non-negative integer up to 2^63-1) is required")
        acks: list[tuple[str, str]] = []
        raw_acks = [] if release else data.get("acks", [])
        if raw_acks is None:
            raw_acks = []
        if not isinstance(raw_acks, list):
            raise invalid("acks must be an array of {stream, offset}")
        for ack in raw_acks:
            if not isinstance(ack, dict) or not isinstance(ack.get("offset"), str):
                raise invalid('each ack is {"stream": path, "offset": offset}')
            acks.append((check_relative(ack.get("stream"), "ack stream"), ack["offset"]))
        done = data.get("done", False)
        if not isinstance(done, bool):
            raise invalid("done must be a boolean")
        return cls(wake_id, generation, acks, done)


def new_wake_id() -> str:
    """A fresh, unguessable wake id (``w_`` + 16 base64url characters)."""
    return "w_" + secrets.token_urlsafe(12)


class NoWakeStream(DurableError):
    """The wake stream of a pull-wake subscription cannot take wake events (missing, deleted, closed)."""


class Wakes:
    """Wakes of subscriptions: what the dispatcher sends, and the claim / ack / release of their holders,
    fenced by generation and wake id, authorized by signed tokens."""

    def __init__(self, store: Store, token_key: bytes) -> None:
        self.store = store
        self.token_key = token_key

    @classmethod
    async def load(cls, store: Store) -> Wakes:
        """With the schema's token key (made on first use and kept: tokens survive restarts)."""
        key = await store.one("fetchval", Q.token_key, secrets.token_bytes(32))
        return cls(store, bytes(key))

    # -- the dispatcher's side ----------------------------------------------------------------------
    async def any_live(self) -> bool:
        """Whether the schema has any live subscription (the dispatcher skips its lookups otherwise)."""
        return bool(await self.store.one("fetchval", Q.sub_any_live))

    async def wakeable(self, stream_ids: list[int] | None) -> list[int]:
        """Idle subscriptions with pending work (linked to ``stream_ids``, or all when None)."""
        rows = await self.store.one("fetch", Q.sub_wakeable, stream_ids)
        return [r["id"] for r in rows]

    async def expire_leases(self) -> list[int]:
        """Clear expired leases (holder and wake); the subscriptions concerned."""
        return [r["id"] for r in await self.store.one("fetch", Q.sub_expire_leases)]

    async def issue(self, sub_id: int) -> Wake | None:
        """A new wake for an idle subscription with pending work (None: not idle, not due, nothing
        pending, or its wake stream cannot take the wake event)."""
        async with self.store.transaction() as conn:
            row = await conn.fetchrow(Q.sub_lock_id, sub_id)
            if row is None or row["deleted_at"] is not None or row["wake_id"] is not None or not row["due"]:
                return None
            sub = Subscription.of(row)
            links = await links_of(conn, sub.id)
            if not any(link.pending for link in links):
                return None
            try:
                return await self._new_wake(conn, sub, links)
            except NoWakeStream as exc:
                if str(exc) != sub.last_error:
                    await conn.execute(Q.sub_note_error, sub.id, str(exc))
                return None

    async def _new_wake(self, conn: Conn, sub: Subscription, links: list[Link], *, holder: str | None = None) -> Wake:
        generation, wake_id = sub.generation + 1, new_wake_id()
        if sub.type == "pull-wake" and holder is None:
            await self._write_wake_events(conn, sub, generation, [lk for lk in links if lk.pending])
        lease = sub.type == "webhook" or holder is not None
        await conn.execute(Q.sub_set_wake, sub.id, generation, wake_id, holder, lease)
        if sub.last_error is not None and sub.type == "pull-wake":
            await conn.execute(Q.sub_note_error, sub.id, None)
        use = CLAIM if holder is not None else CALLBACK
        token = issue(self.token_key, Token(sub.id, generation, wake_id, use))
        return Wake(sub, generation, wake_id, links, token)

    async def _write_wake_events(self, conn: Conn, sub: Subscription, generation: int, pending: list[Link]) -> None:
        """One wake event per pending stream, appended to the wake stream in this transaction."""
        assert sub.wake_path is not None
        stream = await conn.fetchrow(Q.stream_get, sub.wake_path)
        if stream is None or stream["soft_deleted"] or stream["expired"]:
            raise NoWakeStream(f"wake stream {sub.wake_stream!r} does not exist")
        ts = int(time.time() * 1000)
        events = [
            json.dumps(
                {
                    "type": "wake",
                    "subscription_id": sub.name,
                    "stream": relative_path(sub.root, link.path),
                    "generation": generation,
                    "ts": ts,
                },
                separators=(",", ":"),
            )
            for link in pending
        ]
        content_type = stream["content_type"]
        data = json_message(events) if is_json(content_type) else "".join(e + "\n" for e in events).encode()
        row = await conn.fetchrow(
            Q.stream_append,
            sub.wake_path,
            data,
            content_type,
            False,
            None,
            None,
            None,
            False,
            None,
            None,
            self.store.channel,
            None,
            None,
        )
        assert row is not None
        if row["verdict"] != "accepted":
            raise NoWakeStream(f"wake stream {sub.wake_stream!r} refused the wake event: {row['verdict']}")

    async def auto_ack(self, wake: Wake) -> bool:
        """A webhook answered ``{"done": true}``: ack the wake's snapshot and end the wake (False when
        the wake is no longer current: fenced, expired or deleted)."""
        async with self.store.transaction() as conn:
            row = await conn.fetchrow(Q.sub_lock_id, wake.sub.id)
            if (
                row is None
                or row["deleted_at"] is not None
                or row["generation"] != wake.generation
                or row["wake_id"] != wake.wake_id
                or not row["lease_active"]
            ):
                return False
            pending = [link for link in wake.links if link.pending]
            await conn.execute(Q.sub_apply_acks, wake.sub.id, [lk.path for lk in pending], [lk.tail for lk in pending])
            await conn.execute(Q.sub_set_wake, wake.sub.id, wake.generation, None, None, False)
            return True

    async def delivered(self, wake: Wake) -> None:
        """Record that ``wake``'s webhook delivery succeeded (the subscription is no longer failing)."""
        await self.store.one("execute", Q.sub_delivered, wake.sub.id, wake.generation)

    async def delivery_failed(self, wake: Wake, delay_ms: int, error: str) -> None:
        """Record a failed webhook delivery of ``wake``: it is dropped, the next wake waits ``delay_ms``
        (backoff), ``error`` is kept (its first 500 characters)."""
        await self.store.one(
            "execute", Q.sub_delivery_failed, wake.sub.id, wake.generation, wake.wake_id, delay_ms, error[:500]
        )

    # -- the worker's side --------------------------------------------------------------------------
    async def claim(self, root: str, name: str, worker: str) -> Wake:
        """Claim a pull-wake subscription: the wake in flight, or a new one when work is pending."""
        async with self.store.transaction() as conn:
            sub = await live(conn, root, name)
            if sub.type != "pull-wake":
                raise invalid(f"subscription {name!r} is a {sub.type} subscription: only pull-wake is claimed")
            if sub.holder is not None and sub.lease_active:
                raise SubscriptionError(
                    409,
                    "ALREADY_CLAIMED",
                    f"claimed by {sub.holder!r}",
                    current_holder=sub.holder,
                    generation=sub.generation,
                )
            links = await links_of(conn, sub.id)
            if sub.wake_id is None or sub.holder is not None:  # idle, or an expired claim
                if not any(link.pending for link in links):
                    raise SubscriptionError(409, "NO_PENDING_WORK", f"subscription {name!r} has no pending work")
                return await self._new_wake(conn, sub, links, holder=worker)
            await conn.execute(Q.sub_set_wake, sub.id, sub.generation, sub.wake_id, worker, True)
            token = issue(self.token_key, Token(sub.id, sub.generation, sub.wake_id, CLAIM))
            return Wake(sub, sub.generation, sub.wake_id, links, token)

    async def ack(
        self, root: str, name: str, authorization: str | None, req: AckRequest, *, use: str = CLAIM
    ) -> tuple[bool, int]:
        """Ack (or, for webhooks, call back): apply the acks; ``done`` ends the wake, otherwise the
        lease is extended (heartbeat). Returns ``next_wake`` (work is still pending after ``done``; a
        pull-wake subscription has its new wake event already) and the subscription's row id."""
        async with self.store.transaction() as conn:
            sub = await live(conn, root, name)
            self._check_current(sub, verify(self.token_key, authorization, sub.id, use), req, use)
            links = await self._apply_acks(conn, sub, req.acks)
            if not req.done:
                await conn.execute(Q.sub_extend_lease, sub.id)
                return False, sub.id
            await conn.execute(Q.sub_set_wake, sub.id, sub.generation, None, None, False)
            pending = any(link.pending for link in links)
            if pending and sub.type == "pull-wake":
                await self._rewake(conn, sub, links)
            return pending, sub.id

    async def release(self, root: str, name: str, authorization: str | None, req: AckRequest) -> None:
        """Give the claim up without acking; pending work gets a new wake event."""
        async with self.store.transaction() as conn:
            sub = await live(conn, root, name)
            self._check_current(sub, verify(self.token_key, authorization, sub.id, CLAIM), req, CLAIM)
            await conn.execute(Q.sub_set_wake, sub.id, sub.generation, None, None, False)
            links = await links_of(conn, sub.id)
            if any(link.pending for link in links):
                await self._rewake(conn, sub, links)

    async def _rewake(self, conn: Conn, sub: Subscription, links: list[Link]) -> None:
        idle = replace(sub, wake_id=None, holder=None, lease_active=False)
        try:
            await self._new_wake(conn, idle, links)
        except NoWakeStream as exc:
            await conn.execute(Q.sub_note_error, sub.id, str(exc))  # the sweep tries again

    @staticmethod
    def _check_current(sub: Subscription, token: Token, req: AckRequest, use: str) -> None:
        if token.generation != sub.generation or token.wake_id != sub.wake_id:
            raise fenced(f"the token is for generation {token.generation}, which is no longer current")
        if req.generation != sub.generation or req.wake_id != sub.wake_id:
            raise fenced(f"generation {req.generation} / wake {req.wake_id} is not the current wake")
        if not sub.lease_active or (use == CLAIM and sub.holder is None):
            raise fenced("the lease of this wake has expired")

    async def _apply_acks(self, conn: Conn, sub: Subscription, acks: list[tuple[str, str]]) -> list[Link]:
        links = await links_of(conn, sub.id)
        if not acks:
            return links
        by_path = {link.path: link for link in links}
        paths, positions = [], []
        for stream, offset in acks:
            link = by_path.get(full_path(sub.root, stream))
            if link is None:
                raise invalid(f"stream {stream!r} is not linked to subscription {sub.name!r}")
            if link.tail is None:
                raise invalid(f"stream {stream!r} does not exist")
            try:
                position = parse_offset(offset)
            except BadRequest:
                raise invalid(f"invalid offset {offset!r} for stream {stream!r}") from None
            if position > link.tail:
                raise invalid(f"offset {offset!r} is beyond the tail of stream {stream!r} ({format_offset(link.tail)})")
            paths.append(link.path)
            positions.append(position)
        await conn.execute(Q.sub_apply_acks, sub.id, paths, positions)
        return await links_of(conn, sub.id)
