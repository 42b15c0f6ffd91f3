"""`python -m stages.serve`: the serve verb plus the bench's options (command.main)."""

import sys

from .command import main

sys.exit(main())
