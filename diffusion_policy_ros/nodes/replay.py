"""`dp-ros replay`: play a rosbag2 through the real nodes and score what they publish.

    dp-ros replay BAG_OR_DIR... --params config/policy.yaml [--checkpoint CKPT] [--rate R] [--out OUT_DIR]
                      [--no-guard] [--connect] [--set NODE.PARAM:=VALUE ...] [--threshold NAME=VALUE ...]

1. Before any node starts, the bag is read to the end and checked against the params and the
   checkpoint (camera topics, joint-states topic with the checkpoint's joints, demonstrated commands):
   a truncated or mismatched bag is refused with a message that names what is wrong.
2. policy_node (and collision_guard_node unless --no-guard) start through `bringup`'s machinery from
   the same params files, on `use_sim_time`; when guarded the policy proposes on
   /policy/joint_trajectory and the guard forwards to the controller topic. --connect uses nodes that
   already run instead.
3. The bag's messages are published with their recorded timing (scaled by --rate) and a /clock taken
   from their stamps. The demonstrated commands are not published (the guard/policy own that topic);
   they are the reference the policy is scored against.
4. Every message the nodes publish (trajectories, diagnostics, lifecycle events) goes into a new
   rosbag2 in OUT_DIR/recorded as it arrives; the bag is closed (flushed) at the end and on Ctrl-C.
5. OUT_DIR/report.json and PNG plots come from the input and the recorded bag
   (`diffusion_policy_ros.data.replay_metrics` and `replay_scores`, which define every metric), with a
   PASS/FAIL verdict against `--threshold`s. Several bags (or a directory of them) replay one after
   the other, each into OUT_DIR/<bag name>, with one summary table and one verdict.

Exit status: 0 PASS (or stopped by SIGINT/SIGTERM), 1 FAIL or the nodes failed, 2 input refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from diffusion_policy_ros.data.bags import BagError, BagWriter, find_bags
from diffusion_policy_ros.data.replay_metrics import (ReplayInputError, check_bag, compute_report, load_recorded,
                                                      write_plots, write_report)
from diffusion_policy_ros.data.replay_plan import (DEFAULT_COMMAND_TOPIC, RECORDED_BAG, ReplayConfig, output_dirs,
                                                   plan_replay, summary_lines, topics_to_play)
from diffusion_policy_ros.data.replay_scores import (ReplayThresholds, add_scores, format_or_na, suite_verdict,
                                                     summary_row, summary_table)
from diffusion_policy_ros.nodes.playback import PlaybackStats, Player, Recorder, wait_for

EXIT_REFUSED, EXIT_FAILED = 2, 1
EXIT_CODES = ('exit codes: 0 PASS (of the bag, or of the set of bags), or stopped by SIGINT/SIGTERM (report.json '
              'says interrupted); 1 FAIL, or the nodes failed; 2 a bag, the params or the checkpoint do not fit')


# ---------------------------------------------------------------------- the run
def replay(cfg: ReplayConfig, log: Any = print) -> dict[str, Any]:
    """Run one replay (see the module docstring) and return the report (also written to OUT_DIR).

    Raises `ReplayInputError`/`BagError`/`CheckpointError` before any node starts when the input does
    not fit; RuntimeError/TimeoutError when the nodes fail; KeyboardInterrupt after flushing."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from diffusion_policy_ros.nodes.bringup import NODE_LOG, BringUp, NodeLog

    plan = plan_replay(cfg)
    for note in plan.notes:
        log(f'[replay] note: {note}')
    reference = check_bag(cfg.bag, plan.topics)
    out_dir = cfg.out_dir
    recorded_bag = out_dir / RECORDED_BAG
    if recorded_bag.exists():
        raise ReplayInputError(f'{recorded_bag} already exists: choose an empty --out')
    out_dir.mkdir(parents=True, exist_ok=True)
    play_topics = topics_to_play(reference, plan)
    log(f'[replay] {cfg.bag}: {reference.duration:.2f} s, playing {sorted(play_topics)} at rate {cfg.rate:g}; '
        f'scoring {plan.policy_topic} against {plan.topics.command_topic}')

    initialised = not rclpy.ok()
    if initialised:
        # Ctrl-C is ours (KeyboardInterrupt -> flush the bag, stop the nodes), not rclpy's context shutdown
        from rclpy.signals import SignalHandlerOptions
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    start_ns = int(round(reference.start * 1e9))
    end_ns = int(round(reference.end * 1e9))
    node = rclpy.create_node('dp_ros_replay')
    writer = BagWriter(recorded_bag, storage=cfg.storage).__enter__()
    player = Player(node, play_topics, cfg.rate, cfg.clock_hz)
    recorder = Recorder(node, writer, plan.recorded_topics,
                        lambda: player.now_ns if player.now_ns is not None else start_ns)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    node_log = NodeLog(out_dir / NODE_LOG, echo=cfg.verbose) if plan.launches else None
    if node_log is not None:
        log(f'[replay] starting {", ".join(l.executable for l in plan.launches)} (their logs: {node_log.path})')
    bringup = BringUp(plan.launches, log=node_log) if plan.launches else None
    stats = PlaybackStats()
    playback: threading.Thread | None = None
    interrupted: KeyboardInterrupt | None = None
    error: str | None = None
    try:
        for topic, why in player.skipped.items():
            log(f'[replay] not playing {topic}: unknown message type {why}')
        if bringup is not None:
            bringup.start()
        failed = (lambda: bringup.failed()) if bringup is not None else (lambda: None)
        inputs = [*plan.topics.camera_topics, plan.topics.joint_states_topic]
        wait_for(lambda: all(player.publishers[t].get_subscription_count() > 0 for t in inputs),
              cfg.discovery_timeout_s, f'a node subscribed to each of {inputs}'
              + (' (is the policy node running and active?)' if cfg.connect else ''), failed)
        clock_users = max(1, len(plan.launches))
        wait_for(lambda: player.clock_pub.get_subscription_count() >= clock_users, cfg.discovery_timeout_s,
              f'{clock_users} node(s) on /clock (use_sim_time:=true)', failed)
        outputs = [plan.policy_topic, '/diagnostics'] + ([plan.guard_topic] if plan.guard_topic else [])
        wait_for(lambda: all(recorder.subscriptions[t].get_publisher_count() > 0 for t in outputs),
              cfg.discovery_timeout_s, f'publishers on {outputs}', failed)
        if plan.guard_topic is not None:
            # The guard listens to the policy too (besides this recorder): on a loaded machine discovery
            # took longer than a short bag, and the guard reviewed none of the chunks.
            wait_for(lambda: node.count_subscribers(plan.policy_topic) >= 2, cfg.discovery_timeout_s,
                  f'the guard subscribed to {plan.policy_topic}', failed)
        recorder.playing = True
        log('[replay] nodes connected; playing')
        playback = threading.Thread(target=lambda: player.play(cfg.bag, start_ns, end_ns), daemon=True)
        playback.start()
        while playback.is_alive():
            playback.join(0.1)
            problem = failed()
            if problem:
                player.stop_requested.set()
                playback.join()
                raise RuntimeError(f'{problem} during playback')
        stats = player.stats
        # the nodes' last outputs, and one guard diagnostics after them (its counters)
        time.sleep(cfg.drain_s)
        if plan.guard_topic is not None:
            last = recorder.last_received.get(plan.policy_topic, time.monotonic())
            try:
                wait_for(lambda: recorder.last_received.get('/diagnostics', 0.0) > last + 0.05, 3.0,
                      'guard diagnostics after the last trajectory')
            except TimeoutError:
                pass
    except KeyboardInterrupt as stop:
        interrupted = stop
        player.stop_requested.set()
        stats = player.stats
        log('[replay] interrupted: flushing what was recorded')
    except (RuntimeError, TimeoutError) as err:
        error = str(err)
        stats = player.stats
    finally:
        previous = _ignore_sigint()
        try:
            if playback is not None and playback.is_alive():
                player.stop_requested.set()
                playback.join(5.0)
            recorder.close()  # flush first: nothing recorded is lost, whatever happens next
            if bringup is not None:
                bringup.stop()
            if node_log is not None:
                node_log.close()
            executor.shutdown()
            node.destroy_node()
            if initialised:
                rclpy.try_shutdown()
        finally:
            _restore_sigint(previous)

    recorded = load_recorded(recorded_bag, plan.policy_topic, plan.topics.action_joints, plan.guard_topic)
    report = compute_report(
        reference, recorded,
        policy_baseline=recorded.policy_diagnostics[0] if cfg.connect and recorded.policy_diagnostics else None,
        guard_baseline=recorder.guard_before_playback if cfg.connect else None)
    report['replay'] = {
        'params': str(cfg.params), 'checkpoint': str(plan.checkpoint), 'rate': cfg.rate, 'guard': cfg.guard,
        'connect': cfg.connect, 'recorded_bag': str(recorded_bag), 'policy_topic': plan.policy_topic,
        'guard_topic': plan.guard_topic, 'command_topic': plan.topics.command_topic,
        'published': dict(stats.published), 'clock_messages': stats.clock_messages, 'wall_s': stats.wall_s,
        'sim_s': stats.sim_s, 'achieved_rate': stats.achieved_rate, 'max_lag_s': stats.max_lag_s,
        'expected_output_rate_hz': float(plan.policy_params['control_rate_hz']),
        'not_played': player.skipped, 'recorder_errors': recorder.failures,
        'interrupted': interrupted is not None, 'error': error,
    }
    add_scores(report, reference, recorded, cfg.thresholds, float(plan.policy_params['control_rate_hz']))
    # A stopped replay must stop fast (the plots take a second or more): its recorded bag and report are
    # kept, and a plot of half a bag says little.
    report['plots'] = [] if interrupted else [str(p) for p in write_plots(reference, recorded, report, out_dir)]
    write_report(report, out_dir / 'report.json')
    if interrupted is not None:
        raise interrupted
    if error is not None:
        raise RuntimeError(error)
    return report


