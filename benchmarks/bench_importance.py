"""Speed of the importance engine, side by side; the same code as ``memaware bench importance``.

Usage: python benchmarks/bench_importance.py [--json] [--repeats N] [--no-memory]
"""

import sys

from memaware.bench.importance import main

if __name__ == "__main__":
    sys.exit(main())
