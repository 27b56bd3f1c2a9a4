# 2026-12-03 08:24 UTC, nothing else running (2-core CPU, no GPU): the code of 523d017 with the
# models/pick_place_fast that 351d6be commits (exported just before, not yet committed)
python benchmarks/policy_latency.py --out benchmarks/results/policy_latency/policy_latency.json
