"""`make bench`: throughput, utilisation and memory figures -> benchmarks/RESULTS.md."""
