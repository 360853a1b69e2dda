"""What the app loads at start: SDKs that only some deployments use stay out until they are used.

The runtime's memory is a budget (150 MB with 16 jobs in flight): the MCP SDK costs about 27 MB and
PyJWT's cryptography about 10 MB, and a process that never serves MCP or Entra ID tokens should
carry neither.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import function_app  # builds the API, as the Functions host and the embedded runtime do
print(json.dumps(sorted(m for m in ("mcp", "jwt", "cryptography", "openai", "numpy") if m in sys.modules)))
"""


def test_the_app_starts_without_the_mcp_sdk_or_jwt(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
