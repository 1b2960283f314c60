"""Serving latency with and without an importance tracker, side by side; the same code as
``memaware bench deploy``.

Usage: python benchmarks/bench_deploy.py [--json] [--rounds R]
"""

import sys

from memaware.bench.deploy import main

if __name__ == "__main__":
    sys.exit(main())
