"""The projector lease: one process folds at a time; its epoch fences out a former holder.

Time is the database's clock only (`now()`), never a process's: clocks of hosts disagree.
"""

from __future__ import annotations

from projector.storage.postgres.connect import Connection

LEASE_NAME = "projector"


async def claim(conn: Connection, owner: str, seconds: float) -> int | None:
    """Take the lease if it is free, expired or already `owner`'s; its new epoch, or None."""
    cur = await conn.execute(
        "INSERT INTO projector_lease AS l (name, owner, epoch, lease_until)"
        " VALUES (%s, %s, 1, now() + make_interval(secs => %s))"
        " ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, epoch = l.epoch + 1,"
        " lease_until = EXCLUDED.lease_until"
        " WHERE l.lease_until < now() OR l.owner = EXCLUDED.owner"
        " RETURNING epoch",
        (LEASE_NAME, owner, seconds),
    )
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def renew(conn: Connection, owner: str, epoch: int, seconds: float) -> bool:
    """Extend a lease still held (same owner and epoch, not expired); False if it was lost."""
    cur = await conn.execute(
        "UPDATE projector_lease SET lease_until = now() + make_interval(secs => %s)"
        " WHERE name = %s AND owner = %s AND epoch = %s AND lease_until > now()",
        (seconds, LEASE_NAME, owner, epoch),
    )
    return cur.rowcount == 1


async def hold(conn: Connection, owner: str, epoch: int, seconds: float) -> bool:
    """The fence, inside the caller's transaction: lock the lease; extend it if still ours.

    The row stays locked until the transaction ends, so no other process can claim the
    lease between this check and the commit of what the caller writes under it.
    """
    cur = await conn.execute(
        "SELECT owner = %s AND epoch = %s AND lease_until > now() FROM projector_lease"
        " WHERE name = %s FOR UPDATE",
        (owner, epoch, LEASE_NAME),
    )
    row = await cur.fetchone()
    if row is None or not row[0]:
        return False
    await conn.execute(
        "UPDATE projector_lease SET lease_until = now() + make_interval(secs => %s)"
        " WHERE name = %s",
        (seconds, LEASE_NAME),
    )
    return True


async def release(conn: Connection, owner: str, epoch: int) -> None:
    """End a lease still held now, so a standby need not wait out its expiry (a restart)."""
    await conn.execute(
        "UPDATE projector_lease SET lease_until = now()"
        " WHERE name = %s AND owner = %s AND epoch = %s AND lease_until > now()",
        (LEASE_NAME, owner, epoch),
    )
