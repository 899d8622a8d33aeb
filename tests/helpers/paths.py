"""Where things are in the checkout, for tests in any folder."""

from pathlib import Path

#: The repository root.
REPO = Path(__file__).resolve().parents[2]
