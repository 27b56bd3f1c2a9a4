"""Chunk execution: latency compensation, receding horizon, blending at chunk boundaries."""
import math

import numpy as np
import pytest

from diffusion_policy_ros.control.chunks import ActionChunk, ChunkExecutor, ExecutorConfig

DT = 0.1
N_OBS = 2


def ramp_chunk(obs_time: float, horizon: int = 16, action_dim: int = 2) -> ActionChunk:
    """Row i holds the value i in every joint, so a commanded point tells which row it came from."""
    actions = np.repeat(np.arange(horizon, dtype=float)[:, None], action_dim, axis=1)
    return ActionChunk.from_policy_output(actions, obs_time, N_OBS, DT)


def test_chunk_is_stamped_so_the_newest_observation_row_is_at_obs_time():
    chunk = ramp_chunk(obs_time=5.0)
    assert chunk.obs_row == N_OBS - 1
    assert chunk.t0 == pytest.approx(5.0 - DT)
    np.testing.assert_allclose(chunk.sample(5.0), [1.0, 1.0])
    np.testing.assert_allclose(chunk.sample(5.05), [1.5, 1.5])  # between rows: linear


def test_late_chunk_drops_passed_actions_and_starts_with_the_one_due_now():
    executor = ChunkExecutor(ExecutorConfig(blending='none', n_action_steps=8))
    executor.submit(ramp_chunk(obs_time=10.0))  # rows 1..8 are due at 10.0 .. 10.7
    points = executor.plan(now=10.3)  # arrived 0.3 s late
    np.testing.assert_allclose(points[:, 0], [4, 5, 6, 7, 8])
    assert executor.stats.dropped_actions == 3
    commanded = [points[0, 0]]
    for tick in range(1, 8):
        p = executor.plan(now=10.3 + tick * DT)
        if p is not None:
            commanded.append(p[0, 0])
    assert commanded == pytest.approx([4, 5, 6, 7, 8])  # never replays rows 1..3


def test_off_grid_tick_interpolates_instead_of_replaying():
    executor = ChunkExecutor(ExecutorConfig(blending='none'))
    executor.submit(ramp_chunk(obs_time=10.0))
    points = executor.plan(now=10.25)
    assert points[0, 0] == pytest.approx(3.5)
    assert executor.stats.dropped_actions == 3  # rows at 10.0, 10.1, 10.2 are in the past


def test_receding_horizon_executes_only_n_action_steps_from_the_newest_observation_row():
    executor = ChunkExecutor(ExecutorConfig(blending='none', n_action_steps=5))
    executor.submit(ramp_chunk(obs_time=0.0, horizon=16))
    first = executor.plan(now=0.0)
    np.testing.assert_allclose(first[:, 0], [1, 2, 3, 4, 5])
    commanded = []
    for tick in range(10):
        points = executor.plan(now=tick * DT)
        if points is None:
            break
        commanded.append(points[0, 0])
    assert commanded == pytest.approx([1, 2, 3, 4, 5])
    assert executor.plan(now=0.6) is None
    assert executor.stats.empty_plans >= 1


def test_no_chunk_and_too_old_chunk_give_no_plan():
    executor = ChunkExecutor(ExecutorConfig(max_chunk_age=0.25))
    assert executor.plan(now=1.0) is None
    executor.submit(ramp_chunk(obs_time=1.0))
    assert executor.plan(now=1.2) is not None
    assert executor.plan(now=1.3) is None  # still inside n_action_steps but older than max_chunk_age
    assert executor.stats.chunk_age == pytest.approx(0.3)


def test_chunk_from_an_older_observation_is_ignored():
    executor = ChunkExecutor(ExecutorConfig(blending='none'))
    assert executor.submit(ramp_chunk(obs_time=2.0))
    executor.plan(now=2.0)
    stale = ActionChunk.from_policy_output(np.full((16, 2), 99.0), 1.9, N_OBS, DT)
    assert not executor.submit(stale)
    assert executor.plan(now=2.1)[0, 0] == pytest.approx(2.0)
    assert executor.stats.chunks_skipped == 1


def test_only_the_newest_of_several_waiting_chunks_is_used():
    executor = ChunkExecutor(ExecutorConfig(blending='none'))
    executor.submit(ramp_chunk(obs_time=1.0))
    executor.submit(ActionChunk.from_policy_output(np.full((16, 2), 7.0), 1.1, N_OBS, DT))
    assert executor.plan(now=1.1)[0, 0] == pytest.approx(7.0)
    assert executor.stats.chunks_used == 1
    assert executor.stats.chunks_skipped == 1


