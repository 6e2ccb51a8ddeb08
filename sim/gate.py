"""The gate every database call passes through (``Pool.gate``): one call at a time, virtual time frozen
while it runs, and the fault hooks (before execute, after commit before the acknowledgement, connection
kill during the statement, stalls).

Determinism: before a call runs, every other task must be blocked (``wait_all_tasks_blocked``); while
it runs the mock clock cannot jump; afterwards trio's scheduler shuffle is reseeded from the run's own
PRNG, so the order in which tasks wake depends on the seed and on nothing the I/O did.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import trio
import trio.testing
from trio._core import _run as trio_run_module

from durable._pg import Pool, aio, pool_connections
from durable.sql import Q

from .core import Run
from .plan import HOLDS, STATEMENT

if TYPE_CHECKING:
    from durable.runtime import Runtime

T = TypeVar("T")


def deterministic_scheduling(on: bool) -> None:
    """Make trio shuffle each batch of runnable tasks with its (seedable) module PRNG."""
    trio_run_module._ALLOW_DETERMINISTIC_SCHEDULING = on  # type: ignore[misc]


def seeded_clock(seed: int) -> trio.testing.MockClock:
    """A MockClock that reseeds trio's scheduler PRNG at every autojump: the order in which the tasks
    due at the new time wake depends on the run's seed, not on how many I/O wake-ups came before."""
    clock = trio.testing.MockClock(autojump_threshold=math.inf)
    jumps = random.Random(f"{seed}:jumps")
    autojump = clock._autojump

    def reseeded() -> None:
        trio_run_module._r.seed(jumps.getrandbits(64))
        autojump()

    clock._autojump = reseeded  # type: ignore[method-assign]  # MockClock is final: patch the instance
    return clock


