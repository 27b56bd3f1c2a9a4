#!/usr/bin/env bash
# The 30-minute soak whose soak.json and soak_timeline.png are here (2-core CPU, no GPU, nothing else
# running; shipped models/pick_place, nodes at their default realtime_priority 20 as root), at ae0457a.
# (At ae0457a the command-stream gaps were still timed when the monitor's callback ran; later commits
# time them, like the policy's commands, by the middleware's receive stamp.)
set -euo pipefail
. ./env.sh
python benchmarks/soak.py --minutes 30 --out benchmarks/results/soak
