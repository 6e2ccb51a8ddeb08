"""Bank: transfers serialized by the source account's partition key. Each effect (debit, credit) is
written idempotently to a ledger keyed by (instance id, step), so re-executed steps write nothing twice
and money is conserved."""

from __future__ import annotations

import random
from collections import Counter

import trio

import durable
from durable import Done, Machine, Next
from durable.sql import Q

from ..core import Run, SimDatabase, Violation, sim_step
from . import Action, Final

QUEUE = "sim"
ACCOUNTS = 4


async def write(ctx: durable.Context, account: int, delta: int) -> None:
    assert ctx.db is not None
    await ctx.db.pool.fetch(Q.sim_ledger_write, ctx.id, ctx.step, account, delta, ctx.lease_token)


class Transfer(Machine, queue=QUEUE, name="sim.transfer"):
    class State(durable.State):
        src: int
        dst: int
        amount: int
        work: float = 1.0

    @sim_step
    async def debit(self, ctx: durable.Context) -> Next:
        await trio.sleep(ctx.state.work)
        await write(ctx, ctx.state.src, -ctx.state.amount)
        return Next("credit")

    @sim_step
    async def credit(self, ctx: durable.Context) -> Done:
        await trio.sleep(ctx.state.work / 2)
        await write(ctx, ctx.state.dst, ctx.state.amount)
        return Done({"moved": ctx.state.amount})


class Bank:
    name = "bank"
    machines: list[type[Machine]] = [Transfer]

    def __init__(self) -> None:
        self.transfers: dict[int, tuple[int, int, int]] = {}  # id -> (src, dst, amount)

    async def setup(self, db: SimDatabase) -> None:
        await db.pool.execute(Q.sim_create_ledger)

    def schedule(
        self, rng: random.Random, count: int, horizon: float, scale: float = 1.0
    ) -> list[tuple[float, Action]]:
        actions: list[tuple[float, Action]] = []
        for _ in range(max(2, count)):
            at = round(rng.uniform(0, horizon / 2), 2)
            src = rng.randrange(ACCOUNTS)
            dst = (src + rng.randrange(1, ACCOUNTS)) % ACCOUNTS
            amount = rng.randint(1, 50)
            work = round(rng.uniform(0.5, 3.0), 1) * scale

            async def insert(
                db: SimDatabase, src: int = src, dst: int = dst, amount: int = amount, work: float = work
            ) -> None:
                iid = await db.insert(
                    Transfer, {"src": src, "dst": dst, "amount": amount, "work": work}, partition_key=f"acct:{src}"
                )
                assert iid is not None
                self.transfers[iid] = (src, dst, amount)

            actions.append((at, insert))
        return actions

    def check(self, run: Run, final: Final) -> list[Violation]:
        out: list[Violation] = []
        rows = final.by_id()
        effects: dict[tuple[int, str], int] = {(r["instance_id"], r["step"]): r["delta"] for r in final.ledger}
        want: Counter[int] = Counter()
        got: Counter[int] = Counter()
        for r in final.ledger:
            got[r["account"]] += r["delta"]
        for iid, (src, dst, amount) in self.transfers.items():
            if rows[iid]["status"] != "done":
                out.append(Violation("state_matches_model", f"transfer {iid} is {rows[iid]['status']}, not done"))
                continue
            want[src] -= amount
            want[dst] += amount
            if effects.get((iid, "debit")) != -amount or effects.get((iid, "credit")) != amount:
                out.append(
                    Violation(
                        "money_conserved",
                        f"transfer {iid}: ledger debit {effects.get((iid, 'debit'))} "
                        f"credit {effects.get((iid, 'credit'))}, model {-amount}/{amount}",
                    )
                )
        total = sum(r["delta"] for r in final.ledger)
        if total != 0:
            out.append(Violation("money_conserved", f"the ledger sums to {total}, not 0"))
        for account in range(ACCOUNTS):
            if got[account] != want[account]:
                out.append(
                    Violation(
                        "state_matches_model", f"account {account}: ledger {got[account]:+d}, model {want[account]:+d}"
                    )
                )
        return out
