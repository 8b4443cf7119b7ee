"""The flow model: a flow document becomes a frozen, validated `Flow` (schema, parser, scripts, problems, limits,
references, the DAG), or one `FlowError` with every problem and its place. No I/O but `loader`'s file reads;
no sandbox: whoever parses a flow passes the check its scripts must pass."""
