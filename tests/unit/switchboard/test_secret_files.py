"""Generated secret files appear whole or not at all, never replace one another, and a secret file open to
others is refused at start (found in review: a crash between creating the file and writing it left it empty,
refused for ever; deleting it then generated a Fernet key that no longer opened the sealed secrets)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from switchboard.config._table import parse_secret_ref
from switchboard.errors import ConfigError
from switchboard.secrets import SecretRef, generate_secret_file


class Crash(BaseException):
    """A process killed in the middle of a write."""


def crash_on_write(monkeypatch: pytest.MonkeyPatch) -> None:
    real_fdopen = os.fdopen

    class Dies:
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def __enter__(self) -> Dies:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def fileno(self) -> int:
            return int(self.fh.fileno())

        def write(self, data: object) -> int:
            raise Crash

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **kw: Dies(real_fdopen(fd, *a, **kw)))


def test_a_crash_while_writing_leaves_no_file_and_the_next_start_generates_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "secrets" / "delivery.key"
    with monkeypatch.context() as m:
        crash_on_write(m)
        with pytest.raises(Crash):
            generate_secret_file(key, "fernet")
    assert not key.exists()  # was: an empty file, refused at every start
    assert list(key.parent.iterdir()) == []  # nor a temporary file left behind
    assert len(SecretRef(file=key, generate="fernet").resolve().reveal()) == 44


def test_a_second_generation_keeps_the_first_secret(tmp_path: Path) -> None:
    """Two services starting at once: the one that comes second reads the first one's key (it raised
    FileExistsError, or with a replacing write would have swapped the key under the first)."""
    key = tmp_path / "delivery.key"
    generate_secret_file(key, "fernet")
    first = key.read_text()
    generate_secret_file(key, "fernet")
    assert key.read_text() == first
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_create_new_links_whole_files_and_never_replaces_one(tmp_path: Path) -> None:
    from switchboard.files import create_new

    path = tmp_path / "d" / "cookie"
    assert create_new(path, "ABC", mode=0o400)
    assert not create_new(path, "XYZ", mode=0o400)
    assert path.read_text() == "ABC" and stat.S_IMODE(path.stat().st_mode) == 0o400
    assert [p.name for p in path.parent.iterdir()] == ["cookie"]


@pytest.mark.parametrize("mode", [0o606, 0o660, 0o620, 0o622, 0o666], ids=oct)
def test_a_secret_file_open_to_others_is_refused_with_a_chmod_hint(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "shop.secret"
    path.write_text("whsec_abc\n")
    path.chmod(mode)
    where = re.escape(str(path))
    with pytest.raises(
        ConfigError, match=rf"secret file {where} is writable by its group or others .*chmod 600 {where}"
    ):
        SecretRef(file=path).resolve()
    with pytest.raises(ConfigError, match="chmod 600"):  # a generated one too: it is not replaced
        SecretRef(file=path, generate="whsec").resolve()
    assert path.read_text() == "whsec_abc\n"


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440, 0o644, 0o444], ids=oct)
def test_a_secret_file_only_its_owner_may_write_is_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "shop.secret"
    path.write_text("whsec_abc\n")
    path.chmod(mode)
    assert SecretRef(file=path).resolve().reveal() == "whsec_abc"


def test_an_empty_generated_file_says_how_it_came_about(tmp_path: Path) -> None:
    path = tmp_path / "delivery.key"
    path.touch(mode=0o600)
    with pytest.raises(ConfigError, match=r"is empty .*interrupted first start"):
        SecretRef(file=path, generate="fernet").resolve()


@pytest.mark.parametrize(
    "raw",
    [
        {"env": "whsec_MfKQ9r8GKYqrTNm5Y8NfpZh8xQ2vA7b1"},
        {"env": "3f9a1c07be45d2e8a6b0c9f1d4e7a2b5"},  # 32 hex digits
        {"env": "3F9A1C07BE45D2E8"},  # 16, upper case
        {"env": "Kx9/3mQ+vT7aZ2pL8nR4wY6bH1cD5fG0="},  # base64, '/' and '+': no variable's name
        {"file": "whsec_MfKQ9r8GKYqrTNm5Y8NfpZh8xQ2vA7b1"},  # made absolute by the loader
        {"file": "Kx9mQvT7aZ2pL8nR4wY6bH1cD5fG0"},
    ],
)
def test_a_secret_pasted_where_its_name_belongs_is_not_shown_in_the_refusal(
    raw: dict[str, str], tmp_path: Path
) -> None:
    """``{ env = "whsec_..." }``: the refusal to start said "secret environment variable whsec_... is not set",
    on stderr and in the JSON log's error field (found in review). Read through the configuration's own parser,
    which makes a file's path absolute (a first fix judged the whole path, and never redacted one)."""
    ref = parse_secret_ref(raw, "sources[0].secrets[0]", tmp_path)
    pasted = raw.get("env") or raw["file"]
    with pytest.raises(ConfigError) as refused:
        ref.resolve()
    assert pasted not in refused.value.message and pasted[:4] in refused.value.message
    assert pasted not in ref.describe() and "a secret where a name belongs?" in refused.value.message


@pytest.mark.parametrize(
    "raw",
    [
        {"env": "STRIPE_WEBHOOK_SECRET_FOR_THE_SHOP_ACCOUNT_2"},
        {"env": "my_webhook_secret_for_shop_2024_prod"},
        {"env": "sk_signing_key"},
        {"file": "/etc/sb/stripe-2024.whsec"},
        {"file": "/run/secrets/stripe-webhook-secret-2024"},
    ],
)
def test_ordinary_names_and_paths_are_shown_whole(raw: dict[str, str], tmp_path: Path) -> None:
    ref = parse_secret_ref(raw, "sources[0].secrets[0]", tmp_path)
    with pytest.raises(ConfigError) as refused:
        ref.resolve()
    assert (raw.get("env") or raw["file"]) in refused.value.message
