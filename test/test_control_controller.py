"""A whole timer loop without ROS: fake clock, fake policy on the real worker thread."""
import threading
import time

import numpy as np
import pytest

from diffusion_policy_ros.control.chunks import ExecutorConfig
from diffusion_policy_ros.control.controller import ControllerConfig, PolicyController
from diffusion_policy_ros.control.health import HealthState, HoldCode
from diffusion_policy_ros.control.limits import JointLimits

DT = 0.1
JOINTS = ('j1', 'j2')
LIMITS = JointLimits(JOINTS, lower=[-1.0, -1.0], upper=[1.0, 1.0], max_velocity=[0.5, 0.5])
WAIT = 10.0


class FakePolicy:
    """Moves every joint towards 0.8 along a ramp; if gated, each inference waits for one permit."""

    n_obs_steps = 2
    horizon = 16

    def __init__(self, gated: bool = False) -> None:
        self.gated = gated
        self.permits = threading.Semaphore(0)
        self.calls = 0
        self.entered = threading.Event()

    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        assert obs['cam'].shape == (2, 8, 8, 3) and obs['state'].shape == (2, 2)
        self.entered.set()
        if self.gated:
            assert self.permits.acquire(timeout=WAIT)
        self.calls += 1
        start = obs['state'][-1].astype(float)
        ramp = np.linspace(0.0, 1.0, self.horizon)[:, None]
        return start + ramp * (0.8 - start)


class Rig:
    def __init__(self, policy: FakePolicy, replan: str = 'every_tick', **executor) -> None:
        self.now = 10.0
        self.position = np.zeros(2)
        cfg = ControllerConfig(n_obs_steps=2, max_obs_age_s=0.5, replan=replan,
                               executor=ExecutorConfig(control_period=DT, **executor))
        self.controller = PolicyController(policy.predict_action_chunk, ['cam'], LIMITS, cfg,
                                           clock=lambda: self.now,
                                           stream_names={'cam': '/camera', 'joint_states': '/js'})

    def publish(self, camera: bool = True) -> None:
        """The messages of one period, through the controller's checked inputs, as the node does."""
        if camera:
            assert self.controller.push_frame('cam', self.now, np.zeros((8, 8, 3), np.uint8), self.now) is None
        assert self.controller.push_joint_state(self.now, ['j2', 'j1'], self.position[::-1], self.now) is None

    def step(self, camera: bool = True, settle: bool = True):
        """One period: new messages, a tick, then (settle) let the worker handle that tick's wake-up, so
        the test runs the same on a fast or a loaded CPU."""
        self.now = round(self.now + DT, 6)
        self.publish(camera)
        wakeups = self.controller.worker.stats.wakeups
        result = self.controller.tick(self.now)
        if result.points is not None:
            self.position = result.points[0].copy()  # a perfect controller
        if settle and result.wants_chunk:
            self.wait(lambda: self.controller.worker.stats.wakeups > wakeups)
        return result

    def wait(self, condition) -> None:
        deadline = time.monotonic() + WAIT
        while not condition():
            assert time.monotonic() < deadline, 'the worker did not get there'
            time.sleep(0.0005)


def test_hold_until_data_and_chunk_then_run_within_limits():
    rig = Rig(FakePolicy())
    try:
        first = rig.controller.tick(rig.now)
        assert first.state is HealthState.HOLD and first.points is None  # nothing measured yet
        rig.controller.start(example_obs={'cam': np.zeros((2, 8, 8, 3), np.uint8),
                                          'state': np.zeros((2, 2), np.float32)})
        result = rig.step()
        assert result.reason.code in (HoldCode.NO_OBSERVATION, HoldCode.NO_CHUNK)
        np.testing.assert_allclose(result.points, [[0.0, 0.0]])  # hold = the measured position
        previous = rig.position.copy()
        running = 0
        for _ in range(30):
            result = rig.step()
            if result.state is HealthState.RUNNING:
                running += 1
                pts = np.vstack([previous, result.points])
                assert np.all(np.abs(np.diff(pts, axis=0)) <= 0.5 * DT + 1e-9)
                assert len(result.points) <= 8
            previous = rig.position.copy()
        assert running >= 20
        assert rig.position == pytest.approx([0.8, 0.8], abs=0.2)
        status = rig.controller.status(rig.now)
        assert status.state == 'RUNNING' and status.inference_latency_p50_ms > 0
    finally:
        assert rig.controller.shutdown()


