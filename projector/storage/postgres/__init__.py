"""The PostgreSQL adapter: several service processes share one database server."""

from projector.storage.postgres.adapter import PostgresReads, PostgresStorage
from projector.storage.postgres.maintenance import PostgresMaintenance, open_maintenance

__all__ = ["PostgresMaintenance", "PostgresReads", "PostgresStorage", "open_maintenance"]
