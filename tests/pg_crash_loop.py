"""The crash loop on PostgreSQL: two loaded `projector serve` processes, SIGKILLed at random.

Every few rounds PostgreSQL itself crashes instead (pg_ctl stop -m immediate) on a throwaway
cluster. After each round the log is audited against the answers; `make reliability` runs it.
python -m tests.pg_crash_loop [--kills N] [--seed S] [--postgres-every K]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from projector.storage.location import PostgresUrl
from tests import pg_audit
from tests.pg_cluster import Cluster, cluster_problem, created_cluster
from tests.pg_load import Load
from tests.pg_processes import lease_holder, pg_service, projections, start_all, wait_folded
from tests.postgres_support import query
from tests.support import Service

WAIT_SECONDS = 60  # the bound on each wait; a round that needs longer is a failure


@dataclass
class Round:
    """What one round did and what the audit after it found."""

    number: int
    victim: str
    held_lease: bool
    audit: pg_audit.LogAudit
    verified: bool
    takeover: float | None  # kill of the lease holder -> a later delivery folded
    down: float | None  # PostgreSQL stopped -> ready again (its crash recovery included)
    recovery: float | None  # PostgreSQL ready again -> a later delivery folded
    problems: list[str]

    def row(self) -> str:
        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        return (
            f"{self.number:>5}  {self.victim:<10} {'yes' if self.held_lease else 'no':<5}"
            f" {self.audit.acknowledged:>8} {self.audit.lost:>5} {self.audit.duplicates_applied:>9}"
            f" {self.audit.extra + self.audit.corrupt:>6} {'ok' if self.verified else 'FAIL':<6}"
            f" {seconds(self.takeover):>9} {seconds(self.down):>6} {seconds(self.recovery):>9}"
        )


HEADER = (
    "round  killed     lease    acked  lost  dup.appl. extra verify  takeover   down  recovery\n"
    "                  held                                            (s)      (s)     (s)"
)


async def folded_again(
    load: Load, since: float, base: str, url: PostgresUrl, problems: list[str]
) -> float | None:
    """Seconds from `since` until a delivery sent after it is acknowledged and folded."""
    first = await load.first_ack_after(since, seconds=WAIT_SECONDS)
    if first is None or first.seq is None:
        problems.append(f"no delivery acknowledged within {WAIT_SECONDS} s: {load.statuses(since)}")
        return None
    if not await wait_folded(base, first.seq, seconds=WAIT_SECONDS):
        lease = await query(url, "SELECT owner, epoch, lease_until, now() FROM projector_lease")
        stored = await query(url, "SELECT name, position, generation FROM projections")
        problems.append(
            f"seq {first.seq} not folded within {WAIT_SECONDS} s; {base} answers"
            f" {await projections(base)}; lease {lease}; projections {stored}"
        )
        return None
    return time.monotonic() - since


async def kill_a_process(
    number: int, services: list[Service], load: Load, cluster: Cluster, rng: random.Random
) -> Round:
    holder = await lease_holder(cluster.url)
    holding = [s for s in services if s.process and holder and s.process.pid == holder[0]]
    # Every other process kill is of the lease holder, so takeovers are measured often.
    victim = holding[0] if holding and number % 2 else rng.choice(services)
    survivor = next(s for s in services if s is not victim)
    held = victim in holding
    await asyncio.to_thread(victim.kill)
    killed_at = time.monotonic()
    load.targets[:] = [survivor.url]
    problems: list[str] = []
    takeover = None
    if held:
        takeover = await folded_again(load, killed_at, survivor.url, cluster.url, problems)
    await asyncio.to_thread(victim.start)
    load.targets[:] = [s.url for s in services]
    name = f"serve {'AB'[services.index(victim)]}"
    return await audited(number, name, held, load, cluster, (takeover, None, None), problems)


async def crash_postgresql(
    number: int, services: list[Service], load: Load, cluster: Cluster, rng: random.Random
) -> Round:
    await asyncio.to_thread(cluster.stop, "immediate")
    down_at = time.monotonic()
    await asyncio.sleep(rng.uniform(0.5, 3.0))
    answered_down = [
        o for o in load.outcomes if o.sent_at >= down_at and o.status is not None
    ]  # requests sent and answered while the server was down
    await asyncio.to_thread(cluster.start)
    ready_at = time.monotonic()
    problems = [
        f"PostgreSQL down: delivery {o.number} got {o.status} (Retry-After {o.retry_after})"
        for o in answered_down
        if o.status != 503 or not o.retry_after
    ][:3]
    recovery = await folded_again(load, ready_at, services[0].url, cluster.url, problems)
    figures = (None, ready_at - down_at, recovery)
    return await audited(number, "postgresql", False, load, cluster, figures, problems)


async def audited(
    number: int,
    victim: str,
    held: bool,
    load: Load,
    cluster: Cluster,
    seconds: tuple[float | None, float | None, float | None],
    problems: list[str],
) -> Round:
    audit = await pg_audit.audit_log(cluster.url, load)
    verified, printed = await pg_audit.verify(cluster.url)
    if not verified:
        problems.append(f"projector verify failed: {printed}")
    if "500" in load.statuses():
        problems.append(f"answers of 500: {load.statuses()}")
    return Round(number, victim, held, audit, verified, *seconds, problems)


async def run(kills: int, seed: int, postgres_every: int, workdir: Path) -> bool:
    rng = random.Random(seed)
    rounds: list[Round] = []
    with created_cluster() as cluster:
        services = [pg_service(cluster.url, workdir), pg_service(cluster.url, workdir)]
        try:
            await start_all(services)
            load = Load([s.url for s in services]).start(max_seconds=3600)
            print(HEADER, flush=True)
            for number in range(1, kills + 1):
                await load.wait_for_acks(len(load.acked()) + 100, seconds=WAIT_SECONDS)
                await asyncio.sleep(rng.uniform(0.3, 1.5))
                crash = crash_postgresql if number % postgres_every == 0 else kill_a_process
                done = await crash(number, services, load, cluster, rng)
                rounds.append(done)
                print(done.row(), flush=True)
                for problem in done.problems + done.audit.problems:
                    print(f"       PROBLEM: {problem}", flush=True)
            await load.stop()
            final = await final_audit(load, cluster, services)
        finally:
            for service in services:
                service.kill()
    return summarise(rounds, load, final)


async def final_audit(load: Load, cluster: Cluster, services: list[Service]) -> list[str]:
    """Once the load stopped: folded to the head, log audited, live equals a rebuild."""
    problems: list[str] = []
    if not await wait_folded(services[0].url, seconds=WAIT_SECONDS):
        problems.append("the projections did not reach the log head")
    audit = await pg_audit.audit_log(cluster.url, load)
    print(f"final: {audit.line()}")
    problems += [] if audit.ok else [audit.line()]
    problems += await pg_audit.live_equals_rebuild(cluster.url)
    verified, printed = await pg_audit.verify(cluster.url)
    print(f"final verify: {printed.strip().splitlines()[-1]}")
    problems += [] if verified else [printed]
    return problems


def summarise(rounds: list[Round], load: Load, final: list[str]) -> bool:
    takeovers = [r.takeover for r in rounds if r.takeover is not None]
    recoveries = [r.recovery for r in rounds if r.recovery is not None]
    for name, figures in (("takeover", takeovers), ("postgresql recovery", recoveries)):
        if figures:
            print(
                f"{name}: {len(figures)} times, median {statistics.median(figures):.2f} s,"
                f" max {max(figures):.2f} s"
            )
    print(f"load: {load.issued} sent, answers {dict(load.statuses())}")
    failed = [p for r in rounds for p in r.problems + r.audit.problems] + final
    failed += [f"round {r.number}: {r.audit.line()}" for r in rounds if not r.audit.ok]
    for problem in final:
        print(f"PROBLEM: {problem}")
    print("verdict: " + ("ok" if not failed else f"FAILED ({len(failed)} problems)"))
    return not failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=10, help="rounds (default 10)")
    parser.add_argument("--seed", type=int, help="for victims and moments; printed, to re-run")
    parser.add_argument(
        "--postgres-every", type=int, default=4, help="every Kth round crashes PostgreSQL"
    )
    parser.add_argument("--workdir", type=Path, help="keep the services' logs here")
    args = parser.parse_args(argv)
    if (problem := cluster_problem()) is not None:
        print(f"pg_crash_loop: cannot run: {problem}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    print(f"postgres crash loop: {args.kills} rounds, seed {seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pg-crash-loop-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        ok = asyncio.run(run(args.kills, seed, args.postgres_every, workdir))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
