"""The Redis store: runs shared by many machines, written in batches of Lua script calls."""
