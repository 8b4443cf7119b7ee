"""How an orchestrator drives runs unless told otherwise; apart from the orchestrator, so that the command
line offers these values without loading the engine."""

DEFAULT_MAX_PARALLEL = 128  # steps of one run running at once
DEFAULT_LEASE_S = 15.0  # a run whose orchestrator died is taken over this long after its last renewal
DEFAULT_MAX_MAP_ITEMS = 100_000  # items one mapped step may run
