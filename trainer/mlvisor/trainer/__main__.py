"""``python -m mlvisor.trainer``: what every worker pod and local worker process runs.

Flags and environment variables are described in :mod:`mlvisor.trainer.entry`.
"""

import sys

from mlvisor.trainer.entry import main

sys.exit(main())
