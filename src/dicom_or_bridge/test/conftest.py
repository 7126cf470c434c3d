"""pytest set-up of the bridge tests: their helper modules import by name."""

import sys
from pathlib import Path

# Test helpers live next to the tests (colcon runs pytest from the package directory).
sys.path.insert(0, str(Path(__file__).parent))
