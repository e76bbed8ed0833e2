"""`python -m lexprobe` is the `lexprobe` command."""

import sys

from lexprobe.cli import main

if __name__ == "__main__":  # (importing this module, as a documentation tool does, runs nothing)
    sys.exit(main())
