"""The client API: connect, insert, insert_many, signal, get, history, cancel, retry.

async with durable.connect() as db:          # no DSN: the embedded server
    iid = await db.insert(Checkout, {"order": 42}, partition_key="order:42")
    await db.signal(iid, "payment_confirmed", {"amount": 100}, dedup_key="evt-7")
"""

from __future__ import annotations

import math
import os
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Unpack

from . import codec, tracing
from ._pg import Pool, UniqueViolationError, asyncio_loop, check_pooler
from .clock import Clock, DatabaseClock
from .embedded import resolve_dsn, supervised
from .errors import (
    DefinitionError,
    InstanceCancelled,
    InstanceFailed,
    NoSuchInstance,
    NotDeliverable,
    UniqueKeyOccupied,
    UniqueKeyTaken,
)
from .filters import FilterFields, InstanceFilter
from .inserts import Handoff, InsertColumns
from .limits import MAX_VALUE_BYTES, check_id, check_int, check_text
from .machine import Machine, Registry
from .migrate import LATEST_VERSION, check_schema_name, migrate, migrated_version
from .outcomes import Insert
from .records import Event, Instance
from .results import RECHECK, Watchers, announce, check_timeout
from .sql import Q

if TYPE_CHECKING:
    from .ops import Bulk, Page, TailEvent
    from .values import Values

DEFAULT_SCHEMA = "durable"
ENV_POOLER = "DURABLE_POOLER"  # "transaction": the DSN goes through PgBouncer in transaction mode
ENV_LISTEN_DSN = "DURABLE_LISTEN_DSN"  # a direct connection for LISTEN (needed behind such a pooler)
ON_CONFLICT = ("none", "existing", "raise")  # insert(..., on_conflict=): when the unique key is taken
KEY_RACES = 5  # inserts tried while the unique key's holder keeps leaving its scope under on_conflict


