"""``python -m mlvisor.server``: the entry point the serving Deployment runs."""

import sys

from mlvisor.server.cli import main

sys.exit(main())
