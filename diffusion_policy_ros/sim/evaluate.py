"""`dp-ros eval`: closed-loop success rate of a checkpoint in the simulator, on held-out seeds.

The loop is the policy node's, on sim time. Each 10 Hz tick goes through the node's own
`PolicyController.tick` (observation history -> executor plan -> health -> clamp_trajectory, HOLD on
faults), and the node's publishing rule (drop point 0, the rest one control period apart) feeds
`SimArm.command_trajectory`. Only the inference thread is replaced: `SimTimeInference` runs the policy
synchronously while the sim is paused, stamps the chunk with its observation time and hands it to the
executor `latency_s` of SIM time later, at the first tick at or after that. The executor therefore
drops the actions that went stale during inference, exactly as on the robot, and a run is
reproducible whatever the machine's load (wall-clock latency is measured and reported, but does not
change what happens).

Latency default: the median wall-clock latency of warm-up calls, rounded up to whole control periods
(at least one period: the node takes a chunk at the tick after the one that asked for it, and so does
this loop). While a chunk is "in flight" no new inference starts, as with the node's single worker.

Held-out seeds: `dp-ros demos` records seeds 0, 1, 2, ... (one per attempt), so evaluation starts at
`DEFAULT_EVAL_SEED` = 1000 and uses seeds `seed, seed + 1, ...`; each episode seeds the sampler's
torch generator with its sim seed, so a report is reproducible.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..control.chunks import BLENDING_MODES, ActionChunk
from ..control.controller import ControllerConfig, PolicyController
from ..control.inference_worker import WorkerStats
from ..control.limits import JointLimits
from ..control.observation import ObservationWindow, example_observation
from ..control.stats import RollingPercentiles
from ..core.config import ExecutionConfig, ExecutionSettings
from ..data.image_codec import prepare_model_image
from ..data.windows import save_windows
from ..robot_description import PANDA_JOINTS, panda_description
from .arm import SimArm, SimConfig
from .model import ALL_TASKS, base_task, mujoco
from .rollout import rollout
from ..jsonio import json_safe, write_json
from ..errors import UserError

DEFAULT_EVAL_SEED = 1000  # demos use seeds 0..N-1 (+ retries): evaluation starts well past them
GIF_SIZE = (192, 192)  # (H, W) of the episode GIF: larger than the policy's 96x96 so people can see it
# The node's default (config/policy.yaml), so the evaluated execution is the deployed one; how chunks
# are executed comes from the checkpoint for both (PolicyConfig.execution_config).
NODE_MAX_OBS_AGE_S = 0.5
# Checkpoint camera key -> sim camera. `config/dataset_sim.yaml` names the scene camera's topic
# (/camera/color/image_raw) 'camera'; a key equal to a sim camera's name maps to it.
DEFAULT_CAMERA_MAP: dict[str, str] = {'camera': 'scene', 'scene': 'scene', 'wrist': 'wrist',
                                      'wrist_camera': 'wrist'}
Z_95 = 1.959963984540054  # two-sided 95 % normal quantile
_EPS = 1e-9


# ----------------------------------------------------------------------------------------- statistics
# (t, the policy's points in PANDA_JOINTS order or None, dt) -> the points to send (or None)
CommandFilter = Callable[[float, 'np.ndarray | None', float], 'np.ndarray | None']

def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default).

    Wilson rather than the normal approximation: with 20-50 episodes and rates near 0 or 1 the normal
    interval collapses to zero width or leaves [0, 1]; Wilson stays honest there.
    """
    if trials < 1:
        raise ValueError(f'wilson_interval: trials must be >= 1, got {trials}')
    if not 0 <= successes <= trials:
        raise ValueError(f'wilson_interval: successes must be in [0, trials={trials}], got {successes}')
    p = successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    center = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def path_length(positions: np.ndarray) -> float:
    """Summed absolute joint motion between consecutive rows (rad); NaN with fewer than two rows."""
    positions = np.asarray(positions, dtype=float)
    return float(np.abs(np.diff(positions, axis=0)).sum()) if len(positions) > 1 else math.nan


