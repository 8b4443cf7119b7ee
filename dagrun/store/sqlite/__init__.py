"""The SQLite store: one file, a writer thread committing in groups, a watcher for other processes' commits.

- `store`: SqliteStore, the Store itself: queues writes, flushes before reads;
- `file`: where the file is, how a new one is made, how it is opened (connections);
- `schema`: the tables, their migrations, and the statements the writer runs;
- `writer`: the writer thread, committing queued rows in groups, fenced by lease epoch;
- `reader`: the reading connection on a thread of its own, and the waits;
- `wait`: the commit watcher, which finds the waited channels that moved;
- `query`: reads of runs, steps, contexts and events;
- `control`: commands, notices and leases, written and read;
- `cache`: what is kept of the runs this process drives.
"""
