"""``python -m dcpe``: the ``dcpe`` command line (see :func:`dcpe.cli.main`)."""

import sys

from dcpe.cli import main

if __name__ == "__main__":
    sys.exit(main())