class Database:
    """A connection pool to one durable schema. Create with :func:`connect`."""

    def __init__(self, pool: Pool, *, clock: Clock, registry: Registry, max_value_bytes: int = MAX_VALUE_BYTES) -> None:
        self.pool = pool
        # the size limit of one encoded state, payload or result (ValueTooLarge past it)
        self.max_value_bytes = check_int(max_value_bytes, "max_value_bytes", (1, 2**28))
        self.clock = clock
        self.registry = registry
        self._wakers: dict[str, list[Callable[[], None]]] = defaultdict(list)
        self._handoffs: dict[str, list[Handoff]] = defaultdict(list)
        self.notify = True  # inserts send a NOTIFY hint so other processes' runtimes wake at once
        self.token = secrets.token_hex(4)  # names this Database's hints (its own runtimes skip them)
        self.watchers = Watchers(self)  # this process's result() waiters (durable/results.py)
        self.result_recheck = RECHECK  # seconds between a result() waiter's own re-reads (under the hints)
        self._claims: Any = None  # the explicit pipeline (claims property), made on first use

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel of this schema's wake-up hints."""
        return f"durable_{self.pool.schema}"[:63]  # deliver_signal computes the same from current_schema()

    @property
    def schema(self) -> str:
        """The PostgreSQL schema this Database works in."""
        return self.pool.schema

    # -- local wake-ups: an insert in this process wakes this process's schedulers at once
    def add_waker(self, queue: str, wake: Callable[[], None]) -> None:
        """Call ``wake()`` when an insert or signal of this process makes a row of ``queue`` due (a local
        runtime's scheduler registers itself)."""
        self._wakers[queue].append(wake)

    def remove_waker(self, queue: str, wake: Callable[[], None]) -> None:
        """Undo :meth:`add_waker` (a no-op when it is not registered)."""
        if wake in self._wakers.get(queue, []):
            self._wakers[queue].remove(wake)

    def add_handoff(self, queue: str, handoff: Handoff) -> None:
        """Let ``handoff`` (an idle local scheduler of ``queue``) take due rows of this Database's inserts in
        the insert's own statement."""
        self._handoffs[queue].append(handoff)

    def remove_handoff(self, queue: str, handoff: Handoff) -> None:
        """Undo :meth:`add_handoff` (a no-op when it is not registered)."""
        if handoff in self._handoffs.get(queue, []):
            self._handoffs[queue].remove(handoff)

    def _handoff_for(self, queues: list[str]) -> tuple[Handoff | None, str | None, int]:
        """An idle local scheduler of one of the batch's queues, and how many rows it takes."""
        for q in dict.fromkeys(queues):
            for h in self._handoffs.get(q, ()):
                take = h.offer()
                if take > 0:
                    return h, q, take
        return None, None, 0

    def wake(self, queues: Iterable[str | None]) -> None:
        """Wake this process's schedulers of ``queues`` (None entries are skipped)."""
        for q in set(queues):
            if q is not None:
                for w in self._wakers.get(q, ()):
                    w()

    async def migrate(self) -> list[int]:
        """Bring the schema up to date; returns the versions applied (see :func:`durable.migrate`)."""
        return await migrate(self.pool)

    async def migrated_version(self) -> int:
        """The schema's migration version (0: not migrated)."""
        return await migrated_version(self.pool)

    async def insert(
        self,
        machine: type[Machine] | str,
        state: Any = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        partition_key: str | None = None,
        unique_key: str | None = None,
        unique_scope: Sequence[str] | None = None,
        schedule_at: datetime | None = None,
        schedule_in: float | timedelta | None = None,
        step: str | None = None,
        version: int | None = None,
        on_conflict: str = "none",
        attributes: Mapping[str, str] | None = None,
    ) -> int | None:
        """Insert one instance; returns its id. When another instance holds ``unique_key`` in its scope,
        ``on_conflict`` says what happens: ``"none"`` returns None, ``"existing"`` returns the holder's id
        and ``"raise"`` raises UniqueKeyTaken (its ``holder_id``). Nothing is inserted in either case.
        ``attributes``: small string->string metadata (at most durable.limits.MAX_ATTRIBUTES pairs) to
        filter on (``db.query(attributes=...)``, ``durable ls --attr k=v``), on every step's span as
        ``durable.attr.<name>``."""
        if on_conflict not in ON_CONFLICT:
            raise ValueError(f"on_conflict must be one of {', '.join(map(repr, ON_CONFLICT))}, not {on_conflict!r}")
        if on_conflict != "none" and unique_key is None:
            raise ValueError(f"on_conflict={on_conflict!r} without a unique_key (it would be ignored)")
        spec = Insert(
            machine,
            state,
            queue,
            priority,
            partition_key,
            unique_key,
            unique_scope,
            schedule_at,
            schedule_in,
            step,
            version,
            attributes,
        )
        if on_conflict == "none" or unique_key is None:
            return (await self.insert_many([spec]))[0]
        for _ in range(KEY_RACES):
            iid = (await self.insert_many([spec]))[0]
            if iid is not None:
                return iid
            holder = await self.pool.fetchval(Q.key_holder, unique_key)
            if holder is not None:
                if on_conflict == "raise":
                    raise UniqueKeyTaken(unique_key, holder)
                return holder  # type: ignore[no-any-return]
            # the holder left the key's scope between the two statements: the key is free, insert again
        raise UniqueKeyTaken(unique_key, None)  # the key changed hands KEY_RACES times in a row

    @tracing.traced(
        "durable insert", kind=tracing.SpanKind.PRODUCER, before=tracing.insert_attributes, after=tracing.inserted
    )
    async def insert_many(self, specs: Iterable[Insert]) -> list[int | None]:
        """Insert a batch in one statement; per input, the new id or None for a duplicate unique key
        (against existing rows or an earlier row of the same batch)."""
        cols = InsertColumns(self.max_value_bytes)
        for i, spec in enumerate(specs):
            if not isinstance(spec, Insert):
                raise DefinitionError(f"insert_many: item #{i} is {spec!r}, not a durable.Insert")
            cols.add(spec, self.registry, f"insert #{i}")
        if not cols:
            return []
        handoff, handoff_queue, take = self._handoff_for(cols.queue)
        columns = cols.rows()
        # a lone row goes through insert_instance: the same statement for a batch of one, scalar parameters
        one = len(cols) == 1
        try:
            rows = await self.pool.fetch(
                Q.insert_instance if one else Q.insert_instances,
                *([c[0] for c in columns] if one else columns),
                self.clock.now(),
                cols.delay[0] if one else cols.delay,
                self.channel if self.notify else None,
                self.token,
                handoff_queue,
                handoff.worker_id if handoff else None,
                handoff.lease if handoff else None,
                take,
                cols.attributes_json[0] if one else cols.attributes_json,
            )
        except BaseException:
            if handoff is not None:  # committed or not: unknown
                handoff.suspect_orphans()
            raise
        if handoff is not None and not handoff.accept(cols, rows):
            await handoff.give_back(cols, rows)
        inserted = set(rows[0]["inserted"])
        ids = [r["id"] if r["id"] in inserted else None for r in rows]
        self.wake(
            q for q, r, i in zip(cols.queue, rows, ids, strict=True) if i is not None and r["lease_token"] is None
        )
        return ids

    async def signal(
        self,
        instance_id: int | None = None,
        name: str | None = None,
        payload: Any = None,
        *,
        key: str | None = None,
        dedup_key: str | None = None,
    ) -> int | None:
        """Deliver a durable signal to the instance ``instance_id`` or, with ``key=``, to the instance that
        unique key addresses (see :meth:`by_key`); returns its id, or None when ``dedup_key`` was already
        delivered. Raises NoSuchInstance for an unknown id or key and NotDeliverable for a terminal
        instance."""
        if not isinstance(name, str) or not name:
            raise DefinitionError(f"signal name must be a non-empty string, not {name!r}")
        check_text(name, "signal name")
        if dedup_key is not None:
            check_text(dedup_key, "dedup_key")
        if key is not None or instance_id is None:
            instance_id = await self.by_key(key, instance_id, "signal")
        return await self._deliver(instance_id, name, payload, dedup_key=dedup_key)

    @tracing.traced(
        "durable signal", kind=tracing.SpanKind.PRODUCER, before=tracing.signal_attributes, after=tracing.signalled
    )
    async def _deliver(self, instance_id: int, name: str, payload: Any, *, dedup_key: str | None) -> int | None:
        check_id(instance_id)
        body = codec.encode(payload, f"payload of signal {name!r}", self.max_value_bytes)
        parent, _ = tracing.current_context_headers()
        row = await self.pool.fetchrow(Q.deliver_signal, instance_id, name, body, dedup_key, parent, self.clock.now())
        if row is None:
            raise NoSuchInstance(f"no instance with id {instance_id}")
        if row["signal_id"] is None and row["before"] in ("done", "failed", "cancelled"):
            raise NotDeliverable(f"instance {instance_id} is {row['before']}: signal {name!r} not stored")
        if row["after"] == "runnable":
            self.wake([row["queue"]])
        return row["signal_id"]  # type: ignore[no-any-return]

    async def by_key(self, key: str | None, instance_id: int | None = None, what: str = "by_key") -> int:
        """The id of the instance unique key ``key`` addresses: the one holding the key in its
        unique_scope now, else the most recent one inserted with it (an ended instance, once nobody holds
        the key). NoSuchInstance when no instance ever had it. ``instance_id`` is for the callers that take
        either (``get``, ``signal``, ``result``): exactly one of them must be given."""
        if key is None and instance_id is None:
            raise TypeError(f"{what}: pass an instance_id or key=, not neither")
        if key is not None and instance_id is not None:
            raise TypeError(f"{what}: pass an instance_id or key=, not both")
        if key is None:
            return check_id(instance_id)
        check_text(key, "key")
        row = await self.pool.fetchrow(Q.instance_by_key, key)
        if row is None:
            raise NoSuchInstance(f"no instance with unique key {key!r}")
        return row["id"]  # type: ignore[no-any-return]

    async def get(self, instance_id: int | None = None, *, key: str | None = None) -> Instance:
        """One instance with its inbox and children, by id or by unique key (``key=``, see :meth:`by_key`).
        NoSuchInstance when there is none."""
        if key is not None or instance_id is None:
            instance_id = await self.by_key(key, instance_id, "get")
        check_id(instance_id)
        row = await self.pool.fetchrow(Q.get_instance, instance_id)
        if row is None:
            raise NoSuchInstance(f"no instance with id {instance_id}")
        inbox = await self.pool.fetch(Q.get_inbox, instance_id)
        children = await self.pool.fetch(Q.get_children, instance_id)
        return Instance.from_row(
            row,
            inbox=[{**dict(s), "payload": codec.decode(s["payload"])} for s in inbox],
            children=[
                {**dict(c), "state": codec.decode(c["state"]), "result": codec.decode(c["result"])} for c in children
            ],
        )

    async def history(self, instance_id: int) -> list[Event]:
        """The history of instance ``instance_id``, oldest first (an empty list for an unknown id)."""
        check_id(instance_id)
        rows = await self.pool.fetch(Q.get_history, instance_id)
        return [Event.from_row(r) for r in rows]

    async def cancel(
        self, instance_id: int, reason: str = "cancelled", *, by: str = "operator", limit: int | None = None
    ) -> str:
        """Cancel the instance and every descendant of it that has not ended: an idle one at once, an
        executing one when its step ends (its runtime cancels the step at its next heartbeat). Each
        cancelled child counts once in its parent's join. History records the reason and ``by`` (a
        descendant's ``by`` is the id cancelled). Returns the instance's status after (``executing`` while
        a cancel is pending). TreeTooLarge (nothing changed) when the tree passes ``limit`` instances
        (default durable.ops.CANCEL_LIMIT)."""
        from . import ops

        check_id(instance_id)
        check_text(reason, "cancel reason", max_bytes=self.max_value_bytes, empty=True)
        check_text(by, "cancel by", max_bytes=self.max_value_bytes)
        report = await ops.cancel_tree(
            self, [instance_id], reason, by=by, limit=ops.CANCEL_LIMIT if limit is None else limit
        )
        if instance_id not in report.roots:
            raise NoSuchInstance(f"no instance with id {instance_id}")
        return report.roots[instance_id][1]  # (cancel_tree told result() waiters of every instance it ended)

    async def ended(self, ids: Iterable[int]) -> None:
        """Instances ``ids`` were made terminal by a commit of this process outside a Runtime (a cancel):
        wake this process's :meth:`result` waiters and send other processes the hint."""
        ids = list(ids)
        self.watchers.wake(ids)
        if self.notify:
            await announce(self, ids)

    async def result(
        self, instance_id: int | None = None, timeout: float | timedelta | None = None, *, key: str | None = None
    ) -> Any:
        """Wait until the instance has ended and return its result (done); raise InstanceFailed (its
        ``last_error``) or InstanceCancelled. ``timeout`` seconds (None: no limit; 0: look once) passed
        first: TimeoutError. ``key=`` addresses the instance by its unique key (see :meth:`by_key`; read
        once, then that instance is waited for). Woken by the commit that ends it: a local Runtime's
        flusher or :meth:`cancel` wakes it at once, another process's Runtime by a NOTIFY on
        ``durable_ended_<schema>``; it also re-reads the row every ``result_recheck`` seconds."""
        import trio

        limit = check_timeout(timeout)
        if key is not None or instance_id is None:
            instance_id = await self.by_key(key, instance_id, "result")
        check_id(instance_id)
        if limit == 0:  # look once
            status, value = await self._outcome(instance_id)
            if status == "done":
                return value
            raise TimeoutError(f"instance {instance_id} is {status}: it has not ended")
        status = "not read yet"
        with trio.move_on_after(limit if limit is not None else math.inf):
            async with self.watchers.watching(instance_id) as watch:
                while True:
                    watch.arm()  # before the read: a commit between the read and the wait still wakes us
                    status, value = await self._outcome(instance_id)
                    if status == "done":
                        return value
                    await self.watchers.wait(watch, self.result_recheck)
                    await self.watchers.listen()  # reopened if the listening connection dropped
        raise TimeoutError(f"instance {instance_id} is still {status} after {limit:g} s")

    async def _outcome(self, instance_id: int) -> tuple[str, Any]:
        """(status, result) of an instance; InstanceFailed / InstanceCancelled / NoSuchInstance."""
        row = await self.pool.fetchrow(Q.instance_outcome, instance_id)
        if row is None:
            raise NoSuchInstance(f"no instance with id {instance_id}")
        status: str = row["status"]
        if status == "failed":
            raise InstanceFailed(instance_id, row["last_error"])
        if status == "cancelled":
            raise InstanceCancelled(instance_id, row["last_error"])
        return status, codec.decode(row["result"]) if status == "done" else None

    async def cancel_many(
        self,
        reason: str = "cancelled",
        where: InstanceFilter | None = None,
        *,
        by: str = "operator",
        batch: int | None = None,
        limit: int | None = None,
        **filters: Unpack[FilterFields],
    ) -> Bulk:
        """Cancel every instance matching the filter ``where`` (or the filters of :meth:`query` as keywords)
        with their descendants, in keyset-paged batches; returns counts: see :func:`durable.ops.cancel_many`."""
        from . import ops

        return await ops.cancel_many(
            self,
            reason,
            where,
            by=by,
            batch=ops.BULK_BATCH if batch is None else batch,
            limit=ops.CANCEL_LIMIT if limit is None else limit,
            **filters,
        )

    async def retry_many(
        self, where: InstanceFilter | None = None, *, batch: int | None = None, **filters: Unpack[FilterFields]
    ) -> Bulk:
        """Retry every failed or cancelled instance matching the filter ``where`` (or the filters of
        :meth:`query` as keywords), in keyset-paged batches; returns counts: see
        :func:`durable.ops.retry_many`."""
        from . import ops

        return await ops.retry_many(self, where, batch=ops.BULK_BATCH if batch is None else batch, **filters)

    async def retry(self, instance_id: int) -> str:
        """A failed or cancelled instance back to runnable at its last step, attempt reset."""
        check_id(instance_id)
        try:
            row = await self.pool.fetchrow(Q.retry_instance, instance_id, self.clock.now())
        except UniqueViolationError as exc:  # runnable is in its scope, and another holds the key
            if exc.constraint_name != "instances_unique":
                raise
            held = await self.pool.fetchrow(Q.get_instance, instance_id)
            key = held["unique_key"] if held is not None else "?"
            raise UniqueKeyOccupied(
                key,
                "runnable",
                f"instance {instance_id} not retried: its unique key {key!r} "
                "is held by another instance (runnable is in its unique_scope)",
            ) from None
        if row is None:
            raise NoSuchInstance(f"no instance with id {instance_id}")
        if row["queue"]:
            self.wake([row["queue"]])
        return row["after"]  # type: ignore[no-any-return]

    # -- named values (durable/values.py) -------------------------------------------------------------
    @property
    def values(self) -> Values:
        """Read named values: ``get(instance_id, name)``, ``mget([refs])``, ``list(instance_id)`` (steps
        write them with ``ctx.values.put``)."""
        from .values import Values

        return Values(self)

    # -- the explicit pipeline (implemented in durable.claims) ----------------------------------------
    @property
    def claims(self) -> Any:
        """This Database's explicit pipeline (:class:`durable.claims.Pipeline`): its worker id, its commits."""
        if self._claims is None:
            from .claims import Pipeline

            self._claims = Pipeline(self)
        return self._claims

    async def claim(
        self, queue: str, limit: int = 10, lease: float = 60.0, machine: str | None = None, step: str | None = None
    ) -> Any:
        """Claim up to ``limit`` runnable instances of ``queue`` (of ``machine``, at ``step``, when given)
        for ``lease`` seconds, in the runtime's pick order; returns :class:`durable.Claim` records whose
        fenced calls (transition, complete, retry, fail, release, extend) end or extend each claim. See
        durable/claims.py."""
        return await self.claims.claim(queue, limit, lease, machine, step)

    async def run_once(
        self,
        queue: str,
        handler: Any,
        *,
        limit: int = 10,
        lease: float = 60.0,
        machine: str | None = None,
        step: str | None = None,
        max_attempts: int = 20,
    ) -> Any:
        """Claim one batch (as :meth:`claim`) and run ``await handler(claim)`` for each claim at once; what
        the handler returns is committed (group commit, as a Runtime's steps): an outcome (Next, Retry,
        Await, Spawn, Done, Stop, Cancel) as is, any other value as Done(value). An exception retries with
        backoff (failed after ``max_attempts``). Leases are extended while handlers run; a handler whose
        lease is lost is cancelled. Returns a :class:`durable.claims.Report`."""
        return await self.claims.run_once(
            queue, handler, limit=limit, lease=lease, machine=machine, step=step, max_attempts=max_attempts
        )

    # -- operator queries (implemented in durable.ops) -----------------------------------------------
    async def query(
        self,
        where: InstanceFilter | None = None,
        /,
        *,
        order: str = "id",
        limit: int = 50,
        after: str | None = None,
        **filters: Unpack[FilterFields],
    ) -> Page:
        """Instances matching the filter ``where`` (or the same filters as keywords: ``status="failed"``),
        sorted, keyset-paged: see :func:`durable.ops.query`."""
        from . import ops

        return await ops.query(self, where, order=order, limit=limit, after=after, **filters)

    def tail(
        self,
        after: str = "-1",
        *,
        follow: bool = False,
        instance: int | None = None,
        machine: str | None = None,
        attributes: Mapping[str, str] | None = None,
        poll: float = 0.5,
        batch: int = 500,
    ) -> AsyncIterator[TailEvent]:
        """History events in commit order from offset ``after`` (async iterator): see
        :func:`durable.ops.tail`."""
        from . import ops

        return ops.tail(
            self,
            after,
            follow=follow,
            instance=instance,
            machine=machine,
            attributes=attributes,
            poll=poll,
            batch=batch,
        )

    async def gc(
        self, older_than: float | timedelta, *, batch: int = 1000, progress: Callable[[int], None] | None = None
    ) -> int:
        """Delete terminal instances last updated more than ``older_than`` ago, with their signals and
        history; returns how many: see :func:`durable.ops.gc`."""
        from . import ops

        return await ops.gc(self, older_than, batch=batch, progress=progress)


