"""Hand-over experts: a get-up policy from the starts a task's policy fails from, then that policy.

hopper-hop's SAC policy hops from starts tipped forwards but lies still after starts tipped backwards; a
policy trained on hopper-stand from backward starts only gets up from them and stands still. Together,
saved as one checkpoint, they act as one expert: ``CheckpointPolicy`` runs the rule.
"""

from __future__ import annotations

from pathlib import Path

from masklam.atomic import atomic_file
from masklam.envs.dmc import DMCSimulator
from masklam.envs.policies import HANDOVER_FORMAT_VERSION, HANDOVER_KIND, POLICY_FORMAT, load_policy_payload
from masklam.envs.spec import parse_env_id
from masklam.errors import UsageError

# Where each body's state holds what the rule reads, and when it counts as standing still: hopper's state is
# position (rootz, rooty, waist, hip, knee, ankle), velocity (rootx, rootz, rooty, ...), touch. Measured with
# the get-up policy standing: rootz -0.17 to -0.19, pitch -0.72 to 0.07, root speeds under 0.05.
RULES = {
    "hopper": {
        "pitch_index": 1,
        "height_index": 0,
        "height_above": -0.3,
        "pitch_within": [-0.8, 0.3],
        "velocity_indices": [6, 7, 8],
        "velocity_below": 0.3,
        "hold_steps": 10,
    },
}


def save_handover(env_id: str, getup: Path, main: Path, out: Path, start_pitch_below: float) -> dict:
    """Write a hand-over checkpoint for ``env_id``: ``getup`` (a policy of the same body, any task) from starts
    pitched below ``start_pitch_below``, until the body stands still, then ``main`` (a policy for ``env_id``)."""
    env = parse_env_id(env_id)
    if env.suite != "dmc":
        raise UsageError(f"hand-over experts are for DMC tasks, not {env_id}")
    domain = env.task.split("-", 1)[0]
    if domain not in RULES:  # before loading a simulator for it
        raise UsageError(f"hand-over experts are for {', '.join(RULES)}, not {domain}")
    sim = DMCSimulator(env.task)
    state_dim, action_dim = sim.state_dim, len(sim.action_low)
    sim.close()
    actors = {}
    for name, path, expected in (("getup", getup, None), ("main", main, env_id)):
        payload = load_policy_payload(path)
        if payload.get("kind") == HANDOVER_KIND:
            raise UsageError(f"{path} is itself a hand-over: pass single policies as --getup and --main")
        if expected is not None and payload["env_id"] != expected:
            raise UsageError(f"--main {path} was trained for {payload['env_id']}, not {env_id}: pass a policy for {env_id}")
        if parse_env_id(payload["env_id"]).task.split("-", 1)[0] != domain or (payload["state_dim"], payload["action_dim"]) != (state_dim, action_dim):
            raise UsageError(f"--{name} {path} was trained for {payload['env_id']}, another body than {env_id}'s: pass a policy of the {domain}")
        actors[name] = {key: payload[key] for key in ("env_id", "hidden", "state_dict", "extra")}
    rule = {**RULES[domain], "start_pitch_below": float(start_pitch_below)}
    payload = {
        "format": POLICY_FORMAT,
        "version": HANDOVER_FORMAT_VERSION,
        "kind": HANDOVER_KIND,
        "env_id": env_id,
        "state_dim": state_dim,
        "action_dim": action_dim,
        "actors": actors,
        "rule": rule,
    }
    import torch

    with atomic_file(Path(out)) as f:
        torch.save(payload, f)
    return rule
