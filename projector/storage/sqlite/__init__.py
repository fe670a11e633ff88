"""The SQLite adapter: the embedded default, one file, one writer thread."""
