"""``python -m monai_continual.nnunet`` runs the nnU-Net command line."""

from __future__ import annotations

import sys

from monai_continual.nnunet.cli import main

if __name__ == "__main__":  # nnU-Net starts worker processes that import this module again
    sys.exit(main())
