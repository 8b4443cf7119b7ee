"""The engine: orchestrators drive runs under leases (`orchestrator`, `watcher`), a `driver` per run with
a `StepState` per step (`step_state`), asking the `scheduler` what may start and `policy` what a failure
leads to; `control` reads and controls runs through the store alone (`views` are what it reads), and
`local_runs` lets it reach the drivers in its own process at once."""
