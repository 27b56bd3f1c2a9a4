"""The inference worker: never blocks the caller, newest window wins, survives errors, stops cleanly."""
import threading

import numpy as np
import pytest

from diffusion_policy_ros.control.health import HoldCode, HoldReason
from diffusion_policy_ros.control.inference_worker import InferenceWorker
from diffusion_policy_ros.control.observation import ObservationWindow

DT, N_OBS, HORIZON = 0.1, 2, 16
WAIT = 10.0  # generous bound for thread hand-offs on a loaded 2-core machine; not a timing assertion


def window(obs_time: float) -> ObservationWindow:
    return ObservationWindow(images={'cam': np.zeros((N_OBS, 4, 4, 3), np.uint8)},
                             state=np.full((N_OBS, 2), obs_time, np.float32), obs_time=obs_time,
                             sample_times=np.array([obs_time - DT, obs_time]),
                             stamps={'joint_states': np.array([obs_time - DT, obs_time])})


class GatedPolicy:
    """A fake policy that blocks inside inference until the test opens the gate."""

    n_obs_steps = N_OBS
    horizon = HORIZON

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        self.seen: list[float] = []

    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        self.seen.append(float(obs['state'][-1, 0]))
        self.entered.release()
        assert self.gate.wait(WAIT)
        return np.full((HORIZON, 2), obs['state'][-1, 0])


class Source:
    """What the node's window_fn does: build a window from whatever is newest right now."""

    def __init__(self) -> None:
        self.obs_time = 0.0

    def __call__(self) -> ObservationWindow:
        return window(self.obs_time)


def run_without_blocking(fn) -> None:
    """Run fn in a helper thread; it must return while the policy is stuck inside inference."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (fn(), done.set()), daemon=True)
    thread.start()
    assert done.wait(WAIT), 'the caller was blocked by inference'


def test_slow_policy_does_not_block_the_caller_and_newest_window_wins():
    policy, source = GatedPolicy(), Source()
    chunks = []
    worker = InferenceWorker(policy.predict_action_chunk, source, chunks.append, n_obs_steps=N_OBS, dt=DT)
    worker.start()
    try:
        source.obs_time = 1.0
        worker.notify()
        assert policy.entered.acquire(timeout=WAIT)  # inference on t=1.0 is now stuck
        for k in range(2, 6):  # the 10 Hz timer keeps ticking while the policy is slow
            source.obs_time = float(k)
            run_without_blocking(worker.notify)
            run_without_blocking(worker.take_chunk)
            run_without_blocking(worker.latest_chunk)
        policy.gate.set()
        assert policy.entered.acquire(timeout=WAIT)
        assert worker.stop()
    finally:
        policy.gate.set()
        worker.stop()
    assert policy.seen == [1.0, 5.0]  # windows 2..4 were never queued
    assert [c.obs_time for c in chunks] == [1.0, 5.0]
    chunk = worker.take_chunk()
    assert chunk.obs_time == 5.0 and chunk.obs_row == N_OBS - 1
    assert chunk.t0 == pytest.approx(5.0 - DT)
    assert worker.take_chunk() is None  # the slot is single and emptied by take
    assert worker.latest_chunk() is chunk
    assert len(worker.latency) == 2 and worker.latency.p50 > 0


def test_same_observation_is_not_inferred_twice():
    calls, produced, asked = [], threading.Event(), threading.Semaphore(0)

    def window_fn():
        asked.release()
        return window(1.0)  # no new data arrives

    worker = InferenceWorker(lambda obs: calls.append(1) or np.zeros((HORIZON, 2)), window_fn,
                             lambda chunk: produced.set(), n_obs_steps=N_OBS, dt=DT)
    worker.start()
    worker.notify()
    assert produced.wait(WAIT) and asked.acquire(timeout=WAIT)
    worker.notify()  # a tick: the worker looks again, finds the same observation
    assert asked.acquire(timeout=WAIT)
    assert worker.stop()
    assert len(calls) == 1 and worker.stats.windows_skipped >= 1


def test_exception_is_reported_as_inference_error_and_the_worker_keeps_running():
    source = Source()
    errors, chunks = [], []
    error_seen, chunk_seen = threading.Event(), threading.Event()

    def policy(obs):
        if obs['state'][-1, 0] < 2.0:
            raise RuntimeError('CUDA out of memory (simulated)')
        return np.zeros((HORIZON, 2))

    worker = InferenceWorker(policy, source, lambda c: (chunks.append(c), chunk_seen.set()),
                             n_obs_steps=N_OBS, dt=DT,
                             on_error=lambda r: (errors.append(r), error_seen.set()))
    worker.start()
    try:
        source.obs_time = 1.0
        worker.notify()
        assert error_seen.wait(WAIT)
        assert worker.last_error.code is HoldCode.INFERENCE_ERROR
        assert 'CUDA out of memory' in worker.last_error.text and 't=1.000' in worker.last_error.text
        assert worker.running
        source.obs_time = 2.0
        worker.notify()
        assert chunk_seen.wait(WAIT)
        assert worker.last_error is None  # cleared by a success
    finally:
        assert worker.stop()
    assert worker.stats.errors == 1 and len(chunks) == 1


def test_malformed_policy_output_is_an_inference_error():
    error_seen = threading.Event()
    worker = InferenceWorker(lambda obs: np.zeros(5), lambda: window(1.0), n_obs_steps=N_OBS, dt=DT,
                             on_error=lambda r: error_seen.set())
    worker.start()
    worker.notify()
    assert error_seen.wait(WAIT)
    assert worker.stop()
    assert 'shape' in worker.last_error.text and worker.take_chunk() is None


def test_window_hold_reasons_are_skipped_without_calling_the_policy():
    calls, asked = [], threading.Event()

    def window_fn():
        asked.set()
        return HoldReason(HoldCode.STALE_OBSERVATION, 'camera stale', '/camera')

    worker = InferenceWorker(lambda obs: calls.append(obs), window_fn, n_obs_steps=N_OBS, dt=DT)
    worker.start()
    worker.notify()
    assert asked.wait(WAIT)
    assert worker.stop()
    assert calls == [] and worker.last_error is None


def test_warmup_runs_in_the_caller_before_start_and_stop_joins():
    calls = []
    worker = InferenceWorker(lambda obs: calls.append(threading.current_thread().name) or np.zeros((4, 1)),
                             lambda: None, n_obs_steps=N_OBS, dt=DT)
    latencies = worker.warmup(window(0.0).as_policy_input(), iterations=3)
    assert len(latencies) == 3 and calls == [threading.current_thread().name] * 3
    worker.start()
    with pytest.raises(RuntimeError, match='before start'):
        worker.warmup({}, iterations=1)
    assert worker.stop()
    assert not worker.running
