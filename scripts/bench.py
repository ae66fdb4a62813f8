"""Benchmark jaxrnn against its peers: python scripts/bench.py [--workloads W1,W2,...] [flags].

The console script `jaxrnn-bench` is the same command; see `benchmarks.cli.main` (or --help).
"""

from benchmarks.cli import main

if __name__ == "__main__":
    main()
