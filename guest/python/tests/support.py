"""Puts the packages under test, and the stand-ins for componentize-py's bindings, on sys.path."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "fakes"), str(HERE.parent)]
