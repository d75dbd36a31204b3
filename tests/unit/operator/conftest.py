"""The operator package lives in operator/im_operator; make it importable until the project installs it."""

import sys
from pathlib import Path

OPERATOR_DIR = str(Path(__file__).resolve().parents[3] / "operator")
if OPERATOR_DIR not in sys.path:
    sys.path.insert(0, OPERATOR_DIR)
