#!/usr/bin/env bash
# The 30-minute soak whose soak.json and soak_timeline.png are here (2-core CPU, no GPU, nothing else
# running; shipped models/pick_place, nodes at their default realtime_priority 20 as root), at c56f573.
set -euo pipefail
. ./env.sh
python benchmarks/soak.py --minutes 30 --out benchmarks/results/soak
