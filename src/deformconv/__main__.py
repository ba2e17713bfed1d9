"""``python -m deformconv``: the ``deformconv`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
