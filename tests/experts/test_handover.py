"""Hand-over experts: the rule that passes an episode from a get-up actor to the task's actor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masklam.envs.policies import CheckpointPolicy, mlp_actor, save_policy_checkpoint
from masklam.errors import UsageError
from masklam.experts.handover import RULES, save_handover
from masklam.experts.sac import evaluate

UNIT = np.ones(4, np.float32)


def random_policy(path, env_id, seed, state_dim=15, action_dim=4):
    torch.manual_seed(seed)
    save_policy_checkpoint(path, mlp_actor(state_dim, action_dim, [8]), env_id, state_dim, action_dim, [8])
    return CheckpointPolicy(path, env_id, state_dim, -np.ones(action_dim, np.float32), np.ones(action_dim, np.float32))


def hopper_state(rootz=-0.18, pitch=0.0, speed=0.0):
    state = np.zeros(15, np.float32)
    state[0], state[1], state[6:9] = rootz, pitch, speed
    return state


@pytest.fixture
def handover(tmp_path):
    getup = random_policy(tmp_path / "getup.pt", "dmc:hopper-stand", seed=1)
    main = random_policy(tmp_path / "main.pt", "dmc:hopper-hop", seed=2)
    save_handover("dmc:hopper-hop", tmp_path / "getup.pt", tmp_path / "main.pt", tmp_path / "handover.pt", start_pitch_below=0.6)
    return CheckpointPolicy(tmp_path / "handover.pt", "dmc:hopper-hop", 15, -UNIT, UNIT), getup, main


def test_forward_starts_go_to_the_main_policy_at_once(handover):
    policy, getup, main = handover
    policy.reset(None)
    first = hopper_state(rootz=0.0, pitch=1.0, speed=0.0)
    np.testing.assert_array_equal(policy.act(first), main.act(first))
    moving = hopper_state(rootz=-0.7, pitch=-2.0, speed=3.0)  # down on its back: main stays in charge
    np.testing.assert_array_equal(policy.act(moving), main.act(moving))


def test_backward_starts_get_up_first_and_hand_over_once_standing_still(handover):
    policy, getup, main = handover
    hold = RULES["hopper"]["hold_steps"]
    policy.reset(None)
    start = hopper_state(rootz=0.0, pitch=-1.0, speed=0.0)
    np.testing.assert_array_equal(policy.act(start), getup.act(start))
    still, moving = hopper_state(), hopper_state(speed=1.0)
    for _ in range(hold - 1):
        np.testing.assert_array_equal(policy.act(still), getup.act(still))
    np.testing.assert_array_equal(policy.act(moving), getup.act(moving))  # moving again: the count starts over
    for _ in range(hold - 1):
        np.testing.assert_array_equal(policy.act(still), getup.act(still))
    np.testing.assert_array_equal(policy.act(still), main.act(still))  # the hold-th still step in a row
    np.testing.assert_array_equal(policy.act(moving), main.act(moving))  # and main keeps it
    policy.reset(None)  # a new episode picks again
    np.testing.assert_array_equal(policy.act(start), getup.act(start))
    assert not np.allclose(getup.act(still), main.act(still))  # the two actors differ, so the checks above bite


def test_evaluation_resets_the_policy_every_episode(handover):
    policy, _, _ = handover
    resets = []
    evaluate(policy.act, "dmc:hopper-hop", 3, seed=0, episode_steps=5, reset=lambda: resets.append(policy.reset(None)))
    assert len(resets) == 3


def test_bad_parts_are_refused(tmp_path):
    random_policy(tmp_path / "stand.pt", "dmc:hopper-stand", seed=1)
    random_policy(tmp_path / "hop.pt", "dmc:hopper-hop", seed=2)
    random_policy(tmp_path / "cheetah.pt", "dmc:cheetah-run", seed=3, state_dim=17, action_dim=6)
    out = tmp_path / "out.pt"
    with pytest.raises(UsageError, match="trained for dmc:hopper-stand, not dmc:hopper-hop"):
        save_handover("dmc:hopper-hop", tmp_path / "stand.pt", tmp_path / "stand.pt", out, 0.6)
    with pytest.raises(UsageError, match="another body"):
        save_handover("dmc:hopper-hop", tmp_path / "cheetah.pt", tmp_path / "hop.pt", out, 0.6)
    with pytest.raises(UsageError, match="hand-over experts are for hopper"):
        save_handover("dmc:cheetah-run", tmp_path / "cheetah.pt", tmp_path / "cheetah.pt", out, 0.6)
    with pytest.raises(UsageError, match="does not exist"):
        save_handover("dmc:hopper-hop", tmp_path / "missing.pt", tmp_path / "hop.pt", out, 0.6)
    assert not out.exists()
    save_handover("dmc:hopper-hop", tmp_path / "stand.pt", tmp_path / "hop.pt", out, 0.6)
    with pytest.raises(UsageError, match="itself a hand-over"):
        save_handover("dmc:hopper-hop", out, tmp_path / "hop.pt", tmp_path / "again.pt", 0.6)


def test_the_command_writes_a_policy_that_evaluates_and_refuses_bad_input_with_exit_2(masklam_cli, tmp_path):
    random_policy(tmp_path / "stand.pt", "dmc:hopper-stand", seed=1)
    random_policy(tmp_path / "hop.pt", "dmc:hopper-hop", seed=2)
    made = masklam_cli(
        "expert", "handover", "dmc:hopper-hop", "--getup", str(tmp_path / "stand.pt"), "--main", str(tmp_path / "hop.pt"), "--out", str(tmp_path / "h.pt")
    )
    assert made.returncode == 0, made.stderr
    scored = masklam_cli("expert", "eval", "dmc:hopper-hop", "--checkpoint", str(tmp_path / "h.pt"), "--episodes", "1", "--json")
    assert scored.returncode == 0 and '"episodes": 1' in scored.stdout, scored.stderr
    refused = masklam_cli(
        "expert", "handover", "dmc:hopper-hop", "--getup", str(tmp_path / "nothing.pt"), "--main", str(tmp_path / "hop.pt"), "--out", str(tmp_path / "bad.pt")
    )
    assert refused.returncode == 2 and "does not exist" in refused.stderr and not (tmp_path / "bad.pt").exists()
