"""The guard's decisions in time, without ROS: free chunks are decided at once on the caller's thread,
fallbacks on the planning thread, and the planning budget bounds a fallback even when the planner is
stuck; what the guard node logs and reports about it."""
import threading
import time

import numpy as np
import pytest

from diffusion_policy_ros.collision.activity import REPEAT_WARN_S, GuardActivity
from diffusion_policy_ros.collision.checker import CollisionChecker
from diffusion_policy_ros.collision.guard import CollisionGuard, TrajectoryChunk
from diffusion_policy_ros.collision.planner import FallbackPlanner, MotionLimits
from diffusion_policy_ros.collision.robot_model import RobotModel
from diffusion_policy_ros.collision.scene import Scene, SceneObject
from diffusion_policy_ros.collision.scene_overlay import MarkerScene
from diffusion_policy_ros.collision.session import PLAN_DEADLINE_SLACK_S, GuardSession
from diffusion_policy_ros.control.limits import JointLimits
from diffusion_policy_ros.control.measurement import LatestJointPositions, MeasurementRules
from diffusion_policy_ros.robot_description import PANDA_HOME, PANDA_JOINTS

HOME = np.array(PANDA_HOME)
MEASURED = dict(zip(PANDA_JOINTS, PANDA_HOME))
BOX = SceneObject('box', 'box', (0.1, 0.1, 0.3), (0.25, 0.25, 0.5))
BUDGET_S = 2.0  # (the planner's own budget is 1 s)
STUCK_BUDGET_S = 0.1
WAIT_S = 20.0


@pytest.fixture(scope='module')
def panda():
    model, _ = RobotModel.from_parameters()
    return model


class SlowPlanner:
    """The real planner, after `delay_s` (a planning thread starved or stuck)."""

    def __init__(self, planner, delay_s):
        self.planner, self.delay_s, self.calls = planner, delay_s, 0

    def plan_fallback(self, *args, **kwargs):
        self.calls += 1
        time.sleep(self.delay_s)
        return self.planner.plan_fallback(*args, **kwargs)


def chunk_towards(goal, points=16):
    positions = np.linspace(HOME, goal, points + 1)[1:]
    return TrajectoryChunk(tuple(PANDA_JOINTS), positions, np.arange(1, points + 1) * 0.1)


FREE = HOME + np.array([-0.3, 0, 0, 0.2, 0, 0, 0, 0])
BLOCKED = HOME + np.eye(8)[0] * 1.57  # sweeps the hand through the box


class Recorder:
    def __init__(self):
        self.acts, self.threads, self.event = [], [], threading.Event()

    def __call__(self, decision, context, arrived_ns, reaction):
        self.acts.append((decision, context, reaction))
        self.threads.append(threading.current_thread())
        self.event.set()

    def wait(self, count):
        deadline = time.monotonic() + WAIT_S
        while len(self.acts) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.acts) >= count, f'{len(self.acts)} decisions, expected {count}'
        return self.acts[count - 1]


def make_session(panda, delay_s=0.0, measured=MEASURED, problem=None, blocking_checks=False, budget_s=BUDGET_S):
    checker = CollisionChecker(panda, Scene([BOX]), padding=0.01)
    planner = FallbackPlanner(checker, MotionLimits.from_model(panda), time_budget_s=1.0, control_period=0.1,
                              seed=3)
    guard = CollisionGuard(checker, SlowPlanner(planner, delay_s))
    recorder = Recorder()
    session = GuardSession(guard, budget_s, lambda: (measured, problem), recorder, blocking_checks=blocking_checks)
    session.active = True
    return session, recorder


def test_a_free_chunk_is_passed_at_once_on_the_callers_thread_with_its_context(panda):
    session, recorder = make_session(panda)
    try:
        session.review(chunk_towards(FREE), 'the message', 0, 0.0, '/proposed')
        assert len(recorder.acts) == 1  # synchronously
        decision, context, reaction = recorder.acts[0]
        assert decision.action == 'pass' and context == 'the message' and reaction is None
        assert recorder.threads[0] is threading.current_thread()
    finally:
        session.stop()


