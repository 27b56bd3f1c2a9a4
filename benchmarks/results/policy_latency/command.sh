# at 523d017, nothing else running (2-core CPU, no GPU)
python benchmarks/policy_latency.py --out benchmarks/results/policy_latency/policy_latency.json