def mean_squared_jerk(positions: np.ndarray, dt: float) -> float:
    """Mean over time of |d^3 q / dt^3|^2 (summed over joints) of a path sampled every `dt` seconds.

    Third finite difference of the measured path; NaN for fewer than 4 samples.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2:
        raise ValueError(f'mean_squared_jerk: positions must be (T, J), got {positions.shape}')
    if positions.shape[0] < 4:
        return math.nan
    jerk = np.diff(positions, n=3, axis=0) / dt ** 3
    return float(np.mean(np.sum(jerk * jerk, axis=1)))


# ----------------------------------------------------------------------------------------- policy access
def execution_of(cfg: Any, **overrides: Any) -> ExecutionConfig:
    """How a policy runs: `PolicyConfig.execution_config`, or for a stand-in policy object (a scripted
    oracle in the tests) the defaults with its own n_action_steps."""
    if hasattr(cfg, 'execution_config'):
        return cfg.execution_config(**overrides)
    values = {**dataclasses.asdict(ExecutionSettings()), 'n_action_steps': cfg.n_action_steps}
    values.update({k: v for k, v in overrides.items() if v is not None and k != 'num_inference_steps'})
    ExecutionSettings(**{k: v for k, v in values.items() if k != 'n_action_steps'})  # checks the values
    max_actions = cfg.horizon - cfg.n_obs_steps + 1
    if not 1 <= values['n_action_steps'] <= max_actions:
        raise ValueError(f'n_action_steps {values["n_action_steps"]} must be in [1, horizon - n_obs_steps + 1 = '
                         f'{max_actions}]')
    return ExecutionConfig(num_inference_steps=None, **values)


def policy_config(policy: Any) -> Any:
    """The PolicyConfig of a policy (`.config`, or core's `.cfg`)."""
    for name in ('config', 'cfg'):
        cfg = getattr(policy, name, None)
        if cfg is not None:
            return cfg
    raise TypeError(f'{type(policy).__name__} has no .config/.cfg (PolicyConfig): not a policy')


def load_policy(checkpoint_or_policy: Any, device: str = 'cpu') -> tuple[Any, str]:
    """(policy, label): a checkpoint path is loaded on `device`; a policy object is used as it is."""
    if isinstance(checkpoint_or_policy, (str, Path)):
        from ..core.checkpoint import load_checkpoint
        return load_checkpoint(checkpoint_or_policy, device=device), str(checkpoint_or_policy)
    policy_config(checkpoint_or_policy)  # fail early on something that is not a policy
    return checkpoint_or_policy, type(checkpoint_or_policy).__name__


def _panda_limits(joint_names: Sequence[str]) -> JointLimits:
    return JointLimits.from_urdf(panda_description().urdf_text(), list(joint_names))


# ----------------------------------------------------------------------------------------- inference on sim time
class SimTimeInference:
    """The node's `InferenceWorker` interface (take_chunk / notify / last_error / latency / stats),
    but synchronous and on sim time: `notify()` runs the policy on the newest window right away (the
    sim is paused meanwhile) and the chunk is released by `take_chunk()` once the clock reaches the
    observation time + `latency_s`. One chunk in flight at a time, like the node's single worker.
    """

    def __init__(self, policy_fn: Callable[[dict[str, np.ndarray]], np.ndarray],
                 window_fn: Callable[[], Any], clock: Callable[[], float], *, n_obs_steps: int, dt: float,
                 latency_s: float) -> None:
        if not (math.isfinite(latency_s) and latency_s >= 0):
            raise ValueError(f'latency_s must be a finite number of seconds >= 0, got {latency_s}')
        self._policy_fn = policy_fn
        self._window_fn = window_fn
        self._clock = clock
        self.n_obs_steps = n_obs_steps
        self.dt = dt
        self.latency_s = latency_s
        self.expected_latency_s = latency_s  # what PolicyController plans its replanning with
        self.latency = RollingPercentiles(100_000)  # wall-clock seconds per policy call
        self.stats = WorkerStats()
        self.last_error = None  # a policy error propagates (evaluation must not hide it)
        self.bad_frame = None  # frames are pushed decoded here
        self._in_flight: tuple[float, ActionChunk] | None = None
        self._last_obs_time = -math.inf

    def take_chunk(self) -> ActionChunk | None:
        if self._in_flight is None or self._in_flight[0] > self._clock() + _EPS:
            return None
        chunk = self._in_flight[1]
        self._in_flight = None
        return chunk

    def notify(self) -> None:
        if self._in_flight is not None:
            return  # busy: the node's worker would still be inside the policy call
        window = self._window_fn()
        if not isinstance(window, ObservationWindow) or window.obs_time <= self._last_obs_time:
            self.stats.windows_skipped += 1  # not enough history yet (first tick), as in the node
            return
        begin = time.perf_counter()
        actions = np.asarray(self._policy_fn(window.as_policy_input()), dtype=np.float64)
        self.latency.add(time.perf_counter() - begin)
        if actions.ndim != 2 or actions.shape[0] < self.n_obs_steps:
            raise ValueError(f'policy returned shape {actions.shape}, expected (horizon >= {self.n_obs_steps}, '
                             f'action_dim)')
        chunk = ActionChunk.from_policy_output(actions, window.obs_time, self.n_obs_steps, self.dt)
        self._last_obs_time = window.obs_time
        self._in_flight = (self._clock() + self.latency_s, chunk)
        self.stats.chunks_produced += 1
        self.stats.wakeups += 1


# ----------------------------------------------------------------------------------------- report
@dataclass
class EpisodeOutcome:
    seed: int
    success: bool
    duration_s: float  # sim seconds until success or the time limit
    info: dict[str, Any]  # the task monitor's info (side, obstacle_contact, cube position, ...)
    mean_squared_jerk: float  # rad^2/s^6, measured arm joints at the control ticks
    inference_calls: int
    dropped_actions: int  # actions already stale when their chunk arrived (latency compensation)
    hold_s: dict[str, float] = field(default_factory=dict)  # seconds in HOLD per reason
    path_length_rad: float = math.nan  # arm joints' summed motion between control ticks


@dataclass
class EvalReport:
    task: str
    policy: str  # checkpoint path or object type
    policy_kind: str  # 'diffusion' | 'bc' | ...
    seeds: list[int]
    num_inference_steps: int | None
    n_action_steps: int
    blending: str
    latency_s: float  # sim-time latency applied to every chunk
    latency_source: str
    successes: int
    success_rate: float
    success_ci95: tuple[float, float]
    inference_latency_s: dict[str, float]  # wall clock: p50, p99, mean, max, count
    mean_squared_jerk: float  # mean over episodes
    episodes: list[EpisodeOutcome]
    reach_around: dict[str, Any] | None = None  # sides and obstacle contacts
    gif: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def headline(self) -> str:
        """One line for the terminal: success with its interval, and what a chunk cost."""
        low, high = self.success_ci95
        p50 = _ms(self.inference_latency_s.get('p50'))
        return (f'{self.task}, {self.policy}: {self.successes}/{len(self.seeds)} succeeded '
                f'({100 * self.success_rate:.0f} %, 95 % CI {100 * low:.0f}-{100 * high:.0f} %)'
                + (f'; inference p50 {p50:.1f} ms' if p50 is not None else ''))

    def summary(self) -> dict[str, Any]:
        """The headline numbers (for tables and the side-by-side report)."""
        out = {'policy_kind': self.policy_kind, 'episodes': len(self.seeds), 'success_rate': self.success_rate,
               'success_ci95': list(self.success_ci95),
               'latency_p50_ms': _ms(self.inference_latency_s.get('p50')),
               'latency_p99_ms': _ms(self.inference_latency_s.get('p99')),
               'mean_squared_jerk': self.mean_squared_jerk}
        if self.reach_around is not None:
            out.update({'left': self.reach_around['side_share']['left'],
                        'right': self.reach_around['side_share']['right'],
                        'obstacle_contacts': self.reach_around['obstacle_contacts']})
        return json_safe(out)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or not math.isfinite(seconds) else 1e3 * seconds


def _reach_around_summary(outcomes: Sequence[EpisodeOutcome]) -> dict[str, Any]:
    sides = [o.info.get('side') for o in outcomes]
    n = len(outcomes)
    counts = {'left': sides.count('left'), 'right': sides.count('right'), 'none': sides.count(None)}
    return {
        'sides': counts,  # where the TCP passed the obstacle's plane (None: never passed beside it)
        'side_share': {'left': counts['left'] / n, 'right': counts['right'] / n},
        'success_sides': {side: sum(o.success and o.info.get('side') == side for o in outcomes)
                          for side in ('left', 'right')},
        'obstacle_contacts': sum(bool(o.info.get('obstacle_contact')) for o in outcomes),
    }


# ----------------------------------------------------------------------------------------- the closed loop
def _camera_map(camera_keys: Sequence[str], overrides: Mapping[str, str] | None) -> dict[str, str]:
    mapping = {**DEFAULT_CAMERA_MAP, **(overrides or {})}
    unknown = [k for k in camera_keys if k not in mapping]
    if unknown:
        raise ValueError(f'no sim camera for checkpoint camera key(s) {unknown}: pass camera_map '
                         f'(--camera KEY=scene|wrist); known keys {sorted(mapping)}')
    return {k: mapping[k] for k in camera_keys}


def default_sim_config(task: str, policy: Any, camera_map: Mapping[str, str] | None = None) -> SimConfig:
    """The sim as the demos were recorded (cameras at SimConfig's size, like sim_robot_node's); images
    reach the policy through the resize the dataset and the policy node use, so it sees what they see."""
    cameras = _camera_map(policy.obs_spec.camera_keys, camera_map)
    return SimConfig(task=task, wrist_camera='wrist' in cameras.values())


def _rounded_latency(seconds: float, period: float) -> float:
    periods = max(1, math.ceil(seconds / period - 1e-6))
    return periods * period


class _GifRenderer:
    """The scene camera at GIF_SIZE, separate from the arm's renderer (which renders what the policy sees)."""

    def __init__(self, arm: SimArm, size: tuple[int, int] = GIF_SIZE) -> None:
        self.arm = arm
        try:
            self.renderer = mujoco.Renderer(arm.model, size[0], size[1])
        except Exception as exc:  # noqa: BLE001 - mujoco raises FatalError/ImportError/RuntimeError
            raise RuntimeError(f'episode GIF: no offscreen OpenGL context ({exc}); export MUJOCO_GL=egl or '
                               f'osmesa, or evaluate without a GIF') from exc
        flags = self.renderer.scene.flags
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                     mujoco.mjtRndFlag.mjRND_SKYBOX, mujoco.mjtRndFlag.mjRND_HAZE):
            flags[flag] = False
        self.frames: list[np.ndarray] = []

    def capture(self) -> None:
        self.renderer.update_scene(self.arm.data, 'scene')
        self.frames.append(self.renderer.render().copy())

    def write(self, path: Path, period_s: float) -> None:
        from diffusion_policy_ros.gif import write_gif
        write_gif(path, self.frames, period_s)

    def close(self) -> None:
        self.renderer.close()


