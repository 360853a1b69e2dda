"""Prices per 1M tokens from settings, and the arithmetic of a cost."""

from __future__ import annotations

import json

import pytest

from shared.contracts import Usage
from shared.engine.pricing import cost_of
from shared.settings import ModelPrice
from tests.fixtures.app import isolated_settings


def test_each_kind_of_token_is_priced_at_its_rate() -> None:
    price = ModelPrice(prompt=2.5, cached_prompt=1.25, completion=10.0)
    usage = Usage(prompt_tokens=1_000_000, cached_tokens=400_000, completion_tokens=200_000)

    # 600k uncached at 2.5 + 400k cached at 1.25 + 200k completion at 10
    assert cost_of(usage, price) == pytest.approx(1.5 + 0.5 + 2.0)


def test_cached_tokens_cost_the_prompt_rate_when_no_cached_rate_is_set() -> None:
    price = ModelPrice(prompt=1.0, completion=4.0)
    usage = Usage(prompt_tokens=3_000, cached_tokens=1_000, completion_tokens=500)

    assert cost_of(usage, price) == pytest.approx((3_000 * 1.0 + 500 * 4.0) / 1_000_000)
    assert cost_of(Usage(), price) == 0.0


def test_prices_and_money_budgets_come_from_app_settings() -> None:
    settings = isolated_settings(
        {
            "MODEL_PRICES": json.dumps({"gpt-4o-mini": {"prompt": 0.15, "completion": 0.6}}),
            "PRICE_CURRENCY": "EUR",
            "MONTHLY_COST_BUDGET": "50",
            "TENANT_COST_BUDGETS": json.dumps({"acme": 500}),
        }
    )

    # By the model's full name, or by the deployment / model name after the provider prefix.
    assert settings.price_for("azure-openai:gpt-4o-mini") == ModelPrice(prompt=0.15, completion=0.6)
    assert settings.price_for("gpt-4o-mini") is not None
    assert settings.price_for("openai:gpt-4o") is None
    assert settings.price_currency == "EUR"
    assert settings.cost_budget_for("acme") == 500 and settings.cost_budget_for("other") == 50


def test_a_negative_price_is_refused() -> None:
    with pytest.raises(ValueError):
        ModelPrice(prompt=-1)
