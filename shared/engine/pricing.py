"""Money from tokens: prices per model from settings, applied when usage is read.

Cost is never stored. The ledger and checkpoints hold tokens only, and a cost is the price times
those tokens at the moment it is asked for; so a price set today also prices the month so far, and
the ledger's storage shape stays what the token accounting needs.

The price applied is the one of the model this deployment runs (`b.model.name`), since a ledger
entry records tokens, not which model spent them: after a change of model, the month is priced at
the new model's rates. A model without a price has no cost (None), never a cost of 0.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.contracts import Usage
from shared.engine.backends import Backends
from shared.engine.ledger import month_of
from shared.settings import ModelPrice

__all__ = ["Cost", "cost_of", "price_usage", "budget_exhausted"]

PER_TOKENS = 1_000_000


class Cost(BaseModel):
    amount: float = Field(description="Price x tokens, rounded to 1e-6.")
    currency: str
    model: str = Field(description="The model whose prices were applied.")


def cost_of(usage: Usage, price: ModelPrice) -> float:
    """What usage costs at price: uncached prompt, cached prompt and completion tokens, each at its rate."""
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_rate = price.prompt if price.cached_prompt is None else price.cached_prompt
    amount = (
        (usage.prompt_tokens - cached) * price.prompt
        + cached * cached_rate
        + usage.completion_tokens * price.completion
    ) / PER_TOKENS
    return round(amount, 6)


def price_usage(b: Backends, usage: Usage) -> Cost | None:
    """The cost of usage at the deployed model's price; None when MODEL_PRICES has no price for it."""
    price = b.settings.price_for(b.model.name)
    if price is None:
        return None
    return Cost(amount=cost_of(usage, price), currency=b.settings.price_currency, model=b.model.name)


def budget_exhausted(b: Backends, tenant: str, *, max_age: float = 0.0) -> str | None:
    """The tenant's budget it has used up this month, tokens or money ("its monthly budget of 1000 tokens"), or None."""
    used = b.ledger.total(tenant, month_of(), max_age=max_age)
    budget = b.settings.budget_for(tenant)
    if used.total_tokens >= budget:
        return f"its monthly budget of {budget} tokens"
    money = b.settings.cost_budget_for(tenant)
    if money is not None:
        cost = price_usage(b, used)
        if cost is not None and cost.amount >= money:
            return f"its monthly budget of {money:g} {cost.currency} ({cost.amount:g} spent)"
    return None
