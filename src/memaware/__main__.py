"""``python -m memaware`` (and ``torchrun ... -m memaware``): the ``memaware`` command."""

import sys

from memaware.cli.main import main

sys.exit(main())
