"""``python -m visattn``: the ``visattn`` command (same options, output and exit codes)."""

import sys

from visattn.cli import main

if __name__ == "__main__":
    sys.exit(main())
