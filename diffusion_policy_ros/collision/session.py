"""The guard's decisions in time (no rclpy): what runs where, and the deadline that bounds a fallback.

`CollisionGuard` decides; `GuardSession` schedules. A proposed chunk is checked on the caller's thread
(the node's executor: under a millisecond), a blocked chunk's fallback is planned on the planning thread
(`worker_thread.LatestJobThread`, which keeps only the newest job), and a deadline thread holds the arm when no
decision was sent within the planning budget, even when the planning thread is starved or stuck. With a
backend whose checks block on the executor (MoveIt's services), whole reviews run on the planning
thread. Every decision goes to `act(decision, context, arrived_ns, reaction)`, which publishes it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from diffusion_policy_ros.collision.guard import CollisionGuard, GuardDecision, PlanRequest, TrajectoryChunk
from diffusion_policy_ros.worker_thread import LatestDeadline, LatestJobThread

# How long after its planning budget a plan request is given before the guard holds instead.
PLAN_DEADLINE_SLACK_S = 0.02

Measure = Callable[[], tuple[Mapping[str, float], str | None]]  # latest joints, why untrusted (or None)
Act = Callable[[GuardDecision, Any, int, str | None], None]


class GuardSession:
    """One configured guard at work. `measure()` gives the latest measured joints and why they cannot be
    trusted (or None); `context` is passed through to `act` (the proposed message, for a 'pass')."""

    def __init__(self, guard: CollisionGuard, planning_budget_s: float, measure: Measure, act: Act, *,
                 blocking_checks: bool = False, on_error: Callable[[BaseException], None] | None = None) -> None:
        self.guard = guard
        self.planning_budget_s = planning_budget_s
        self.measure = measure
        self.act = act
        self.blocking_checks = blocking_checks
        self.active = False  # decisions are only sent while active
        self.planning = LatestJobThread('guard-planner', on_error=on_error)
        self.planning.start()
        self.deadline = LatestDeadline('guard-deadline', on_error=on_error)
        self._latest_plan = 0  # sequence of the newest plan request

    def stop(self) -> None:
        self.active = False
        self.deadline.stop()
        self.planning.stop()

    def on_planning_thread(self, work: Callable[[], Any], timeout_s: float = 60.0) -> Any:
        """Run `work` on the planning thread and return its result (for set-up, before any review)."""
        done: Future = Future()

        def job() -> None:
            try:
                done.set_result(work())
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                done.set_exception(err)
        self.planning.submit(job)
        return done.result(timeout_s)

    def reject(self, names: list[str], problem: str, context: Any, arrived_ns: int) -> None:
        """A proposal that cannot be checked (malformed): the arm holds."""
        self.act(self.guard.reject(self.measure()[0], names, problem), context, arrived_ns, None)

    def review(self, chunk: TrajectoryChunk, context: Any, arrived_ns: int, now_s: float, topic: str) -> None:
        """A proposed chunk: pass, hold or reject it now, or plan its fallback on the planning thread."""
        guard = self.guard
        measured, problem = self.measure()
        names = list(chunk.joint_names)
        if problem is not None:
            self.act(guard.reject(measured, names, problem), context, arrived_ns, None)
            return
        if self.blocking_checks:
            self.planning.submit(lambda: self._job(lambda: guard.review(measured, chunk, now_s), measured, names,
                                                   context, arrived_ns))
            return
        try:
            decision = guard.check(measured, chunk, now_s=now_s)
        except Exception as err:  # noqa: BLE001 - a bug or a backend failure must not pass anything
            decision = guard.reject(measured, names, f'{topic}: internal error while checking: {err!r}')
        if decision.plan_request is None:
            self.act(decision, context, arrived_ns, None)
        else:
            self._plan(decision.plan_request, measured, context, arrived_ns)

    def scene_changed(self, arrived_ns: int) -> None:
        """Re-check what the arm still executes against the new scene (on the planning thread when checks
        block the executor)."""
        if self.blocking_checks:
            self.planning.submit(lambda: self._recheck(arrived_ns))
        else:
            self._recheck(arrived_ns)

    def _recheck(self, arrived_ns: int) -> None:
        """Cut what the arm executes at once when it now collides, then plan the fallback within the budget
        (or hold)."""
        guard = self.guard
        if not self.active:
            return
        measured, problem = self.measure()
        try:
            decision = guard.recheck(measured, untrusted=problem)
        except Exception as err:  # noqa: BLE001 - a failing re-check holds the arm
            decision = guard.reject(measured, guard.checker.joint_names, f'internal error while re-checking: {err!r}')
        if decision is None:
            return
        self.act(decision, None, arrived_ns, 'scene')
        if decision.plan_request is not None:
            self._plan(decision.plan_request, measured, None, arrived_ns)

    def _plan(self, request: PlanRequest, measured: Mapping[str, float], context: Any, arrived_ns: int) -> None:
        """Plan on the planning thread; hold if no decision for `request` (or a newer chunk) was sent
        within the budget."""
        self.planning.submit(lambda: self._job(lambda: self.guard.plan(request), measured, list(request.names),
                                               context, arrived_ns))
        self._latest_plan = request.sequence

        def expire() -> None:
            if not self.active or self._latest_plan != request.sequence:
                return  # stopped, or a newer plan request has its own deadline
            decision = self.guard.expire(request)
            if decision is not None:
                self.act(decision, context, arrived_ns, None)

        # (a newer request replaces this deadline: its own expire would return at once)
        self.deadline.arm(self.planning_budget_s + PLAN_DEADLINE_SLACK_S, expire)

    def _job(self, review: Callable[[], GuardDecision | None], measured: Mapping[str, float], names: list[str],
             context: Any, arrived_ns: int) -> None:
        """On the planning thread: run the review or plan, confirm its decision against the state and scene
        now, and send it (None: superseded by a newer decision)."""
        guard = self.guard
        try:
            decision = review()
            if decision is not None:
                decision = guard.confirm(self.measure()[0], decision)
        except Exception as err:  # noqa: BLE001 - a failing plan holds the arm
            decision = guard.reject(measured, names, f'internal error while planning: {err!r}')
        if decision is not None and self.active:
            self.act(decision, context, arrived_ns, None)