@dataclass
class _EpisodeLoop:
    """One episode through the node's tick logic (`PolicyController.tick`) on sim time."""

    task: str
    n_obs_steps: int
    camera_keys: list[str]
    image_shape: tuple[int, int]
    cameras: dict[str, str]  # checkpoint camera key -> sim camera
    limits: JointLimits  # in the policy's action joint order
    execution: ExecutionConfig
    latency_s: float
    episode_seconds: float | None

    def run(self, arm: SimArm, seed: int, policy_fn: Callable[[dict[str, np.ndarray]], np.ndarray],
            gif_path: Path | None = None, command_filter: CommandFilter | None = None,
            ) -> tuple[EpisodeOutcome, list[float]]:
        """One episode; `command_filter(t, points or None, dt)` stands between the policy and the arm
        (the collision guard in the benchmark) and returns what is sent instead."""
        arm.reset(task=self.task, seed=seed)
        period = 1.0 / arm.cfg.control_hz
        joints = list(self.limits.names)
        to_panda = [joints.index(n) for n in PANDA_JOINTS]
        arm_joints = [joints.index(n) for n in PANDA_JOINTS[:7]]
        clock = {'now': 0.0}
        controller = PolicyController(
            policy_fn, self.camera_keys, self.limits,
            ControllerConfig.from_execution(self.execution, self.n_obs_steps, max_obs_age_s=NODE_MAX_OBS_AGE_S),
            clock=lambda: clock['now'])
        worker = SimTimeInference(
            policy_fn,
            lambda: controller.history.build_window(clock['now'], self.n_obs_steps, period, NODE_MAX_OBS_AGE_S),
            lambda: clock['now'], n_obs_steps=self.n_obs_steps, dt=period, latency_s=self.latency_s)
        controller.worker = worker  # the node's tick logic, with inference on sim time (its thread never starts)
        gif = _GifRenderer(arm) if gif_path is not None else None
        measured: list[np.ndarray] = []

        # Stamps as `ns / 1e9`, the expression rollout uses for the tick time: `ns * 1e-9` can land one
        # ulp above the tick, and the window would then take the previous joint state.
        def on_joint_state(stamp_ns: int, names: tuple[str, ...], position: np.ndarray, velocity: np.ndarray) -> None:
            controller.history.push_joint_state(stamp_ns / 1e9, names, position)

        def on_image(stamp_ns: int, camera: str, rgb: np.ndarray) -> None:
            for key, sim_camera in self.cameras.items():
                if sim_camera == camera:
                    controller.history.push_image(key, stamp_ns / 1e9, prepare_model_image(rgb, self.image_shape))

        def act(t: float) -> np.ndarray | None:
            clock['now'] = t
            if gif is not None:
                gif.capture()
            result = controller.tick(t)
            points = None if result.points is None else result.points[:, to_panda]
            if command_filter is not None:
                measured.append(arm.joint_state()[1][:7].copy())
                return command_filter(t, points, period)
            if points is None:
                return None
            measured.append(np.asarray(controller.history.latest_joint_positions())[arm_joints])
            # The node's rule: point k is due (k + 1) periods from now (PolicyController.tick).
            return points

        try:
            result = rollout(arm, act, on_joint_state=on_joint_state, on_image=on_image if self.cameras else None,
                             cameras=tuple(sorted(set(self.cameras.values()))), max_seconds=self.episode_seconds)
            if gif is not None:
                gif.capture()  # the final state (success or time limit)
                gif.write(gif_path, period)
        finally:
            if gif is not None:
                gif.close()
        outcome = EpisodeOutcome(
            seed=seed, success=bool(result.status.success), duration_s=float(result.duration),
            info=json_safe(dict(result.status.info)),
            mean_squared_jerk=mean_squared_jerk(np.array(measured), period) if measured else math.nan,
            inference_calls=worker.stats.chunks_produced, dropped_actions=controller.executor.stats.dropped_actions,
            hold_s={code.value: round(s, 3) for code, s in controller.health.hold_seconds.items()},
            path_length_rad=path_length(np.array(measured)))
        return outcome, worker.latency.snapshot().tolist()


