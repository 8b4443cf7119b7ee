"""The SQLite store: one file, a writer thread committing in groups, a watcher for other processes' commits."""
