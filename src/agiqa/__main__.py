"""`python -m agiqa ...` (also what `torchrun -m agiqa score ...` runs on every rank)."""
import sys

from agiqa.cli import main

sys.exit(main())