def evaluate(checkpoint_or_policy: Any, task: str, episodes: int, seed: int = DEFAULT_EVAL_SEED, *,
             num_inference_steps: int | None = None, n_action_steps: int | None = None,
             blending: str | None = None, latency_s: float | None = None, device: str = 'cpu',
             gif_path: str | Path | None = None, arm: SimArm | None = None, sim_config: SimConfig | None = None,
             camera_map: Mapping[str, str] | None = None, episode_seconds: float | None = None,
             progress: bool = False,
             command_filter_factory: Callable[[SimArm], CommandFilter] | None = None,
             window_sink: list[dict[str, np.ndarray]] | None = None) -> EvalReport:
    """Run `episodes` closed-loop episodes of `task` on seeds `seed, seed + 1, ...` (see module doc).

    `checkpoint_or_policy`: a checkpoint directory/file, or a policy object with `.config`/`.cfg`,
    `.obs_spec`, `.action_spec` and `predict_action_chunk(window, num_inference_steps, generator)`.
    `num_inference_steps`, `n_action_steps`, `blending` None: the checkpoint's (the node's defaults
    too: `PolicyConfig.execution_config`). `latency_s` None: measured (module doc), else that many
    sim seconds from observation to chunk (below one control period acts as one period).
    `arm` reuses a simulator (it is reset per episode); `sim_config` overrides the default one
    (cameras at the recording size, resized for the policy). `episode_seconds` cuts episodes short of the task's
    time limit (smoke runs). `gif_path` gets a GIF of the first episode. `command_filter_factory(arm)`
    makes, per episode, what stands between the policy and the arm (the benchmark's collision guard).
    `window_sink` gets a copy of every observation window the policy is called with in the episodes
    (data.windows: on-policy distillation).
    """
    if task not in ALL_TASKS:
        raise ValueError(f'evaluate: unknown task {task!r}; expected one of {ALL_TASKS}')
    if episodes < 1:
        raise ValueError(f'evaluate: episodes must be >= 1, got {episodes}')
    if episode_seconds is not None and not episode_seconds > 0:
        raise ValueError(f'evaluate: episode_seconds must be > 0, got {episode_seconds}')
    policy, label = load_policy(checkpoint_or_policy, device)
    cfg = policy_config(policy)
    obs_spec, action_spec = policy.obs_spec, policy.action_spec
    joints = list(action_spec.joint_names)
    if sorted(joints) != sorted(PANDA_JOINTS):
        raise ValueError(f'{label} commands joints {joints}; the sim arm needs exactly {list(PANDA_JOINTS)}')
    if obs_spec.joint_names and list(obs_spec.joint_names) != joints:
        raise ValueError(f'{label} observes joints {list(obs_spec.joint_names)} but commands {joints}: the '
                         f'policy node (and this evaluation) needs them to be the same joints')
    try:
        execution = execution_of(cfg, num_inference_steps=num_inference_steps, n_action_steps=n_action_steps,
                                 blending=blending)
    except ValueError as exc:
        raise ValueError(f'{label}: {exc}') from None
    num_inference_steps, n_action_steps, blending = (execution.num_inference_steps, execution.n_action_steps,
                                                     execution.blending)
    cameras = _camera_map(obs_spec.camera_keys, camera_map)
    own_arm = arm is None
    arm = SimArm(sim_config or default_sim_config(task, policy, camera_map)) if own_arm else arm
    period = 1.0 / arm.cfg.control_hz
    if abs(period - execution.control_period_s) > 1e-9:
        raise ValueError(f'{label} was trained at {1 / execution.control_period_s:g} Hz but the sim is controlled at '
                         f'{arm.cfg.control_hz:g} Hz')
    limits = _panda_limits(joints)

    import torch

    def policy_fn_for(generator: torch.Generator, sink: list[dict[str, np.ndarray]] | None = None
                      ) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        def call(obs: dict[str, np.ndarray]) -> np.ndarray:
            if sink is not None:
                sink.append({key: np.array(value, copy=True) for key, value in obs.items()})
            return policy.predict_action_chunk(obs, num_inference_steps=num_inference_steps, generator=generator)
        return call

    if latency_s is None:
        warm = policy_fn_for(torch.Generator().manual_seed(0))
        example = example_observation(policy.obs_spec.camera_keys, policy.obs_spec.image_shape,
                                      policy_config(policy).n_obs_steps, limits)
        samples = []
        for _ in range(3):
            begin = time.perf_counter()
            warm(example)
            samples.append(time.perf_counter() - begin)
        applied_latency = _rounded_latency(float(np.median(samples)), period)
        latency_source = (f'measured: warm-up median {1e3 * float(np.median(samples)):.1f} ms rounded up to '
                          f'{round(applied_latency / period)} control period(s)')
    else:
        applied_latency = float(latency_s)
        latency_source = 'fixed'

    loop = _EpisodeLoop(task=task, n_obs_steps=cfg.n_obs_steps, camera_keys=list(obs_spec.camera_keys),
                        image_shape=tuple(obs_spec.image_shape), cameras=cameras, limits=limits,
                        execution=execution, latency_s=applied_latency,
                        episode_seconds=episode_seconds)
    latencies: list[float] = []
    outcomes: list[EpisodeOutcome] = []
    gif_file = Path(gif_path) if gif_path is not None else None
    seeds = list(range(seed, seed + episodes))
    try:
        for index, episode_seed in enumerate(seeds):
            policy_fn = policy_fn_for(torch.Generator().manual_seed(episode_seed), window_sink)
            try:
                outcome, episode_latencies = loop.run(
                    arm, episode_seed, policy_fn, gif_file if index == 0 else None,
                    command_filter=command_filter_factory(arm) if command_filter_factory is not None else None)
            except Exception as exc:
                raise RuntimeError(f'{label}: episode seed {episode_seed} of {task} failed: '
                                   f'{type(exc).__name__}: {exc}') from exc
            outcomes.append(outcome)
            latencies.extend(episode_latencies)
            if progress:
                print(f'[eval] {label} seed {episode_seed}: {"success" if outcome.success else "failure"} '
                      f'in {outcome.duration_s:.1f} s', file=sys.stderr, flush=True)
    finally:
        if own_arm:
            arm.close()

    successes = sum(o.success for o in outcomes)
    lat = np.asarray(latencies)
    latency_summary = ({'p50': float(np.percentile(lat, 50)), 'p99': float(np.percentile(lat, 99)),
                        'mean': float(lat.mean()), 'max': float(lat.max()), 'count': int(lat.size)}
                       if lat.size else {'p50': math.nan, 'p99': math.nan, 'mean': math.nan, 'max': math.nan,
                                         'count': 0})
    jerks = [o.mean_squared_jerk for o in outcomes if math.isfinite(o.mean_squared_jerk)]
    return EvalReport(
        task=task, policy=label, policy_kind=str(getattr(cfg, 'policy', type(policy).__name__)), seeds=seeds,
        num_inference_steps=num_inference_steps, n_action_steps=n_action_steps, blending=blending,
        latency_s=applied_latency, latency_source=latency_source, successes=successes,
        success_rate=successes / len(outcomes), success_ci95=wilson_interval(successes, len(outcomes)),
        inference_latency_s=latency_summary, mean_squared_jerk=float(np.mean(jerks)) if jerks else math.nan,
        episodes=outcomes, reach_around=_reach_around_summary(outcomes) if base_task(task) == 'reach_around' else None,
        gif=str(gif_file) if gif_file is not None else None)


