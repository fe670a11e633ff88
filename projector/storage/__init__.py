"""Storage: one port (`port`), an adapter per engine (`sqlite`, `postgres`), shared read SQL."""