def test_slow_inference_keeps_ticking_and_drops_late_actions():
    policy = FakePolicy(gated=True)
    rig = Rig(policy, blending='none')
    rig.publish()
    rig.controller.start()
    try:
        rig.step(settle=False)  # the worker starts on the window at t=10.1 and gets stuck in the policy
        assert policy.entered.wait(WAIT)
        for _ in range(5):  # every tick still returns: a HOLD at the measured pose
            result = rig.step(settle=False)
            assert result.state is HealthState.HOLD and result.reason.code is HoldCode.NO_CHUNK
        policy.permits.release()  # the chunk for the observation of 5 ticks ago arrives now
        rig.wait(lambda: rig.controller.worker.stats.chunks_produced >= 1)
        chunk = rig.controller.worker.latest_chunk()
        assert chunk.obs_time == pytest.approx(10.1)
        result = rig.step(settle=False)
        assert result.state is HealthState.RUNNING
        assert rig.controller.executor.current_chunk is chunk
        assert rig.controller.executor.stats.dropped_actions == 6  # rows due 10.1 .. 10.6
        # the first point is the row planned for now (row 1 + 6), commanded one period ahead and only
        # limited by the velocity clamp from the measured position
        due_now = chunk.actions[chunk.obs_row + 6]
        step = np.clip(due_now - np.zeros(2), -0.5 * DT, 0.5 * DT)
        np.testing.assert_allclose(result.points[0], step)
    finally:
        policy.permits.release(10)
        assert rig.controller.shutdown()


def test_estop_latches_and_camera_loss_holds_then_both_resume():
    rig = Rig(FakePolicy())
    rig.publish()
    rig.controller.start()
    try:
        def run_until(state, camera=True, ticks=40):
            for _ in range(ticks):
                result = rig.step(camera)
                if result.state is state:
                    return result
            raise AssertionError(f'never reached {state}')

        run_until(HealthState.RUNNING)
        rig.controller.set_estop()
        held = rig.step()
        assert held.reason.code is HoldCode.ESTOP and len(held.points) == 1
        calls = rig.controller.worker.stats.chunks_produced
        for _ in range(3):
            latched = rig.step()
            assert latched.reason.code is HoldCode.ESTOP and not latched.wants_chunk  # latched with good inputs
        time.sleep(0.05)
        assert rig.controller.worker.stats.chunks_produced == calls  # no inference while stopped
        rig.controller.clear_estop()
        run_until(HealthState.RUNNING)
        camera_stopped = rig.now
        stale = run_until(HealthState.HOLD, camera=False)
        assert stale.reason.code is HoldCode.STALE_OBSERVATION and '/camera' in stale.reason.text
        assert rig.now <= camera_stopped + 0.5 + DT + 1e-9
        run_until(HealthState.RUNNING)
        assert rig.controller.health.hold_seconds[HoldCode.ESTOP] > 0
    finally:
        assert rig.controller.shutdown()


def test_chunk_end_replanning_executes_each_chunk_before_asking_for_the_next():
    """Receding horizon: with replan='chunk_end' a chunk of 8 actions runs (nearly) to its end before the
    next inference is asked for, so a multimodal policy cannot flip modes every tick; 'every_tick' asks
    on every tick."""
    calls = {}
    for replan in ('chunk_end', 'every_tick'):
        policy = FakePolicy()
        rig = Rig(policy, replan=replan, n_action_steps=8)
        rig.publish()
        rig.controller.start()
        try:
            for _ in range(40):
                rig.step(settle=False)
                deadline = time.monotonic() + WAIT  # let a requested inference finish: the test is about
                while rig.controller.worker._wake.is_set() and time.monotonic() < deadline:  # when, not speed
                    time.sleep(0.0005)
                time.sleep(0.002)
        finally:
            assert rig.controller.shutdown()
        calls[replan] = policy.calls
    # 40 ticks of 8-action chunks: about 40 / 7 chunks when committing, one per tick otherwise.
    assert calls['chunk_end'] <= 10, calls
    assert calls['every_tick'] >= 25, calls


def test_clock_going_back_restarts_from_new_messages_instead_of_holding_for_the_jump():
    """A looped bag under use_sim_time or an NTP step moves the clock back: what was stored is then
    stamped in the future. The controller drops it and runs again on the next messages, instead of
    holding (and ignoring new chunks as older than the executed one) until the clock catches up."""
    rig = Rig(FakePolicy())
    rig.publish()
    rig.controller.start()
    try:
        for _ in range(40):
            if rig.step().state is HealthState.RUNNING:
                break
        assert rig.controller.status(rig.now).state == 'RUNNING'
        rig.now -= 30.0
        jumped = rig.step()
        assert 'clock went back 29.9' in jumped.log_message
        assert jumped.state is HealthState.HOLD and jumped.reason.code is not HoldCode.STALE_OBSERVATION
        np.testing.assert_allclose(jumped.points, [rig.position])  # holds where the arm is
        states = [rig.step().state for _ in range(10)]
        assert HealthState.RUNNING in states[:6], states
        assert all(s is HealthState.RUNNING for s in states[states.index(HealthState.RUNNING):])
    finally:
        assert rig.controller.shutdown()
