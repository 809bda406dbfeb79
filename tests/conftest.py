import sys
from pathlib import Path

# Make `tests.support` importable whether or not the project is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
