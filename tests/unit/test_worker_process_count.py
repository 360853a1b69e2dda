"""FUNCTIONS_WORKER_PROCESS_COUNT as the embedded runtime reads it (Azure allows 1 to 10)."""

from __future__ import annotations

import pytest

from shared.runtime.worker_processes import calls_per_process, process_count


@pytest.mark.parametrize(("value", "count"), [(None, 1), ("", 1), (" ", 1), ("1", 1), ("4", 4), (" 10 ", 10)])
def test_the_count_defaults_to_one_process(value: str | None, count: int) -> None:
    assert process_count(value) == count


@pytest.mark.parametrize("value", ["0", "11", "-2", "two", "1.5"])
def test_a_count_out_of_range_names_the_setting_and_the_range(value: str) -> None:
    with pytest.raises(
        ValueError, match=f"FUNCTIONS_WORKER_PROCESS_COUNT must be a whole number from 1 to 10, not '{value}'"
    ):
        process_count(value)


@pytest.mark.parametrize(
    ("calls", "processes", "shares"),
    [(8, 1, [8]), (8, 2, [4, 4]), (8, 3, [3, 3, 2]), (16, 10, [2] * 6 + [1] * 4), (2, 4, [1, 1])],
)
def test_max_concurrent_calls_is_shared_by_the_processes(calls: int, processes: int, shares: list[int]) -> None:
    # A bound per instance, as in Azure: the shares add up to it, and no process gets none.
    assert calls_per_process(calls, processes) == shares
