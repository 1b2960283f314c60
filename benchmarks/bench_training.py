"""A whole MAS run against a bare PyTorch script, side by side; the same code as
``memaware bench training``.

Usage: python benchmarks/bench_training.py [--json] [--epochs E] [--repeats R]
"""

import sys

from memaware.bench.training import main

if __name__ == "__main__":
    sys.exit(main())