def compare(policies: Mapping[str, Any], task: str, episodes: int, seed: int = DEFAULT_EVAL_SEED,
            out_dir: str | Path | None = None, with_reports: bool = False, **kwargs: Any) -> Any:
    """Evaluate several policies on the same seeds; one report {'task', 'seeds', 'summary', 'policies'}
    (and, `with_reports`, the EvalReports beside it).

    With `out_dir`, each policy's GIF goes to `out_dir/episode_<name>.gif` (same seed for all).
    """
    reports = {}
    for name, policy in policies.items():
        gif = Path(out_dir) / f'episode_{name}.gif' if out_dir is not None else None
        reports[name] = evaluate(policy, task, episodes, seed, gif_path=gif, **kwargs)
    first = next(iter(reports.values()))
    document = {'task': task, 'seeds': first.seeds,
                'summary': {name: r.summary() for name, r in reports.items()},
                'policies': {name: r.to_dict() for name, r in reports.items()}}
    return (document, list(reports.values())) if with_reports else document


# ----------------------------------------------------------------------------------------- CLI
def _parse_camera_map(items: Sequence[str]) -> dict[str, str]:
    mapping = {}
    for item in items:
        key, sep, camera = item.partition('=')
        if not sep or not key or camera not in ('scene', 'wrist'):
            raise UserError(f'--camera expects KEY=scene or KEY=wrist, got {item!r}')
        mapping[key] = camera
    return mapping


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', required=True, type=Path, help='checkpoint directory (DP or any policy)')
    parser.add_argument('--task', required=True, choices=ALL_TASKS, help='sim task to evaluate on')
    parser.add_argument('--episodes', type=int, default=50, help='episodes, one seed each')
    parser.add_argument('--seed', type=int, default=DEFAULT_EVAL_SEED,
                        help=f'first seed (default {DEFAULT_EVAL_SEED}: demos use 0..N-1, keep them held out)')
    parser.add_argument('--baseline', type=Path, default=None,
                        help='a second checkpoint (e.g. BC) evaluated on the same seeds in the same report')
    parser.add_argument('--out', type=Path, default=None, help='write eval.json and GIF(s) here')
    parser.add_argument('--num-inference-steps', type=int, default=None, help="DDIM steps (default: checkpoint's)")
    parser.add_argument('--n-action-steps', type=int, default=None, help="actions per chunk (default: checkpoint's)")
    parser.add_argument('--blending', choices=BLENDING_MODES, default=None,
                        help="how chunks are blended (default: the checkpoint's)")
    parser.add_argument('--latency-s', type=float, default=None,
                        help='sim-time inference latency (default: measured, rounded up to control periods)')
    parser.add_argument('--device', default='cpu', help='torch device for inference: cpu | cuda | cuda:N')
    parser.add_argument('--camera', action='append', default=[], metavar='KEY=CAMERA',
                        help="map a checkpoint camera key to a sim camera (default: 'camera' -> scene)")
    parser.add_argument('--episode-seconds', type=float, default=None,
                        help="cut episodes short of the task's time limit (quick smoke runs)")
    parser.add_argument('--no-gif', action='store_true', help='do not write the GIF of the first episode')
    parser.add_argument('--save-windows', type=Path, default=None, metavar='FILE',
                        help='save every observation window the policy saw (safetensors) for on-policy '
                             'distillation (distill.rollout_windows)')


