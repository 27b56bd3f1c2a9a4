#!/usr/bin/env bash
# How the JSON files here were made (2-core CPU, no GPU, nothing else running; the nodes at their
# default realtime_priority 20, run as root). Each script prints one JSON object.
set -euo pipefail
. ./env.sh
python benchmarks/control_loop.py --seconds 30 > benchmarks/results/real_time/control_loop.json
python benchmarks/idle_cpu.py > benchmarks/results/real_time/idle_cpu.json
python benchmarks/camera_transport.py > benchmarks/results/real_time/camera_transport.json
python benchmarks/guard_latency.py > benchmarks/results/real_time/guard_latency.json
