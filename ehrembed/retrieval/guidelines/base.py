"""What every part of the knowledge base shares: its error, search modes and format constants."""

from __future__ import annotations

import logging
from typing import Literal

from ehrembed.errors import InputError

log = logging.getLogger(__name__)

Mode = Literal["hybrid", "bm25", "dense"]
MODES: tuple[Mode, ...] = ("bm25", "dense", "hybrid")
KB_FORMAT_VERSION = 1
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
OPEN_MEDICINE_PACKAGE = "open_medicine"
_SPECIAL_TOKEN_MARGIN = 2  # [CLS] and [SEP]


class GuidelineError(InputError):
    """A guideline source or knowledge base cannot be used as asked."""
