"""``python -m bmc``: the ``bmc`` command (:mod:`bmc.cli.main`)."""

import sys

from bmc.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
