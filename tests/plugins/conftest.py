"""Fixtures of this folder: the serving fixtures shared with the sibling test folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, where serving_fixtures.py lives

from serving_fixtures import *  # noqa: E402,F401,F403
