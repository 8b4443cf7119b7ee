"""The engine: orchestrators drive runs under leases (`orchestrator`, `driver`, `scheduler`, `watcher`),
and `control` reads and controls runs through the store alone."""
