"""`python -m lmforge …`, what torchrun runs: `torchrun --nproc-per-node=8 -m lmforge train CONFIG.yaml`."""

import sys

from lmforge.cli import main

sys.exit(main())
