"""``python -m torchscope`` is the ``torchscope`` command."""

import sys

from torchscope.cli.main import main

sys.exit(main())