def run(args: argparse.Namespace) -> int:
    kwargs = dict(num_inference_steps=args.num_inference_steps, n_action_steps=args.n_action_steps,
                  blending=args.blending, latency_s=args.latency_s, device=args.device,
                  camera_map=_parse_camera_map(args.camera), episode_seconds=args.episode_seconds, progress=True)
    out: Path | None = args.out
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    gif_dir = None if args.no_gif or out is None else out
    windows: list[dict[str, np.ndarray]] | None = [] if args.save_windows is not None else None
    if args.save_windows is not None and args.baseline is not None:
        print('dp-ros eval: error: --save-windows records one policy; drop --baseline', file=sys.stderr)
        return 2
    if args.baseline is None:
        report = evaluate(args.checkpoint, args.task, args.episodes, args.seed,
                          gif_path=None if gif_dir is None else gif_dir / 'episode.gif', window_sink=windows,
                          **kwargs)
        document, reports = report.to_dict(), [report]
        if windows is not None:
            saved = save_windows(args.save_windows, windows, {
                'policy': str(args.checkpoint), 'task': args.task, 'seeds': f'{args.seed}-{args.seed + args.episodes - 1}',
                'successes': str(report.successes)})
            print(f'[eval] saved {len(windows)} observation windows to {saved}')
    else:
        document, reports = compare({'policy': args.checkpoint, 'baseline': args.baseline}, args.task,
                                    args.episodes, args.seed, out_dir=gif_dir, with_reports=True, **kwargs)
    for report in reports:
        print(f'[eval] {report.headline()}')
    if out is None:
        print('[eval] --out DIR writes the full report (per-episode outcomes, latency, jerk) and a GIF')
        return 0
    written = [write_json(out / 'eval.json', document)] + [Path(r.gif) for r in reports if r.gif]
    print(f'[eval] wrote {", ".join(map(str, written))}')
    return 0