class Serializer:
    """One database call at a time (FIFO); in dst mode the mock clock is frozen during the call. A
    transaction keeps the turn from its BEGIN to its COMMIT or ROLLBACK: its statements may take row
    locks that another participant's statement would wait on, and that wait would never end while the
    lock holder's COMMIT queued behind it."""

    def __init__(self, run: Run, clock: trio.testing.MockClock | None) -> None:
        self.run = run
        self.clock = clock
        self.busy = False  # a call has the turn
        self.waiting: dict[trio.Event, tuple[str, str, int]] = {}  # contenders for the next turn, by key
        self.freed = trio.Event()  # set (and replaced) when a turn ends
        self.sched = random.Random(f"{run.config.seed}:sched")
        self.calls = 0
        self.owner: trio.lowlevel.Task | None = None  # the task whose open transaction keeps the turn
        # statements whose transaction a hold fault (signal_lock, pick_lock, cancel_lock) keeps open (their rows
        # locked) while the other calls take their turns; `watch` reads which backends wait on them
        self.held: list[HeldLock] = []
        self.watch: Pool | None = None
        self.skipped: set[int] = set()  # instances a held lock hid from a release_dead_workers

    async def release_held(self) -> None:
        """Commit every held transaction (before a lock-taking harness statement, and at the end)."""
        for h in list(self.held):
            await h.release()

    def owns(self) -> bool:
        return self.owner is not None and self.owner is trio.lowlevel.current_task()

    @asynccontextmanager
    async def turn(
        self, *, begins: bool = False, ends: bool = False, key: tuple[str, str, int] = ("~harness", "", 0)
    ) -> AsyncIterator[None]:
        """One call's turn. ``begins``: the call opens a transaction, which keeps the turn if it succeeds;
        ``ends``: the call closes the transaction that holds the turn; ``key`` (participant, statement,
        its count) orders calls that contend for the same turn."""
        if self.clock is None:  # chaos mode: real concurrency
            self.calls += 1
            yield
            return
        if self.owns():  # a statement of the transaction that holds the turn
            self.calls += 1
            try:
                yield
            finally:
                if ends:
                    self.owner = None
                    self._release()
            return
        await self._acquire(key)
        kept = False
        try:
            await trio.testing.wait_all_tasks_blocked()
            self.clock.autojump_threshold = math.inf
            self.calls += 1
            yield
            kept = begins
        finally:
            if kept:
                self.owner = trio.lowlevel.current_task()
            else:
                self._release()

    def _release(self) -> None:
        assert self.clock is not None
        self.clock.autojump_threshold = 0
        trio_run_module._r.seed(self.sched.getrandbits(64))
        self.busy = False
        self.freed.set()
        self.freed = trio.Event()

    async def _acquire(self, key: tuple[str, str, int]) -> None:
        """Wait for the turn. When it is free and every task is blocked (each call that can ask at this
        virtual moment has asked), it goes to the contender with the least key, not to the first to ask:
        which task asked first can depend on real time (a driver's round trip ending), and a seed must
        give one log."""
        me = trio.Event()
        self.waiting[me] = key
        try:
            while not me.is_set():
                if self.busy:
                    await self.freed.wait()
                    continue
                await trio.testing.wait_all_tasks_blocked()
                if self.busy or me.is_set():
                    continue
                winner = min(self.waiting, key=self.waiting.__getitem__)
                del self.waiting[winner]
                self.busy = True
                winner.set()
        except BaseException:
            if not me.is_set():
                del self.waiting[me]
            elif self.busy:  # handed the turn while being cancelled: pass it on
                self._release()
            raise

    async def settle(self) -> None:
        """Wait until every task is blocked, then reseed the scheduler (after unserialized setup I/O)."""
        async with self.turn():
            pass

    async def frozen(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run harness I/O (setup, final reads) with the clock frozen, outside the log."""
        async with self.turn():
            return await fn()


def _open(conn: asyncpg.Connection) -> bool:
    """Whether the connection's socket may still deliver bytes or its EOF (its transport is not closing)."""
    transport = getattr(conn, "_transport", None)
    return transport is not None and not transport.is_closing()


def locked_ids(args: tuple[Any, ...] | list[Any], result: Any) -> set[int]:
    """The instances a held statement locked: a delivery's target (its first argument), the rows a pick
    claimed or a cancel walked (the ids it returned)."""
    ids = {args[0]} if args and isinstance(args[0], int) else set()
    for row in result if isinstance(result, list) else ():
        # a cancel also returns every row it locked, the executing descendants it only flagged included
        # (checkout seed 117: a restart's release_dead_workers skipped two such shipments, then not excused)
        for column in ("id", "locked"):
            try:
                value = row[column]
            except (KeyError, TypeError, IndexError):
                continue
            ids.update(int(v) for v in (value if isinstance(value, list) else [value]))
    return ids


class HeldLock:
    """A statement's transaction kept open by a hold fault (signal_lock, pick_lock, cancel_lock): its row locks
    stay until ``release``."""

    def __init__(
        self, serializer: Serializer, pool: Pool, raw: asyncpg.Connection, tx: Any, what: str, targets: set[int]
    ) -> None:
        self.serializer = serializer
        self.targets = targets  # the instances whose rows it locks
        self.pool = pool
        self.raw = raw
        self.tx = tx
        self.pid = raw.get_server_pid()
        self.what = what
        self.done = trio.Event()

    async def release(self) -> None:
        if self.done.is_set():
            return
        self.done.set()
        self.serializer.held.remove(self)
        with trio.CancelScope(shield=True):
            try:
                await aio(self.tx.commit)()
            finally:
                await aio(self.pool.raw.release)(self.raw)
        self.serializer.run.log.add(f"{self.what} commits")


class Slot:
    """A worker slot: successive incarnations (after crashes) of one worker, and its call counters."""

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self.counts: Counter[str] = Counter()
        self.paused: trio.Event | None = None  # set while a zombie pause lasts
        self.starved: trio.Event | None = None  # set when a lease-loss fault ends: heartbeats wait for it
        self.dead: set[str] = set()  # worker ids of its incarnations that crashed (Runtime.kill)
        self.runtime: Runtime | None = None
        self.db: Any = None  # its current Database: the driver's explicit claims (db.claim) are held too
        self.incarnation = 0

    @property
    def worker_id(self) -> str:
        return f"{self.name}.{self.incarnation}"


# statements the faults, the log and the lease model treat as one (the outcome commit's two forms)
SAME_AS = {"complete_simple": "complete"}
KILL_WAIT = 300.0  # real seconds a connection-kill victim may take to block on the table lock


class SlotGate:
    """``Pool.gate`` of one slot's pool: counts calls, applies the slot's faults, logs the results."""

    def __init__(
        self,
        run: Run,
        serializer: Serializer,
        slot: Slot,
        admin: Pool | None,
        watch: Pool | None,
        application_name: str,
        raw: asyncpg.Pool | None = None,
    ) -> None:
        self.raw = raw  # the slot's driver pool: the connection kill waits for its victims' sockets to close
        self.run = run
        self.serializer = serializer
        self.slot = slot
        self.admin = admin
        self.watch = watch
        self.application_name = application_name

    async def call(self, name: str, run: Callable[[], Awaitable[T]]) -> T:
        sim, slot = self.run, self.slot
        name = SAME_AS.get(name, name)
        slot.counts[name] += 1
        nth = slot.counts[name]
        sim.calls[name] += 1  # run-wide counts: a fault without a slot is keyed on the n-th call of anyone
        faults = [
            f
            for f in sim.plan
            if sim.faults_on
            and STATEMENT.get(f.kind) == name
            and ((f.slot == slot.index and f.nth == nth) or (f.slot is None and f.nth == sim.calls[name]))
        ]
        in_transaction = self.serializer.owns()  # it holds the turn: it must not pause
        if slot.paused is not None and not in_transaction:
            await slot.paused.wait()
        if slot.starved is not None and name == "heartbeat":
            await slot.starved.wait()
        for f in faults:
            if f.kind == "reaper_delay":
                sim.fire(f, f" ({slot.worker_id})")
                await trio.sleep(f.seconds * sim.scale)
            elif f.kind == "zombie":
                await self._zombie(f)
            elif f.kind == "lease_loss" and slot.starved is None:
                await self._lease_loss(f)
        kinds = {f.kind for f in faults}
        for f in faults:
            if f.kind == "drain" and slot.runtime is not None and not slot.runtime.stopping:
                sim.fire(f, f" ({slot.worker_id})")
                slot.runtime.stop(drain_timeout=f.seconds * sim.scale)
        locked: HeldLock | None = None
        async with self.serializer.turn(
            begins=name == "begin", ends=name in ("commit", "rollback"), key=(slot.name, name, nth)
        ):
            held = self._held()
            if "crash" in kinds:
                self._crash(next(f for f in faults if f.kind == "crash"))
                await trio.lowlevel.checkpoint()  # the kill cancelled us: the statement never runs
            if any(kind.startswith("conn_") for kind in kinds):
                fault = next(f for f in faults if f.kind.startswith("conn_"))
                await self.serializer.release_held()  # its table lock would wait on a held row lock
                result = await self._kill_during(fault, name, run)
            elif kinds & HOLDS and self.admin is not None and self.serializer.clock is not None:
                fault = next(f for f in faults if f.kind in HOLDS)
                result, locked = await self._hold(fault, run)
            else:
                result = await self._guarded(name, run)
            self._observe(name, nth, result, held, call_args(run))
            if "commit_unknown" in kinds:
                self._crash(next(f for f in faults if f.kind == "commit_unknown"))
                await trio.lowlevel.checkpoint()  # committed, but the worker never hears of it
        if locked is not None:  # the caller hears back once its transaction commits
            await self._until_committed(locked, next(f for f in faults if f.kind in HOLDS))
        return result

    # -- held transactions (real interleavings) --------------------------------------------------
    async def _hold(self, fault: Any, run: Callable[[], Awaitable[T]]) -> tuple[T, HeldLock]:
        """Run the statement in a transaction of its own that stays open after it (the rows it locked stay
        locked) while the other calls take their turns: ``_guarded`` commits it when one of them waits on
        its lock, ``_until_committed`` after ``fault.seconds`` at the latest."""
        assert self.admin is not None
        await self.serializer.release_held()  # one at a time: this statement could wait on another's lock
        cells = dict(zip(run.__code__.co_freevars, run.__closure__ or (), strict=True))
        method, query = cells["method"].cell_contents.__name__, cells["q"].cell_contents
        raw = await aio(self.admin.raw.acquire)()
        tx = raw.transaction()
        await aio(tx.start)()
        args = call_args(run)
        result = await aio(getattr(raw, method))(query.text, *args)
        lock = HeldLock(
            self.serializer, self.admin, raw, tx, f"{self.slot.worker_id} {query.name}", locked_ids(args, result)
        )
        self.serializer.held.append(lock)
        self.run.fire(fault, f" ({self.slot.worker_id})")
        return result, lock

    async def _until_committed(self, lock: HeldLock, fault: Any) -> None:
        try:
            with trio.move_on_after(fault.seconds * self.run.scale):
                await lock.done.wait()
        finally:
            if not lock.done.is_set():  # nobody waited on it (or the caller is cancelled): commit in a turn
                with trio.CancelScope(shield=True):
                    async with self.serializer.turn():
                        await lock.release()

    async def _guarded(self, name: str, run: Callable[[], Awaitable[T]]) -> T:
        """Run the call. While a held transaction is open, watch in real time (inside this turn, the clock
        frozen) whether the call's statement waits on a lock it holds, and commit it then: the statement
        goes on with the snapshot it took before the commit, as it would in production."""
        ser = self.serializer
        if not ser.held or ser.watch is None:
            return await run()
        done: dict[str, Any] = {}

        async def victim() -> None:
            try:
                done["result"] = await run()
            except Exception as exc:
                done["error"] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(victim)
            while not done and ser.held:
                blockers = {r["blocker"] for r in await ser.watch.fetch(Q.sim_blocked_by, [h.pid for h in ser.held])}
                for lock in [h for h in ser.held if h.pid in blockers]:
                    self.run.log.add(f"{self.slot.worker_id} {name} waits on the lock of {lock.what}")
                    await lock.release()
                if not done:
                    await trio.to_thread.run_sync(time.sleep, 0.002)
        if "error" in done:
            raise done["error"]
        return done["result"]  # type: ignore[no-any-return]

    # -- faults ----------------------------------------------------------------------------------
    async def _zombie(self, fault: Any) -> None:
        """Stall every call of this worker (heartbeats too) until the reaper has taken one of its claims
        back and another worker holds it, or ``fault.seconds`` passed; then let it try to commit."""
        slot, sim = self.slot, self.run
        sim.fire(fault, f" ({slot.worker_id})")
        mine = self._held()
        repicked = trio.Event()
        waiter = (mine, repicked)
        sim.zombies.append(waiter)
        slot.paused = trio.Event()
        try:
            with trio.move_on_after(fault.seconds * sim.scale):
                await repicked.wait()
            sim.log.add(f"{slot.worker_id} resumes")
        finally:
            sim.zombies.remove(waiter)
            slot.paused.set()
            slot.paused = None

    async def _lease_loss(self, fault: Any) -> None:
        """Stall this outcome commit (so later outcomes queue behind it) and every heartbeat of this worker,
        while its picks, steps, lost-lease releases and reaper go on. Its queued outcomes' claims expire and
        are reaped. When one is picked again by this same worker, the stall lasts until the new claim's
        outcome is queued too (two outcomes of one instance wait in its flusher); when another worker took
        it, this one is restarted (a failed health check: a drain of 1 s, its stalled commit cut off) while
        the other's claim is live. At the latest after ``fault.seconds``."""
        slot, sim = self.slot, self.run
        sim.fire(fault, f" ({slot.worker_id})")
        slot.starved = trio.Event()
        try:
            deadline = trio.current_time() + fault.seconds * sim.scale
            restarted = False
            while trio.current_time() < deadline and not self._twice_queued():
                taker = self._taken_over()
                if taker is not None and taker != slot.worker_id and not restarted and slot.runtime is not None:
                    restarted = True
                    sim.log.add(f"{slot.worker_id} restarted: {taker} picked a claim of its queued outcomes")
                    slot.runtime.stop(drain_timeout=1.0 * sim.scale)
                await trio.sleep(0.5 * sim.scale)
            sim.log.add(f"{slot.worker_id} commits and heartbeats again")
        finally:
            slot.starved.set()
            slot.starved = None

    def _twice_queued(self) -> bool:
        """Two outcomes of one instance wait in this worker's flusher."""
        rt = self.slot.runtime
        if rt is None:
            return False
        ids = [p.claim.id for p in rt.flusher._queue]
        return len(set(ids)) < len(ids)

    def _taken_over(self) -> str | None:
        """The worker now holding (by the lease model) an instance whose outcome this worker is committing
        under an older claim, if any."""
        rt = self.slot.runtime
        if rt is None:
            return None
        for s in rt.schedulers.values():
            for c in sorted(s.committing, key=lambda c: c.id):
                live = self.run.leases.get(c.id)
                if live is not None and live[0] != c.lease_token:
                    return live[1]
        return None

    def _crash(self, fault: Any) -> None:
        self.run.fire(fault, f" ({self.slot.worker_id})")
        if self.slot.runtime is not None:
            self.slot.runtime.kill()

    async def _kill_during(self, fault: Any, name: str, run: Callable[[], Awaitable[T]]) -> T:
        """Block the statement on a table lock, terminate its backend while it waits, let it fail."""
        assert self.admin is not None and self.watch is not None
        done: dict[str, Any] = {}

        async def victim() -> None:
            try:
                done["result"] = await run()
            except Exception as exc:  # the driver's error is what the engine must survive
                done["error"] = exc

        killed = 0
        async with trio.open_nursery() as nursery:
            async with self.admin.transaction() as conn:
                # the statement's table: instances for the engine's statements, workers for a registration
                await conn.execute(Q.sim_block_workers if name == "register_worker" else Q.sim_block_instances)
                nursery.start_soon(victim)
                pids = await self._blocked_backends(done)
                if pids:  # the statement returns once its backend has exited
                    killed = int(await self.watch.fetchval(Q.sim_terminate_backends, pids))
            # the lock is released and the victim ends either way (the nursery waits for it)
        await self._until_closed(pids)
        self.run.fire(
            fault,
            f" ({self.slot.worker_id}, {killed} backend, "
            f"{type(done['error']).__name__ if 'error' in done else 'no error'})",
        )
        if "error" in done:
            self.run.log.add(f"{self.slot.worker_id} {name} failed: {type(done['error']).__name__}")
            raise done["error"]
        return done["result"]  # type: ignore[no-any-return]

    async def _until_closed(self, pids: list[int]) -> None:
        """Wait until the driver has read the EOF of each killed backend's connection (its transport
        closes). A backend leaves the process table, which ends pg_terminate_backend's wait, before it
        closes its socket: read later, at some unrelated moment, that EOF would wake a task and perturb
        the scheduling order (CI: one seed gave two logs). A condition, not a sleep; the clock is frozen
        and the other workers wait for their turn meanwhile."""
        give_up = time.monotonic() + KILL_WAIT
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if not any(_open(c) for c in pool_connections(self.raw) if c.get_server_pid() in pids):
                return
            if time.monotonic() > give_up:
                raise RuntimeError(f"connection kill: the sockets of backends {pids} never closed")
            await trio.to_thread.run_sync(time.sleep, 0.001)

    async def _blocked_backends(self, done: dict[str, Any]) -> list[int]:
        """The backends of this worker waiting on a lock, once the victim's statement waits on the table lock;
        [] if the statement ended without taking it. Polled in real time (the clock is frozen in a turn), with
        no time bound but a harness error after ``KILL_WAIT`` seconds: a kill skipped on a slow machine would
        change the run's log."""
        assert self.watch is not None
        give_up = time.monotonic() + KILL_WAIT
        while not done:
            pids = [r["pid"] for r in await self.watch.fetch(Q.sim_blocked_backends, self.application_name)]
            if pids:
                return pids
            if time.monotonic() > give_up:
                raise RuntimeError(f"connection kill: {self.application_name}'s statement never waited on the lock")
            await trio.to_thread.run_sync(time.sleep, 0.001)
        return []

    # -- observation -----------------------------------------------------------------------------
    def _held(self) -> dict[int, set[int]]:
        rt = self.slot.runtime
        out: dict[int, set[int]] = {}
        pipeline = getattr(self.slot.db, "_claims", None)  # the explicit claims of db.claim / run_once
        if pipeline is not None:
            for token, (iid, _) in sorted(pipeline.leases.items()):
                out.setdefault(iid, set()).add(token)
        if rt is None:
            return out
        for s in rt.schedulers.values():
            for c in s.held():
                out.setdefault(c.id, set()).add(c.lease_token)
        return out

    def _observe(self, name: str, nth: int, result: Any, held: dict[int, set[int]], args: tuple[Any, ...]) -> None:
        """Log the call and keep the lease model. The live lease checks need calls in commit order, so
        they run only when calls are serialized (dst); chaos relies on the history checks."""
        sim, who = self.run, self.slot.worker_id
        live_checks = self.serializer.clock is not None
        rows = result if isinstance(result, list) else [result] if isinstance(result, asyncpg.Record) else []
        leases = sim.leases
        if name == "pick":
            for r in rows:
                leases[r["id"]] = (r["lease_token"], who)
                for mine, repicked in sim.zombies:  # a zombie's claim taken over: let it try now
                    if r["id"] in mine and r["lease_token"] not in mine[r["id"]]:
                        repicked.set()
            text = " ".join(f"{r['id']}:t{r['lease_token']}" for r in rows)
        elif name == "reap":
            for r in rows:
                leases.pop(r["id"], None)
            text = " ".join(str(r["id"]) for r in rows)
        elif name in RELEASES:
            if name == "release_dead_workers":  # the dead workers' claims it skipped (locked) stay theirs
                self.serializer.skipped |= {i for h in self.serializer.held for i in h.targets}
            for r in rows:
                live = leases.pop(r["id"], None)
                if live_checks:
                    self._check_release(name, r["id"], live, args)
            asked = (
                " ".join(f"{i}:t{t}" for i, t in zip(args[0], args[1], strict=True))
                if name in ("release", "lease_lost")
                else ""
            )
            text = (
                f"{' '.join(str(r['id']) for r in rows)} (of {asked})"
                if asked
                else " ".join(str(r["id"]) for r in rows)
            )
        elif name == "complete":
            parts = []
            for r in rows:
                parts.append(f"{r['kind']}:{r['id']}:{r['status']}{':fenced' if r['fenced'] else ''}")
                if r["kind"] != "outcome" or r["fenced"]:
                    continue
                if not live_checks:
                    leases.pop(r["id"], None)
                    continue
                live = leases.pop(r["id"], None)
                # the outcome committed must be the live claim's own (its input token), not merely one of
                # a worker that also holds the live claim (a zombie's outcome beside it in one batch)
                if live is None or live[0] != r["claim_token"] or live[0] not in held.get(r["id"], set()):
                    sim.violate(
                        "no_fenced_outcome_visible",
                        f"{who} committed an outcome for instance {r['id']} with token "
                        f"{r['claim_token']} (holding {sorted(held.get(r['id'], set()))}) while the "
                        f"live lease is {live}",
                    )
                if r["status"] == "executing":  # run-ahead: the claim is kept under a fresh token
                    leases[r["id"]] = (r["lease_token"], who)
            text = " ".join(parts)
        elif name == "heartbeat":
            extended = list(rows[0]["extended"]) if rows else []
            passed: dict[int, set[int]] = {}  # $1 ids, $2 tokens: the claims the heartbeat was sent for
            for iid, token in zip(args[0], args[1], strict=True) if args else ():
                passed.setdefault(iid, set()).add(token)
            for iid in extended if live_checks else []:
                live = leases.get(iid)
                if live is None or live[1] != who or live[0] not in passed.get(iid, set()):
                    sim.violate(
                        "one_live_lease",
                        f"{who} extended the lease of instance {iid} with tokens "
                        f"{sorted(passed.get(iid, set()))} while the live lease is {live}",
                    )
            text = " ".join(str(i) for i in sorted(extended))
        elif name == "register_worker":
            # a restarted worker has freed its crashed predecessors' claims (release_dead_workers, observed
            # above) before it registers: none may still wait for its lease to expire
            # (a row a held transaction locks is skipped, as release_dead_workers says, and left to the reaper,
            # now or when an earlier start released the same dead worker)
            locked = {i for h in self.serializer.held for i in h.targets} | self.serializer.skipped
            left = sorted(iid for iid, (_, w) in leases.items() if w in self.slot.dead and iid not in locked)
            if left and live_checks:
                sim.violate(
                    "restart_frees_claims", f"{who} started with claims {left} of its crashed predecessors still held"
                )
            text = ""
        elif name == "value_put":
            row = rows[0] if rows else None
            wrote = row is not None and row["owned"] and row["sha256"] is not None
            live = leases.get(args[0]) if args else None
            if wrote and live_checks and (live is None or live[0] != args[1]):
                sim.violate(
                    "values_fenced",
                    f"{who} wrote value {args[2]!r} of instance {args[0]} under token "
                    f"{args[1]} while the live lease is {live}",
                )
            text = f"{args[0]}:t{args[1]} {args[2]} {'written' if wrote else 'refused'}" if args else ""
        elif name == "deliver_signal":
            text = " ".join(f"{r['signal_id']}:{r['after']}" for r in rows)
        elif name in ("insert_instances", "insert_instance"):
            inserted = set(rows[0]["inserted"]) if rows else set()
            for r in rows:  # handed off to this worker's idle scheduler: claimed like a pick
                if r["lease_token"] is not None:
                    leases[r["id"]] = (r["lease_token"], who)
            text = " ".join(
                str(r["id"] if r["id"] in inserted else None)
                + ("" if r["lease_token"] is None else f":t{r['lease_token']}")
                for r in rows
            )
        else:
            text = f"{len(rows)} rows" if isinstance(result, list) else ""
        sim.log.add(f"{who} {name}#{nth} {text}".rstrip())

    def _check_release(self, name: str, iid: int, live: tuple[int, str] | None, args: tuple[Any, ...]) -> None:
        """Release fencing: a statement that gives claims back (``RELEASES``) changed instance ``iid``, whose
        live lease the model says is ``live`` (token, worker): it must be a claim the caller holds."""
        who = self.slot.worker_id
        if name in ("release", "lease_lost"):  # $1 ids, $2 tokens: fenced by token (an id may come twice: a
            # runtime can hold a lost claim and the live one of one instance)
            tokens = sorted(t for i, t in zip(args[0], args[1], strict=True) if i == iid)
            ok = live is not None and live[0] in tokens
            held = f"with tokens {tokens}"
        elif name == "release_orphans":  # $1 the worker, $3 the ids it holds: its own claims it lost track of
            ok = live is None or live[1] == args[0]
            held = f"as an orphan of {args[0]}"
        else:  # release_dead_workers: $1 the dead workers' ids
            ok = live is None or live[1] in args[0]
            held = f"of dead workers {sorted(args[0])}"
        if not ok:
            self.run.violate(
                "release_fencing", f"{who} {name} released instance {iid} {held} while the live lease is {live}"
            )


# statements that give claims back to runnable (the release fencing check), with the reaper's `reap`
RELEASES = ("release", "release_orphans", "lease_lost", "release_dead_workers")


def call_args(run: Callable[[], Awaitable[Any]]) -> tuple[Any, ...]:
    """The arguments of the statement ``run`` executes: ``durable._pg.Pool._run`` passes the gate a closure
    over them (the release checks need the tokens); () for BEGIN, COMMIT and ROLLBACK."""
    cells = dict(zip(run.__code__.co_freevars, run.__closure__ or (), strict=True))
    cell = cells.get("args")
    return tuple(cell.cell_contents) if cell is not None else ()