def test_a_blocked_chunk_is_replaced_by_a_fallback_planned_on_the_planning_thread(panda):
    session, recorder = make_session(panda)
    try:
        session.review(chunk_towards(BLOCKED), 'msg', 0, 0.0, '/proposed')
        assert recorder.acts == []  # the executor is free while it plans
        decision, context, _ = recorder.wait(1)
        assert decision.action == 'replace' and context == 'msg'
        assert recorder.threads[0].name == 'guard-planner'
    finally:
        session.stop()


def test_a_stuck_planner_is_bounded_by_the_budget_and_its_late_plan_is_dropped(panda):
    session, recorder = make_session(panda, delay_s=1.0, budget_s=STUCK_BUDGET_S)
    try:
        started = time.monotonic()
        session.review(chunk_towards(BLOCKED), 'msg', 0, 0.0, '/proposed')
        decision, _, _ = recorder.wait(1)
        held_after = time.monotonic() - started
        assert decision.action == 'hold' and 'planning budget' in decision.reason
        assert len(decision.trajectory.positions) == 1
        assert STUCK_BUDGET_S <= held_after < STUCK_BUDGET_S + PLAN_DEADLINE_SLACK_S + 0.5
        time.sleep(1.5)  # the plan comes late: it must not replace the hold
        assert [d.action for d, _, _ in recorder.acts] == ['hold']
        assert session.guard.counters.plans_superseded == 1
    finally:
        session.stop()


def test_nothing_is_sent_once_the_session_is_inactive(panda):
    session, recorder = make_session(panda, delay_s=0.3)
    try:
        session.review(chunk_towards(BLOCKED), 'msg', 0, 0.0, '/proposed')
        session.active = False  # deactivated while it plans
        time.sleep(0.8)
        assert recorder.acts == []
    finally:
        session.stop()


def test_an_untrusted_measurement_rejects_the_chunk_and_a_blocking_backend_reviews_off_the_caller(panda):
    session, recorder = make_session(panda, problem='joint state of panda_joint1 is 0.70 s old')
    try:
        session.review(chunk_towards(FREE), 'msg', 0, 0.0, '/proposed')
        decision, _, _ = recorder.acts[0]
        assert decision.action == 'reject' and '0.70 s old' in decision.reason
    finally:
        session.stop()
    session, recorder = make_session(panda, blocking_checks=True)
    try:
        session.review(chunk_towards(FREE), 'msg', 0, 0.0, '/proposed')
        decision, _, _ = recorder.wait(1)
        assert decision.action == 'pass' and recorder.threads[0].name == 'guard-planner'
    finally:
        session.stop()


def test_a_scene_change_cuts_what_the_arm_executes_and_plans_on(panda):
    session, recorder = make_session(panda)
    try:
        session.guard.checker.scene.set_objects([])
        session.review(chunk_towards(BLOCKED), 'msg', 0, session.guard.clock(), '/proposed')
        assert recorder.acts[0][0].action == 'pass'
        session.guard.record_sent(recorder.acts[0][0].trajectory, session.guard.clock())
        session.guard.checker.scene.set_objects([BOX])
        session.scene_changed(0)
        decision, context, reaction = recorder.acts[1]
        assert decision.action in ('replace', 'hold') and reaction == 'scene' and context is None
    finally:
        session.stop()


def test_a_scene_change_while_the_joint_state_is_stale_still_stops_the_arm(panda):
    """The session used to return at once when the measurement was untrusted, and the arm went on into
    the new object."""
    state = {'problem': None}
    session, recorder = make_session(panda)
    session.measure = lambda: (MEASURED, state['problem'])
    try:
        session.guard.checker.scene.set_objects([])
        session.review(chunk_towards(BLOCKED), 'msg', 0, session.guard.clock(), '/proposed')
        assert recorder.acts[0][0].action == 'pass'
        session.guard.record_sent(recorder.acts[0][0].trajectory, session.guard.clock())
        state['problem'] = 'joint state of panda_joint1 on /joint_states is 0.70 s old by its arrival'
        session.guard.checker.scene.set_objects([BOX])
        session.scene_changed(0)
        assert len(recorder.acts) == 2, 'the scene change sent nothing'
        decision, context, reaction = recorder.acts[1]
        assert decision.action == 'hold' and reaction == 'scene' and '0.70 s old' in decision.reason
    finally:
        session.stop()


