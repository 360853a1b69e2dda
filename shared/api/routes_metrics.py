"""GET /api/metrics: the embedded runtime's meters in the Prometheus text format (admin key).

Always behind an admin key (the series carry every tenant's name), loopback included: the Functions
ASGI bridge does not give a trustworthy client address, and a Prometheus scrape job sends a bearer key as easily.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from shared.api.security import AdminDep
from shared.errors import NotFound
from shared.observability import metrics


class MetricsInAzureMonitor(NotFound):
    kind = "metrics-in-azure-monitor"
    fix = "query customMetrics in Application Insights"


router = APIRouter(prefix="/api", tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics of this instance (admin key)",
    responses={200: {"content": {"text/plain": {}}}},
)
def get_metrics(caller: AdminDep) -> Response:
    if metrics.azure_monitor_owns_metrics():
        raise MetricsInAzureMonitor(
            "metrics are exported to Application Insights (customMetrics, e.g. agent.tokens); "
            "GET /api/metrics serves the embedded runtime only"
        )
    return Response(metrics.prometheus_text(), media_type=metrics.PROMETHEUS_CONTENT_TYPE)