def test_crossfade_starts_where_the_old_plan_was_and_ends_on_the_new_chunk():
    cfg = ExecutorConfig(blending='crossfade', crossfade_steps=4, n_action_steps=8)
    executor = ChunkExecutor(cfg)
    executor.submit(ActionChunk.from_policy_output(np.zeros((16, 1)), 0.0, N_OBS, DT))
    executor.plan(now=0.0)
    executor.submit(ActionChunk.from_policy_output(np.ones((16, 1)), 0.1, N_OBS, DT))
    points = executor.plan(now=0.2)
    # alpha = 0, 0.25, 0.5, 0.75, 1 over the 4 crossfade periods, then the new chunk alone
    np.testing.assert_allclose(points[:, 0], [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert executor.stats.last_boundary_step == pytest.approx(0.0)


def test_no_crossfade_from_a_chunk_that_already_ran_out():
    executor = ChunkExecutor(ExecutorConfig(blending='crossfade', crossfade_steps=4, n_action_steps=2))
    executor.submit(ActionChunk.from_policy_output(np.zeros((16, 1)), 0.0, N_OBS, DT))
    executor.plan(now=0.0)
    assert executor.plan(now=0.2) is None  # used up: the node holds
    executor.submit(ActionChunk.from_policy_output(np.ones((16, 1)), 0.3, N_OBS, DT))
    np.testing.assert_allclose(executor.plan(now=0.3)[:, 0], 1.0)


def test_hard_switch_jumps_to_the_new_chunk():
    executor = ChunkExecutor(ExecutorConfig(blending='none'))
    executor.submit(ActionChunk.from_policy_output(np.zeros((16, 1)), 0.0, N_OBS, DT))
    executor.plan(now=0.0)
    executor.submit(ActionChunk.from_policy_output(np.ones((16, 1)), 0.1, N_OBS, DT))
    np.testing.assert_allclose(executor.plan(now=0.2)[:, 0], 1.0)
    assert executor.stats.last_boundary_step == pytest.approx(1.0)


def test_temporal_ensemble_uses_act_exponential_weights_oldest_first():
    k = math.log(2.0)  # weights 1 (oldest), 1/2 (newer)
    executor = ChunkExecutor(ExecutorConfig(blending='temporal_ensemble', ensemble_decay=k))
    executor.submit(ActionChunk.from_policy_output(np.zeros((16, 1)), 0.0, N_OBS, DT))
    executor.plan(now=0.0)
    executor.submit(ActionChunk.from_policy_output(np.full((16, 1), 3.0), 0.1, N_OBS, DT))
    points = executor.plan(now=0.1)
    np.testing.assert_allclose(points[:, 0], 3.0 * 0.5 / 1.5)
    assert len(points) == 8  # the newest chunk's executable rows decide how far the plan reaches


def simulate_commanded_path(blending: str, seed: int, latency_ticks: int = 2, offset_scale: float = 0.6,
                            ticks: int = 150) -> tuple[np.ndarray, list[int], float]:
    """A policy that tracks a smooth reference, each chunk off by its own random offset, arriving
    `latency_ticks` periods after its observation. Returns the commanded points (the one due at each
    tick), the ticks where a new chunk took over, and the largest step inside any chunk."""
    rng = np.random.default_rng(seed)
    reference = lambda t: np.stack([np.sin(t), 0.5 * np.cos(0.7 * t + 1.0)], axis=-1)  # noqa: E731
    typical_step = np.abs(np.diff(reference(np.arange(0.0, 20.0, DT)), axis=0)).max()
    executor = ChunkExecutor(ExecutorConfig(blending=blending, n_action_steps=8))
    in_flight: list[tuple[int, ActionChunk]] = []
    commanded, boundaries, largest_inside = [], [], 0.0
    for tick in range(ticks):
        if tick % latency_ticks == 0:  # the worker starts on the newest observation when free
            obs_time = tick * DT
            rows = reference(obs_time - (N_OBS - 1) * DT + DT * np.arange(16))
            actions = rows + rng.uniform(-offset_scale, offset_scale, size=2) * typical_step
            largest_inside = max(largest_inside, np.abs(np.diff(actions, axis=0)).max())
            in_flight.append((tick + latency_ticks, ActionChunk.from_policy_output(actions, obs_time,
                                                                                   N_OBS, DT)))
        used_before = executor.stats.chunks_used
        for due, chunk in [c for c in in_flight if c[0] == tick]:
            executor.submit(chunk)
        in_flight = [c for c in in_flight if c[0] != tick]
        points = executor.plan(now=tick * DT)
        if points is None:
            assert not commanded, f'{blending}: no plan at tick {tick} in steady state'
            continue
        if executor.stats.chunks_used > used_before and commanded:
            boundaries.append(len(commanded))
        commanded.append(points[0])
    return np.array(commanded), boundaries, largest_inside


def largest_boundary_step(commanded: np.ndarray, boundaries: list[int]) -> float:
    return max(np.abs(commanded[i] - commanded[i - 1]).max() for i in boundaries)


@pytest.mark.parametrize('blending', ['crossfade', 'temporal_ensemble'])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_blending_keeps_boundary_steps_within_1_5x_the_steps_inside_chunks(blending, seed):
    commanded, boundaries, inside = simulate_commanded_path(blending, seed)
    assert len(boundaries) > 50
    assert largest_boundary_step(commanded, boundaries) <= 1.5 * inside


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_hard_switching_violates_the_boundary_bound_so_the_check_can_fail(seed):
    commanded, boundaries, inside = simulate_commanded_path('none', seed)
    assert largest_boundary_step(commanded, boundaries) > 1.5 * inside


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match='blending'):
        ExecutorConfig(blending='smooth')
    with pytest.raises(ValueError, match='non-finite'):
        ActionChunk(np.array([[0.0], [np.nan]]), t0=0.0, dt=DT, obs_time=0.0)
    with pytest.raises(ValueError, match='obs_time'):
        ActionChunk(np.zeros((4, 1)), t0=0.0, dt=DT, obs_time=1.0)
    executor = ChunkExecutor(ExecutorConfig())
    executor.submit(ramp_chunk(0.0, action_dim=2))
    with pytest.raises(ValueError, match='action_dim'):
        executor.submit(ramp_chunk(0.1, action_dim=3))
