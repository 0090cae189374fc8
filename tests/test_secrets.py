"""What counts as a secret, and what must stay readable."""

from __future__ import annotations

import logging

import pytest

from sweeplab.secrets import RedactingFilter, redact, redact_text


def test_url_passwords_and_secret_assignments_are_masked() -> None:
    line = "storage=postgresql+psycopg://me:pw-123@db:5432/s hf_token=hf_abc api_key: 'xyz'"
    assert redact_text(line) == "storage=postgresql+psycopg://me:***@db:5432/s hf_token=*** api_key: '***'"


def test_ordinary_text_is_left_alone() -> None:
    line = "pad_token=<|pad|> tokens_per_s: 512 train_tokens=9000 sqlite:///outputs/sweeps/optuna.db"
    assert redact_text(line) == line


def test_secret_environment_values_are_masked_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    monkeypatch.setenv("SOME_FLAG", "0123456789abcdef-not-a-secret-name")
    assert redact_text("key 0123456789abcdef in argv") == "key *** in argv"


def test_configs_keep_their_shape() -> None:
    config = {"model": {"hf_token": "hf_x", "pad_token": "<pad>", "n": 3}, "urls": ["postgresql://a:b@h/d"]}
    assert redact(config) == {
        "model": {"hf_token": "***", "pad_token": "<pad>", "n": 3},
        "urls": ["postgresql://a:***@h/d"],
    }


def test_log_records_are_masked_after_formatting() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "study in %s", ("postgresql://u:pw@h/d",), None
    )
    RedactingFilter().filter(record)
    assert record.getMessage() == "study in postgresql://u:***@h/d"
