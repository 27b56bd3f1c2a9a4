#!/bin/bash
# Issue 15 benchmark, full run: 30 held-out seeds (1000-1029) per arm and scene, both tasks, the shipped
# default checkpoints (models/reach_around, models/pick_place), sim latency fixed at one control period.
# Run at 61b2992 (the guard with evasion), 2026-12-03 04:48-04:59 UTC, 671 s, nothing else running.
cd "$(dirname "$0")/../../.."
. ./env.sh
export OMP_NUM_THREADS=1
date
dp-ros bench-planning --task reach_around --task pick_place --seeds 30 --out benchmarks/results/bench_planning
date
