"""The license text ships: pyproject declares Apache-2.0 and names LICENSE in license-files (setuptools puts it in
the wheel's dist-info/licenses/ and the sdist), and LICENSE is the unmodified Apache License 2.0. Before, no LICENSE
existed, so neither the wheel nor the sdist carried the text Apache-2.0 4(a) requires to pass on."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_license_file_is_the_apache_2_text():
    path = ROOT / "LICENSE"
    assert path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == APACHE_2_SHA256


def test_pyproject_ships_the_license_file():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^license = "Apache-2.0"$', text, re.M)
    files = re.search(r"^license-files = \[(.*)\]$", text, re.M)
    assert files and '"LICENSE"' in files.group(1)