def _ignore_sigint() -> Any:
    """A second Ctrl-C must not cut the bag's flush short (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGINT, signal.SIG_IGN)
    return None


def _restore_sigint(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------- CLI adapter
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bags', type=Path, nargs='+', metavar='BAG_OR_DIR',
                        help='rosbag2 directories (MCAP or sqlite3) or storage files, or folders to search for them')
    parser.add_argument('--params', default='config/policy.yaml',
                        help="policy_node params file, or a bring-up file (config/sim.yaml) naming the nodes' files")
    parser.add_argument('--checkpoint', default=None, help="checkpoint or run folder (default: the params file's)")
    parser.add_argument('--rate', type=float, default=1.0, help='playback speed (2 = twice as fast)')
    parser.add_argument('--out', type=Path, default=None,
                        help='output folder (default: replays/<bag name>; with several bags each goes to '
                             'OUT/<bag name>)')
    parser.add_argument('--no-guard', dest='guard', action='store_false',
                        help='no collision guard: score and record the policy alone')
    parser.add_argument('--connect', action='store_true',
                        help='use nodes that already run (on use_sim_time) instead of starting them')
    parser.add_argument('--command-topic', default=DEFAULT_COMMAND_TOPIC,
                        help='the demonstrated commands in the bag (JointTrajectory)')
    parser.add_argument('--guard-params', default='config/collision_guard.yaml',
                        help='collision_guard_node params file (when --params is not a bring-up file)')
    parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='NODE.PARAM:=VALUE',
                        help='override a node parameter, e.g. policy_node.torch_threads:=1')
    parser.add_argument('--threshold', dest='thresholds', action='append', default=[], metavar='NAME=VALUE',
                        help='change what PASS needs, e.g. max_ratio_to_baseline=0.9 (names and defaults: '
                             + ', '.join(f'{k}={v:g}' for k, v in dataclasses.asdict(ReplayThresholds()).items())
                             + ')')
    parser.add_argument('--clock-hz', type=float, default=100.0, help='/clock messages per second of bag time')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='recorded bag storage')
    parser.add_argument('--discovery-timeout', type=float, default=30.0,
                        help='seconds to wait for the nodes to connect before playing')
    parser.add_argument('--verbose', action='store_true',
                        help="print the nodes' logs here too (they always go to OUT/nodes.log)")


def run(args: argparse.Namespace) -> int:
    from diffusion_policy_ros.core.checkpoint import CheckpointError
    try:
        bags = find_bags(args.bags)
        thresholds = ReplayThresholds.with_overrides(args.thresholds)
        configs = [ReplayConfig(bag=bag, params=args.params, out=out, checkpoint=args.checkpoint, rate=args.rate,
                                guard=args.guard, connect=args.connect, command_topic=args.command_topic,
                                guard_params=args.guard_params, overrides=list(args.overrides),
                                clock_hz=args.clock_hz, storage=args.storage,
                                discovery_timeout_s=args.discovery_timeout, verbose=args.verbose,
                                thresholds=thresholds)
                   for bag, out in zip(bags, output_dirs(bags, args.out))]
    except (BagError, ValueError) as err:
        print(f'dp-ros replay: refused: {err}', file=sys.stderr, flush=True)
        return EXIT_REFUSED
    rows, reports, code = [], [], 0
    for index, cfg in enumerate(configs):
        if len(configs) > 1:
            print(f'[replay] bag {index + 1}/{len(configs)}: {cfg.bag}', flush=True)
        try:
            report = replay(cfg)
        except (ReplayInputError, BagError, CheckpointError, FileNotFoundError, ValueError) as err:
            print(f'dp-ros replay: refused: {err}', file=sys.stderr, flush=True)
            if len(configs) == 1:
                return EXIT_REFUSED
            rows.append(summary_row(str(cfg.bag), None, str(err)))
            code = max(code, EXIT_FAILED)
            continue
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (the CLI turns it into this): a requested stop
            print(f'[replay] stopped by {str(stop) or "SIGINT"}: no verdict; the recorded bag and a partial report '
                  f'are in {cfg.out_dir}', flush=True)
            return 0
        except (RuntimeError, TimeoutError) as err:
            print(f'dp-ros replay: failed: {err}', file=sys.stderr, flush=True)
            rows.append(summary_row(str(cfg.bag), None, str(err)))
            code = EXIT_FAILED
            continue
        for line in summary_lines(report):
            print(f'[replay] {line}', flush=True)
        written = [cfg.out_dir / 'report.json', *report['plots'], report['replay']['recorded_bag']]
        print(f'[replay] wrote {", ".join(map(str, written))}', flush=True)
        rows.append(summary_row(str(cfg.bag), report))
        reports.append(report)
    if len(configs) == 1:
        return code or (0 if reports[0]['verdict']['result'] == 'PASS' else EXIT_FAILED)
    root = configs[0].out_dir.parent
    suite = suite_verdict(reports, thresholds)
    if code:  # a bag could not be replayed
        suite['result'] = 'FAIL'
        suite['failed'].append(f"{sum(r['verdict'] == 'ERROR' for r in rows)} bag(s) could not be replayed")
    write_report({'verdict': suite, 'bags': rows, 'thresholds': dataclasses.asdict(thresholds)},
                 root / 'summary.json')
    print('\n' + summary_table(rows), flush=True)
    pooled = suite['pooled_horizon_mae']
    best = min((v for k, v in pooled.items() if k != 'policy' and v is not None), default=None)
    print(f"[replay] {suite['result']}: pooled horizon MAE {format_or_na(pooled['policy'])} rad against the best "
          f"baseline's {format_or_na(best)} over {len(rows)} bags ({suite['bags_passing_alone']} pass alone)"
          + ('; ' + '; '.join(suite['failed']) if suite['failed'] else '') + f"; wrote {root / 'summary.json'}",
          flush=True)
    return 0 if suite['result'] == 'PASS' else EXIT_FAILED

