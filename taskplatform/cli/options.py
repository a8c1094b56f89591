"""Options and argument types shared by the commands that call the API."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskplatform.settings import PlatformSettings


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def add_token_option(parser: argparse.ArgumentParser) -> None:
    """``--token`` (every command that calls the API has it; read with ``bearer_token``)."""
    parser.add_argument(
        "--token", help="bearer token (default: TASKPLATFORM_TOKEN; visible to ps when given here)"
    )


def bearer_token(settings: PlatformSettings, args: argparse.Namespace) -> str | None:
    """``--token``, else ``TASKPLATFORM_TOKEN``, else None (nothing is sent)."""
    if getattr(args, "token", None):
        return str(args.token)
    return settings.token.get_secret_value() if settings.token is not None else None
