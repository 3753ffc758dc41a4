"""``python -m msrs``: the msrs command (see msrs.cli)."""
import sys

from msrs.cli import main

if __name__ == "__main__":
    sys.exit(main())
