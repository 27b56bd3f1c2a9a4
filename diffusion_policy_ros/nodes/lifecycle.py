"""What the node executables share: starting rclpy, spinning until a stop signal, and, for
policy_node and collision_guard_node as LifecycleNodes, cleanup/shutdown releasing everything."""
from __future__ import annotations

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from diffusion_policy_ros.errors import ROS_CODE, ignore_stop_signals, received_stop_signal, stop_on_signals
from diffusion_policy_ros.heap import return_large_blocks_to_os
from diffusion_policy_ros.nodes.dds import apply_dds_profile
from diffusion_policy_ros.scheduling import MAX_REALTIME_PRIORITY, use_realtime_priority


class ReleasingLifecycleNode(LifecycleNode):
    """Configure runs `_configure()`; any error in it fails the transition with its text and frees what
    was made so far. Cleanup and shutdown free everything too. Subclasses implement both methods."""

    def _configure(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except Exception as err:  # noqa: BLE001 - any configuration problem fails the transition with its text
            self.get_logger().error(f'configure failed: {err}')
            self._release()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS


def stop_taking_signals() -> None:
    """A stopping node ignores further SIGINT/SIGTERM (errors.ignore_stop_signals). rclpy's own
    handlers (and their signal thread) are taken down first, through rclpy, so that nothing of rclpy's
    is left pointing at a handler replaced under it."""
    rclpy.signals.uninstall_signal_handlers()
    ignore_stop_signals()


STOP_CHECK_S = 0.2  # the longest a recorded stop signal waits for the spin loop (the wait is woken sooner)


def init_node_process(args: list[str] | None) -> None:
    """rclpy.init for a node executable. SIGINT and SIGTERM raise StopRequested (errors.stop_on_signals):
    installed first, they are the handlers rclpy's own handlers call after waking the executor. Freed
    large blocks (oversized frames) go back to the OS (`heap`), so hours of them do not grow the node."""
    return_large_blocks_to_os()
    apply_dds_profile()
    stop_on_signals(defer_inside=ROS_CODE)
    rclpy.init(args=args)


def spin_until_stopped(executor: SingleThreadedExecutor) -> None:
    """Spin until a stop signal or an external rclpy shutdown. Any other error propagates, except one
    raised by a stop signal in disguise (errors.received_stop_signal): seen when Ctrl-C landed while
    rclpy converted a taken message, and pybind11 turned the StopRequested into a RuntimeError.

    spin_once in a loop rather than spin(): a signal that lands in rclpy's code is only recorded there
    (errors.ROS_CODE), and this loop stops on it; rclpy's own handler wakes the wait at once."""
    try:
        while received_stop_signal() is None and executor.context.ok():
            executor.spin_once(timeout_sec=STOP_CHECK_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if received_stop_signal() is None:
            raise


def spin_lifecycle_node(node: LifecycleNode, autostart: bool, realtime_priority: int = 0) -> int:
    """Spin `node` until Ctrl-C. With `autostart` it configures and activates itself (so the
    executable alone runs); if configure fails it stays up, unconfigured, waiting for transitions from
    a launch file or `bringup`. The node's `_release()` frees its resources on the way out.
    `realtime_priority` > 0: the executor thread runs SCHED_FIFO from then on (`scheduling`); the
    worker threads started during configure/activate, or later, schedule themselves normally."""
    # One executor thread, every callback short, slow work on the nodes' own worker threads: rclpy's
    # MultiThreadedExecutor re-polls in a busy loop while a callback group is occupied, burning a core
    # while idle and taking the GIL from the inference thread (measured: DDIM-10 went from 37 to 145
    # ms and the 10 Hz timer stalled for seconds; the guard idled at 100 % of a core).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if autostart:
            node.trigger_configure()
            if node._state_machine.current_state[1] != 'inactive':
                node.get_logger().error('autostart: configure failed; waiting for lifecycle transitions')
            else:
                node.trigger_activate()
        if 0 < realtime_priority <= MAX_REALTIME_PRIORITY:  # out of range: configure refuses it by name
            refused = use_realtime_priority(realtime_priority)
            if refused:
                node.get_logger().warning(f'realtime_priority {realtime_priority}: {refused}; normal scheduling')
            else:
                node.get_logger().info(f'executor thread runs SCHED_FIFO priority {realtime_priority}')
        spin_until_stopped(executor)
    except KeyboardInterrupt:  # a stop signal during configure or activate
        pass
    finally:
        stop_taking_signals()
        node._release()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
