"""The operator console: the runbook's daily work as server-rendered pages under /console.

`create_console(backends)` builds the app that `shared.api.app.create_api` mounts. Pages read
the same services the admin API and the CLI use; sign-in goes through the API's own key check.
"""

from shared.console.app import CONTENT_SECURITY_POLICY, create_console

__all__ = ["create_console", "CONTENT_SECURITY_POLICY"]
