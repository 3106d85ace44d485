"""The command line refuses values out of range as usage errors (exit 2, one line), before any call: they
raised tracebacks from an int32 field, a Timestamp or time.sleep."""

from __future__ import annotations

import argparse

import pytest

from switchboard_cli.args import number, whole
from switchboard_cli.main import main


@pytest.mark.parametrize(
    "argv",
    [
        ["events", "list", "shop", "--limit", "3000000000"],
        ["events", "list", "shop", "--limit", "0"],
        ["events", "list", "shop", "--minutes", "2000000000"],
        ["replay", "range", "shop", "--minutes", "nan"],
        ["replay", "range", "shop", "--minutes", "inf"],
        ["replay", "range", "shop", "--minutes", "0"],
        ["subs", "create", "https://example.test/", "--timeout", "inf"],
        ["subs", "create", "https://example.test/", "--schedule", "1", "nan"],
        ["subs", "rotate", "sub_1", "--overlap", "-1"],
        ["status", "--window", "-1"],
        ["listen", "--port", "70000"],
        ["dlq", "list", "--limit", "99999999999"],
    ],
)
def test_out_of_range_values_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "must be" in err


def test_bounds_and_what_passes() -> None:
    assert whole(1, 10)("10") == 10
    assert number(0, 5, above_low=True)("0.5") == 0.5
    assert number(0, 5)("0") == 0
    for parse, text in [(whole(1, 10), "1.5"), (number(0, 5, above_low=True), "0"), (number(0, 5), "-inf")]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_a_configuration_path_that_is_a_directory_is_one_line(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(tmp_path), "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("switchboard: ") and "Traceback" not in err
