"""``python -m diffsmooth`` (also what ``torchrun -m diffsmooth`` runs)."""

import sys

from diffsmooth.cli import main

sys.exit(main())
