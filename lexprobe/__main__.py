"""`python -m lexprobe` is the `lexprobe` command."""

import sys

from lexprobe.cli import main

sys.exit(main())
