"""Real MuJoCo rendering on tiny budgets: masks, distractors, determinism, bad input."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from masklam.envs.env import DistractingEnv
from masklam.envs.spec import DistractorSpec, EnvSpec, RenderSpec, distractor_preset, parse_env_id
from masklam.errors import UsageError

SIZE = 48


def make(env_id: str, distractors: DistractorSpec = DistractorSpec(), size: int = SIZE, split: str = "train") -> DistractingEnv:
    return DistractingEnv(EnvSpec(env_id, RenderSpec(size=size), distractors, episode_steps=20), split)


def rollout(env: DistractingEnv, seed: int, steps: int = 6):
    observations = [env.reset(seed)]
    actions = np.random.default_rng(seed).uniform(env.action_low, env.action_high, (steps, len(env.action_low)))
    for action in actions:
        observations.append(env.step(action).observation)
    return observations


def geom_names_of_body(model: mujoco.MjModel, body: str) -> set[int]:
    body_id = model.body(body).id
    return {g for g in range(model.ngeom) if model.geom_bodyid[g] == body_id}


@pytest.mark.parametrize(
    ("env_id", "agent_body", "not_agent"),
    [
        ("dmc:cheetah-run", "torso", ["ground"]),
        ("dmc:finger-spin", "proximal", ["spinner", "ground"]),  # the spinner is an unactuated tree
        ("dmc:reacher-easy", "arm", ["target", "ground"]),
        ("metaworld:push-v3", "hand", ["obj", "tablelink", "pedestal"]),
    ],
)
def test_agent_geoms_cover_agent_only(env_id, agent_body, not_agent):
    with make(env_id) as env:
        model = env.sim.model
        agent = set(env.sim.agent_geoms.tolist())
        assert geom_names_of_body(model, agent_body) <= agent
        for name in not_agent:
            try:
                others = geom_names_of_body(model, name)
            except KeyError:
                others = {model.geom(name).id}
            assert others and not (others & agent), name
        observation = env.reset(0)
        coverage = observation.mask.mean()
        assert 0.003 < coverage < 0.4
        assert set(np.unique(observation.mask)) <= {0, 1}
        assert observation.rgb.shape == (SIZE, SIZE, 3) and observation.rgb.dtype == np.uint8


def paint_agent_red(env: DistractingEnv) -> None:
    """Give the agent a flat, emissive red that no other geom has, to find it in RGB alone."""
    model = env.sim.model
    model.geom_matid[env.sim.agent_geoms] = -1
    model.geom_rgba[env.sim.agent_geoms] = [1.0, 0.0, 0.0, 1.0]
    model.light_active[:] = 0  # no shading: the agent renders as the same red at every angle
    model.vis.headlight.ambient[:] = 1.0
    model.vis.headlight.diffuse[:] = 0.0
    model.vis.headlight.specular[:] = 0.0
    others = np.setdiff1d(np.arange(model.ngeom), env.sim.agent_geoms)
    model.geom_rgba[others, 0] = np.minimum(model.geom_rgba[others, 0], 0.5)
    model.mat_rgba[:, 0] = np.minimum(model.mat_rgba[:, 0], 0.5)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_masks_stay_aligned_with_rgb_under_camera_shake():
    with make("dmc:cheetah-run", DistractorSpec(camera_scale=0.3), size=64) as env:
        paint_agent_red(env)
        scores = []
        for observation in rollout(env, seed=3, steps=8):
            red = (observation.rgb[..., 0] > 200) & (observation.rgb[..., 1] < 60) & (observation.rgb[..., 2] < 60)
            scores.append(iou(red, observation.mask.astype(bool)))
        assert min(scores) > 0.9, scores
    # ...and the shake really moved the camera: the agent is not where the unshaken camera sees it.
    with make("dmc:cheetah-run", DistractorSpec(camera_scale=0.3), size=64) as shaken, make("dmc:cheetah-run", size=64) as still:
        pairs = zip(rollout(shaken, seed=3, steps=8), rollout(still, seed=3, steps=8))
        assert any(iou(a.mask.astype(bool), b.mask.astype(bool)) < 0.8 for a, b in pairs)


def test_background_replaces_only_background_pixels():
    with make("dmc:walker-walk") as clean, make("dmc:walker-walk", distractor_preset("low")) as distracted:
        for a, b in zip(rollout(clean, 5), rollout(distracted, 5)):
            np.testing.assert_array_equal(a.mask, b.mask)
            np.testing.assert_array_equal(a.state, b.state)  # distractors never touch the physics
            agent = a.mask.astype(bool)
            np.testing.assert_array_equal(a.rgb[agent], b.rgb[agent])
            assert (a.rgb[~agent] != b.rgb[~agent]).any(axis=-1).mean() > 0.3
        assert "distractor_bg_frame" in b.distractor


def test_background_video_advances_and_metaworld_keeps_the_table():
    with make("metaworld:push-v3") as clean, make("metaworld:push-v3", distractor_preset("low")) as distracted:
        clean_obs, distracted_obs = rollout(clean, 2, 3), rollout(distracted, 2, 3)
    frames = [o.distractor["distractor_bg_frame"] for o in distracted_obs]
    assert len(set(np.diff(frames).tolist()) - {0}) > 0 and all(abs(d) == 1 for d in np.diff(frames))
    changed = (clean_obs[-1].rgb != distracted_obs[-1].rgb).any(-1)
    assert 0.1 < changed.mean() < 0.8  # the sky/floor changed, the table and robot did not
    assert not changed[distracted_obs[-1].mask.astype(bool)].any()


def test_metaworld_corner_camera_is_upright():
    with make("metaworld:push-v3") as env:
        mujoco.mj_forward(env.sim.model, env.sim.data)
        up = env.sim.data.cam_xmat[env.sim.camera].reshape(3, 3)[:, 1]
        assert up[2] > 0.5
        observation = env.reset(0)
        # Upright: the robot arm comes down from the top half of the frame onto the table below it.
        rows = np.flatnonzero(observation.mask.any(axis=1))
        assert rows.min() < SIZE // 2


@pytest.mark.parametrize(("env_id", "preset"), [("dmc:cheetah-run", "extreme"), ("metaworld:push-v3", "hard")])
def test_episodes_are_pure_functions_of_their_seed(env_id, preset):
    spec = distractor_preset(preset)
    with make(env_id, spec) as env:
        first, other, again = rollout(env, 7), rollout(env, 8), rollout(env, 7)
    with make(env_id, spec) as fresh:
        fresh_run = rollout(fresh, 7)
    for a, b, c in zip(first, again, fresh_run):
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.rgb, c.rgb)
        np.testing.assert_array_equal(a.mask, c.mask)
        for key in a.distractor:
            np.testing.assert_array_equal(a.distractor[key], c.distractor[key])
    assert not np.array_equal(first[-1].rgb, other[-1].rgb)


def test_train_and_test_splits_use_different_videos():
    with make("dmc:cheetah-run", distractor_preset("low"), split="train") as train, make("dmc:cheetah-run", distractor_preset("low"), split="test") as test:
        assert not set(train._background.pool.names) & set(test._background.pool.names)


def test_camera_and_colour_walks_stay_in_bounds():
    scale = 0.3
    with make("dmc:hopper-hop", DistractorSpec(camera_scale=scale, color_scale=scale)) as env:
        observations = rollout(env, 1, 15)
    camera = np.stack([o.distractor["distractor_camera"] for o in observations])
    assert np.all(np.abs(camera[:, :3]) <= np.pi / 2 * scale + 1e-6)
    assert np.all((camera[:, 3] >= 0.95 - 1e-6) & (camera[:, 3] <= 1.15 + 1e-6))
    assert np.abs(np.diff(camera[:, :2], axis=0)).max() <= 0.04 + 1e-6
    colour = np.stack([o.distractor["distractor_agent_color"] for o in observations])
    assert np.all(np.abs(colour) <= scale) and np.ptp(colour, axis=0).max() > 0


@pytest.mark.parametrize("env_id", ["dmc:cheetah-run", "metaworld:door-open-v3"])
def test_the_colour_state_can_be_read_from_the_frames_that_show_it(env_id):
    """A latent that holds the agent's mean pixel colour decodes the recorded colour state (issue 28: the old
    state, the mean offset over every drifting colour, averaged independent walks and no latent could hold it)."""
    from masklam.eval.probe import distractor_probe

    with make(env_id, DistractorSpec(background=True, color_scale=0.1)) as env:
        seen, every_colour, pixels, episodes = [], [], [], []
        for episode in range(12):
            for observation in rollout(env, episode, steps=3):
                pixels.append(observation.rgb[observation.mask.astype(bool)].mean(axis=0))
                seen.append(observation.distractor["distractor_agent_color"])
                every_colour.append(env._color._offset.mean(axis=0))
                episodes.append(episode)
    latent, episodes = np.array(pixels), np.array(episodes)
    assert distractor_probe(latent, np.array(seen), episodes)["r2"] > 0.8  # measured: 0.99 cheetah, 0.96 door
    assert distractor_probe(latent, np.array(every_colour), episodes)["r2"] < 0.2  # measured: about -0.1


def test_moving_objects_are_neither_agent_nor_background():
    with make("dmc:cheetah-run", DistractorSpec(objects=6)) as with_objects, make("dmc:cheetah-run") as without:
        pairs = list(zip(rollout(with_objects, 4, 10), rollout(without, 4, 10)))
    positions = np.stack([a.distractor["distractor_objects"] for a, _ in pairs])
    assert positions.shape[1:] == (6, 3) and np.abs(np.diff(positions, axis=0)).max() > 0  # they move on their own
    for a, b in pairs:
        # Objects can only hide agent pixels, never add to the mask.
        assert not (a.mask.astype(bool) & ~b.mask.astype(bool)).any()
        np.testing.assert_array_equal(a.state, b.state)
    assert any((a.rgb != b.rgb).any() for a, b in pairs)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: parse_env_id("dmc:cheetah-fly"), "unknown env"),
        (lambda: parse_env_id("cheetah-run"), "no suite"),
        (lambda: parse_env_id("atari:pong"), "unknown env suite"),
        (lambda: parse_env_id("metaworld:juggle"), "unknown env"),
        (lambda: distractor_preset("medium"), "unknown distractor preset"),
        (lambda: RenderSpec(size=8), "image size"),
        (lambda: DistractorSpec(camera_scale=2.0), "out of range"),
    ],
)
def test_bad_env_input_is_a_usage_error(build, message):
    with pytest.raises(UsageError, match=message):
        build()


def test_metaworld_ids_accept_short_names():
    assert str(parse_env_id("metaworld:push")) == "metaworld:push-v3"


LISTED_DMC = ["cheetah-run", "walker-run", "walker-walk", "hopper-hop", "humanoid-walk", "reacher-easy", "finger-spin", "cartpole-swingup"]
MT10 = ["reach", "push", "pick-place", "door-open", "drawer-open", "drawer-close", "button-press-topdown", "peg-insert-side", "window-open", "window-close"]


# Meta-World scenes render slower: push stays in the fast tier, the other nine are slow.
@pytest.mark.parametrize(
    "env_id", [f"dmc:{t}" for t in LISTED_DMC] + [pytest.param(f"metaworld:{t}-v3", marks=() if t == "push" else pytest.mark.slow) for t in MT10]
)
def test_every_listed_task_renders_its_agent(env_id):
    from masklam.envs.policies import make_policy

    with make(env_id, distractor_preset("low"), size=32) as env:
        policy = make_policy("expert" if env_id.startswith("metaworld") else "random", env)
        observation = env.reset(0)
        policy.reset(np.random.default_rng(0))
        for _ in range(3):
            action = np.clip(policy.act(observation.state), env.action_low, env.action_high)
            observation = env.step(action).observation
        assert observation.mask.any() and observation.mask.mean() < 0.6
        assert observation.rgb.shape == (32, 32, 3)
        assert observation.state.shape == (env.sim.state_dim,)


def test_another_task_of_the_domain_scores_the_current_state():
    from masklam.envs.dmc import DMCSimulator

    sim = DMCSimulator("cartpole-balance")
    sim.reset(np.random.default_rng(0))
    for _ in range(30):
        step = sim.step(np.ones(1))
        # The task's own reward, recomputed on the same state, is what the step paid.
        assert sim.reward_of("balance") == pytest.approx(step.reward)
    assert sim.reward_of("balance_sparse") in (0.0, 1.0)
    with pytest.raises(UsageError, match="no task cartpole-fly"):
        sim.reward_of("fly")
    with pytest.raises(UsageError, match="another model"):
        sim.reward_of("two_poles")


def test_height_fraction_goes_from_upside_down_to_standing():
    from masklam.envs.dmc import DMCSimulator

    sim = DMCSimulator("hopper-stand")
    sim.reset(np.random.default_rng(0))
    physics = sim._env.physics
    with physics.reset_context():
        physics.data.qpos[:] = 0  # upright, leg straight: the model's reference pose
    assert sim.height_fraction() == 1.0
    assert sim.reward_of("stand") > 0.5  # dm_control agrees this is standing
    with physics.reset_context():
        physics.named.data.qpos["rooty"] = np.pi / 2  # tipped over: torso level with the foot
    assert 0.3 < sim.height_fraction() < 0.7 and sim.reward_of("stand") < 0.05
    with physics.reset_context():
        physics.named.data.qpos["rooty"] = np.pi  # upside down: the foot a leg's length above the torso
    assert sim.height_fraction() < 0.15
    with pytest.raises(UsageError, match="no standing height"):
        DMCSimulator("cheetah-run").height_fraction()


def test_root_pitch_is_negative_tipped_backwards():
    from masklam.envs.dmc import DMCSimulator

    sim = DMCSimulator("hopper-hop")
    sim.reset(np.random.default_rng(0))
    physics = sim._env.physics
    with physics.reset_context():
        physics.data.qpos[:] = 0
        physics.named.data.qpos["rooty"] = -0.5
    assert sim.root_pitch() == pytest.approx(-0.5)
    # Backwards is against the hop's direction (+x): the torso behind the foot.
    assert physics.named.data.xpos["torso", "x"] < physics.named.data.xpos["foot", "x"] - 0.3
    with pytest.raises(UsageError, match="no pitch joint"):
        DMCSimulator("cartpole-swingup").root_pitch()
