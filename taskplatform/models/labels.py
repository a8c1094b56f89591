"""Labels: what workers carry (``region=eu,role=db``) and what tasks are aimed at. Keys and values
are short and plain (``LABEL_*_PATTERN``), so they can be matched exactly in every store."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

#: A label's key: a letter or digit first, then letters, digits, ``_ . - /``; at most 63.
LABEL_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,62}")
#: A label's value: letters, digits, ``_ . -``; 1 to 63 (no ``=``, ``,`` or spaces).
LABEL_VALUE_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,63}")
#: The most labels one worker carries.
MAX_LABELS = 32


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """``labels`` if every key and value is plain (``LABEL_*_PATTERN``) and there are at most
    ``MAX_LABELS``; else ValueError naming the first one at fault."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY_PATTERN.fullmatch(key):
            raise ValueError(
                f"label key {key!r}: 1 to 63 characters, a letter or digit first, then letters, digits, "
                "'_', '.', '-' or '/'"
            )
        if not isinstance(value, str) or not LABEL_VALUE_PATTERN.fullmatch(value):
            raise ValueError(f"label {key}={value!r}: the value is 1 to 63 letters, digits, '_', '.' or '-'")
    return labels


def parse_labels(text: str) -> dict[str, str]:
    """``region=eu,role=db`` as a dict (blank: none); ValueError naming what is wrong: an item
    without ``=``, a key given twice, or a key or value that is not plain."""
    labels: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ValueError(f"label {item!r} has no '=': write key=value, e.g. role=db")
        if key in labels:
            raise ValueError(f"label key {key!r} is given twice")
        labels[key] = value
    return check_labels(labels)


Labels = Annotated[dict[str, str], AfterValidator(check_labels)]
