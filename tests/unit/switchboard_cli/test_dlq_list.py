"""``switchboard dlq list`` follows ListDeadLetters' pages up to ``--limit`` (a stand-in answers the pages)."""

from __future__ import annotations

from typing import Any

from webhooks.v1 import dead_letters_pb2 as dl

from switchboard_cli import operations


class Stub:
    """Pages of two dead letters (as a page of large messages ends early), six in all."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    def ListDeadLetters(self, request: dl.ListDeadLettersRequest, timeout: float) -> Any:
        self.asked.append((request.page_token, request.page_size))
        n = int(request.page_token or 0)
        end = min(n + 2, n + request.page_size, 6)
        return dl.ListDeadLettersResponse(
            dead_letters=[dl.DeadLetter(id=f"dl_{i}") for i in range(n, end)],
            next_page_token=str(end) if end < 6 else "",
        )


def test_dlq_list_follows_pages_cut_short_up_to_its_limit() -> None:
    """It printed the first page only: a page of large messages ends early (~3 MiB), so `dlq list --limit 50`
    showed two dead letters and "(more: ... raise --limit)", which raising --limit could not change."""
    stub = Stub()
    found, token = operations._dead_letters(stub, dl.DeadLetterFilter(), 50)
    assert [d.id for d in found] == [f"dl_{i}" for i in range(6)] and token == ""
    assert stub.asked == [("", 50), ("2", 48), ("4", 46)]
    stub = Stub()
    found, token = operations._dead_letters(stub, dl.DeadLetterFilter(), 5)
    assert [d.id for d in found] == [f"dl_{i}" for i in range(5)] and token == "5"
    assert stub.asked == [("", 5), ("2", 3), ("4", 1)]
