"""The operator console: the runbook's daily work as server-rendered pages under /console.

`create_console(backends, key_check)` builds the app that `shared.api.app.create_api` mounts,
handing it the API's own key check. Pages read the same services the admin API and the CLI use.
"""

from shared.console.access import KeyCheck
from shared.console.app import CONTENT_SECURITY_POLICY, create_console

__all__ = ["create_console", "CONTENT_SECURITY_POLICY", "KeyCheck"]
