"""``python -m monai_continual`` runs the command line."""

from __future__ import annotations

import sys

from monai_continual.cli import main

sys.exit(main())
