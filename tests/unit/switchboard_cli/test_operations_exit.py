"""``switchboard replay range`` and ``switchboard dlq redrive`` exit 1 when the job did not end DONE with
nothing failed (scripts could not tell: both always exited 0), and a replay range is exactly ``--minutes``
long (it was a second longer: the 168 h limit refused ``--minutes 10080``). Found in review; a stand-in stub
answers what the control service would."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from webhooks.v1 import dead_letters_pb2 as dl
from webhooks.v1 import replay_pb2

from switchboard_cli import operations
from switchboard_cli.main import build_parser, main


class Stub:
    def __init__(self, *, state: int = replay_pb2.REPLAY_STATE_DONE, failed: int = 0, unfinished: int = 0) -> None:
        self.state, self.failed, self.unfinished = state, failed, unfinished
        self.requests: list[Any] = []

    def ReplayEvents(self, request: Any) -> Iterator[Any]:
        self.requests.append(request)
        progress = replay_pb2.ReplayProgress(replay_id="rpl_1", state=self.state, matched=3, queued=3)
        progress.done, progress.failed = 3 - self.failed - self.unfinished, self.failed
        yield replay_pb2.ReplayEventsResponse(progress=progress)

    def RedriveDeadLetters(self, request: Any) -> Iterator[Any]:
        yield dl.RedriveDeadLettersResponse(matched=2, redriven=2 - self.failed, failed=self.failed)


def args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@pytest.mark.parametrize(
    ("stub", "code"),
    [
        (Stub(), 0),
        (Stub(failed=1), 1),
        (Stub(state=replay_pb2.REPLAY_STATE_FAILED), 1),
        (Stub(state=replay_pb2.REPLAY_STATE_CANCELLED), 1),
        (Stub(unfinished=1), 1),  # DONE, but it stopped waiting for one event (a minute without progress)
    ],
)
def test_a_replay_range_exits_1_unless_done_with_nothing_failed(stub: Stub, code: int) -> None:
    assert operations._replay(stub, args(["replay", "range", "shop", "--minutes", "10080"])) == code
    (request,) = stub.requests
    assert request.end_time.seconds - request.start_time.seconds == 10080 * 60  # the 168 h limit, not one more


@pytest.mark.parametrize(("failed", "code"), [(0, 0), (1, 1)])
def test_a_redrive_exits_1_when_some_were_not_sent_again(failed: int, code: int) -> None:
    assert operations._dlq(Stub(failed=failed), args(["dlq", "redrive", "--all"])) == code


def test_the_command_reads_the_configuration_switchboard_config_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The services honour $SWITCHBOARD_CONFIG; the command read the checkout's switchboard.toml whatever it
    said (found in review)."""
    monkeypatch.setenv("SWITCHBOARD_CONFIG", str(tmp_path / "elsewhere.toml"))
    assert main(["events", "list", "shop"]) == 2
    assert "elsewhere.toml" in capsys.readouterr().err
