"""The last desired state an agent received, kept on disk so a restart serves it before the
registry answers: the machine's desired.json, the frontend's routing.json.

Written atomically and 0600 (desired instances carry config vars, which hold secrets); a file
that cannot be read is ignored with one error line, never trusted half-way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from common.fsutil import atomic_write

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def save(path: Path, model: BaseModel) -> None:
    atomic_write(path, model.model_dump_json(indent=1), mode=0o600)


def load(path: Path, model: type[M]) -> M | None:
    """The saved model, or None when there is none or it is unreadable."""
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError) as exc:
        log.error("ignoring the saved state in %s: %s", path, exc)
        return None
