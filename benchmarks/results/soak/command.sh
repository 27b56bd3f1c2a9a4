#!/usr/bin/env bash
# The 30-minute soak whose soak.json and soak_timeline.png are here (2-core CPU shared with other VMs,
# no GPU, nothing else running; shipped models/pick_place, nodes at their default realtime_priority 20
# as root), at 43222b6, 2026-12-03 04:00-04:33 UTC.
set -euo pipefail
. ./env.sh
python benchmarks/soak.py --minutes 30 --out benchmarks/results/soak
