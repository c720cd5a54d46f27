"""``python -m llmux serve --config config.yaml``: the same as the ``llmux`` command."""

import sys

from .cli import main

sys.exit(main())