@asynccontextmanager
async def connect(
    dsn: str | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
    machines: Iterable[type[Machine]] = (),
    migrate: bool = True,
    clock: Clock | None = None,
    min_size: int = 1,
    max_size: int = 10,
    max_value_bytes: int = MAX_VALUE_BYTES,
    pooler: str | None = None,
    listen_dsn: str | None = None,
    client_check: bool = False,
) -> AsyncIterator[Database]:
    """Open a :class:`Database`. ``dsn=None`` uses ``$DURABLE_DSN`` or else the embedded server (restarted
    if its postmaster dies while this is open: :func:`durable.embedded.supervised`).
    ``migrate=True`` brings the schema up to date first. Usable from a plain ``trio.run``: the asyncio
    bridge is opened here when needed. Connections: up to ``max_size``, plus up to ``min(max_size, 4)``
    opened on first use for the pick, the plain outcome commit and the insert, which keep cached plans.
    ``max_value_bytes``: the largest encoded state, payload or result the client accepts (ValueTooLarge
    past it; default ``durable.MAX_VALUE_BYTES``, 16 MiB).
    ``pooler="transaction"`` (default ``$DURABLE_POOLER``): ``dsn`` goes through a connection pooler in
    transaction mode such as PgBouncer, so durable prepares no statement and sets no session setting there
    (the server must set ``search_path``), and LISTENs through ``listen_dsn`` (default ``$DURABLE_LISTEN_DSN``),
    a direct connection to the same database: docs/scaling.md.
    ``client_check=True``: PostgreSQL (14+) aborts a statement of this process soon after the process is gone,
    instead of running it to its end (``durable serve``'s connections; durable._pg.CLIENT_CHECK_MS)."""
    check_schema_name(schema)
    pooler = pooler if pooler is not None else os.environ.get(ENV_POOLER) or None
    listen_dsn = listen_dsn if listen_dsn is not None else os.environ.get(ENV_LISTEN_DSN) or None
    check_pooler(pooler, listen_dsn)
    check_int(max_value_bytes, "max_value_bytes", (1, 2**28))
    import trio

    target = await trio.to_thread.run_sync(resolve_dsn, dsn)
    async with supervised(dsn), asyncio_loop():  # the embedded server is restarted if it dies meanwhile
        pool = await Pool.open(
            target,
            schema,
            min_size=min_size,
            max_size=max_size,
            pooler=pooler,
            listen_dsn=listen_dsn,
            client_check=client_check,
        )
        try:
            if migrate:
                await pool_migrate(pool)
            db = Database(
                pool, clock=clock or DatabaseClock(), registry=Registry(machines), max_value_bytes=max_value_bytes
            )
            yield db
        finally:
            await pool.close()


async def pool_migrate(pool: Pool) -> None:
    """Migrate the schema of ``pool`` when it is behind this code's latest version."""
    version = await migrated_version(pool)
    if version < LATEST_VERSION:
        await migrate(pool)
