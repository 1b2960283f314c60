"""MAS training steps and importance of EfficientNet-Lite0 and ResNet-18, memaware against bare
PyTorch, side by side; the same code as ``memaware bench backbone``.

Usage: python benchmarks/bench_backbone.py [--json] [--device D] [--steps S] [--batch-size B]
[--image-size P] [--repeats R]
"""

import sys

from memaware.bench.backbone import main

if __name__ == "__main__":
    sys.exit(main())