def test_the_same_contact_is_one_warning_a_minute_and_the_status_reports_what_happened(panda, monkeypatch):
    session, recorder = make_session(panda)
    activity = GuardActivity()
    try:
        session.review(chunk_towards(BLOCKED), 'msg', 0, 0.0, '/proposed')
        replaced = recorder.wait(1)[0]
    finally:
        session.stop()
    now = [1000.0]
    monkeypatch.setattr('diffusion_policy_ros.collision.activity.time.monotonic', lambda: now[0])
    assert activity.decision(replaced, 0.05).kind == 'new_contact'
    now[0] += REPEAT_WARN_S / 2
    assert activity.decision(replaced, 0.05).kind == 'repeated_contact'
    now[0] += REPEAT_WARN_S
    assert activity.decision(replaced, 0.05).kind == 'new_contact'
    activity.scene_update(1, ['marker 3: unknown frame'])
    limits = JointLimits(PANDA_JOINTS, panda.limits.lower, panda.limits.upper, panda.limits.velocity)
    joints = LatestJointPositions(limits, MeasurementRules(), '/joint_states', 0.5)
    status = activity.status(session.guard, MarkerScene(session.guard.checker.scene, [BOX], ['panda_link0']),
                             'embedded', joints, None)
    assert status.last_action == 'replace' and status.blocked_chunks == 1 and status.fallbacks_planned == 1
    assert status.scene_updates == 1 and status.markers_ignored == 1 and status.joint_state == 'fresh'
    assert status.output_latency_blocked_p50_ms == pytest.approx(50.0) and status.scene_objects == 'box'


def test_the_warm_up_plans_on_the_planning_thread_and_leaves_the_scene_as_it_was(panda):
    """What the warm-up allocates must be allocated by the threads that will do the work in service
    (glibc keeps a heap per thread): scene rebuilds in both checkers, one full search on the planner's."""
    from diffusion_policy_ros.collision.config import CollisionGuardConfig
    from diffusion_policy_ros.collision.moveit_backend import WARM_UP_PROBE, CollisionBackend, select_backend
    scene = Scene([BOX])
    backend, _ = select_backend('embedded', panda, CollisionGuardConfig(), scene=scene)
    session = GuardSession(CollisionGuard(backend.checker, backend.planner), BUDGET_S, lambda: (MEASURED, None),
                           Recorder())
    threads = []
    original_search = backend.planner._search

    def recording_search(*args):
        threads.append(threading.current_thread().name)
        return original_search(*args)
    backend.planner._search = recording_search
    try:
        version = scene.snapshot()[0]
        message = backend.warm_up(session.on_planning_thread)
        assert message.startswith('warm-up: trial fallback plan'), message
        assert threads == ['guard-planner']  # the search ran, and where plans run
        assert [o.name for o in scene.objects()] == ['box'] and scene.snapshot()[0] == version + 2  # probe in, out
        assert WARM_UP_PROBE.name not in backend.planner.checker._body_names  # both rebuilt without it
        assert WARM_UP_PROBE.name not in backend.checker._body_names
    finally:
        session.stop()
    assert CollisionBackend('moveit', None, None).warm_up() == 'warm-up: none (move_group plans)'


def test_one_deadline_thread_fires_the_newest_deadline_only():
    from diffusion_policy_ros.worker_thread import LatestDeadline
    fired, errors = [], []
    deadline = LatestDeadline('test-deadline', on_error=errors.append)
    try:
        armed = time.monotonic()
        deadline.arm(0.2, lambda: fired.append(('first', time.monotonic() - armed)))
        deadline.arm(0.1, lambda: fired.append(('second', time.monotonic() - armed)))  # replaces the first
        time.sleep(0.5)
        assert [name for name, _ in fired] == ['second'] and fired[0][1] >= 0.1
        deadline.arm(0.0, lambda: 1 / 0)  # a failing action is reported and the thread goes on
        time.sleep(0.2)
        assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)
        deadline.arm(0.05, lambda: fired.append(('third', 0.0)))
        time.sleep(0.3)
        assert [name for name, _ in fired] == ['second', 'third']
        deadline.arm(0.2, lambda: fired.append(('after stop', 0.0)))  # dropped by the stop
    finally:
        assert deadline.stop()
    time.sleep(0.3)
    assert ('after stop', 0.0) not in fired
    threads_before = threading.active_count()
    for _ in range(20):
        deadline.arm(0.01, lambda: None)  # stopped: arming starts nothing
    assert threading.active_count() == threads_before
