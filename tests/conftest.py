"""Lets the integration and e2e tests share small helper modules (tests/integration/*.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
