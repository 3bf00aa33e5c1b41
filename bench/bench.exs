# `make bench`: every figure side by side in one run, written to bench/results/latest.md and
# bench/results/latest.png. See bench/README.md for what each section measures.
ClusterSRV.Bench.run()
