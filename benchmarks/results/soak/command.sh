#!/usr/bin/env bash
# The 30-minute soak whose soak.json and soak_timeline.png are here (2-core CPU shared with other VMs,
# no GPU, nothing else running; the default policy models/pick_place_fast (one network evaluation,
# eager), nodes at their default realtime_priority 20 as root), at 9b245ea, 2026-12-03 14:14-14:47 UTC.
set -euo pipefail
. ./env.sh
python benchmarks/soak.py --minutes 30 --out benchmarks/results/soak
