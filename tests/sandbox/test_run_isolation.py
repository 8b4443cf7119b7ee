"""Runs do not share sandbox children: a script that breaks the language policy can spoil its own run
at most. An attacker run plants a spy in its child (with the policy gone: tests/sandbox/unrestricted_zygote.py)
that records every later request the child serves; a victim run follows on the same orchestrator with one
sandbox process, then a collector run of the attacker's reads what the spy recorded."""

from __future__ import annotations

import dataclasses

import pytest

from dagrun import Flow, Orchestrator, RunStatus, parse_flow
from dagrun.contract.executor import script_hash
from dagrun.sandbox import spawner
from dagrun.store import MemoryStore
from tests.sandbox.unrestricted_zygote import UNRESTRICTED_MARK

# Reaches the runner through any host function's globals (no policy guards attribute reads any more) and
# wraps its `run` to keep every request it is given, in the module's namespace, for a later step to read.
PLANT = (
    UNRESTRICTED_MARK
    + """
runner = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'StepRunner'][0]
module = runner.arm_cpu.__globals__  # the runner module (run itself gets replaced)
module.setdefault('SEEN', [])
if 'PLANTED' not in module:
    module['PLANTED'] = True
    original = runner.run
    def spy(self, message, _original=original, _seen=module['SEEN']):
        _seen.append(message['req']['inputs'])
        return _original(self, message)
    runner.run = spy
outputs['planted'] = True
"""
)
COLLECT = (
    UNRESTRICTED_MARK
    + """
runner = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'StepRunner'][0]
outputs['seen'] = list(runner.arm_cpu.__globals__.get('SEEN', []))
"""
)
VICTIM = "outputs['doubled'] = inputs['secret'] * 2"


def flow(name: str, script: str, inputs: dict[str, object] | None = None) -> Flow:
    """A one-step flow running `script`, which validation (the parent's policy check) never sees: as if the
    script had been crafted to pass it and still break the policy in the child."""
    parsed = parse_flow({"name": name, "steps": [{"id": "s", "script": "pass", "inputs": inputs or {}}]})
    (step,) = parsed.steps
    return dataclasses.replace(
        parsed, steps=(dataclasses.replace(step, script=script, script_hash=script_hash(script)),)
    )


@pytest.mark.parametrize(
    ("local", "victim_leaks"),
    [
        ("local://?processes=1", False),  # each run its own children
        ("local://?processes=1&trust_domain=everyone", True),  # one named domain: the attack is real
    ],
)
async def test_a_run_that_broke_the_policy_cannot_see_or_touch_another_runs_step(
    monkeypatch: pytest.MonkeyPatch, local: str, victim_leaks: bool
) -> None:
    monkeypatch.setattr(spawner, "ZYGOTE_ENTRY", "tests.sandbox.unrestricted_zygote")
    async with MemoryStore() as store, Orchestrator(store, executors={"local": local}) as orchestrator:
        attacker = await orchestrator.run(flow("attacker", PLANT))
        victim = await orchestrator.run(flow("victim", VICTIM, {"secret": "s3cret"}))
        collector = await orchestrator.run(flow("collector", COLLECT))

    assert attacker.steps["s"].outputs == {"planted": True}
    assert victim.status == RunStatus.SUCCEEDED
    assert victim.steps["s"].outputs == {"doubled": "s3crets3cret"}  # untouched
    seen = collector.steps["s"].outputs["seen"]
    assert ({"secret": "s3cret"} in seen) is victim_leaks, seen
