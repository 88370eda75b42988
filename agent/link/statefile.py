"""The last desired state an agent received, kept on disk so a restart serves it before the
registry answers: the machine's desired.json, the frontend's routing.json.

Written atomically and 0600 (desired instances carry config vars, which hold secrets); a file
that cannot be read is ignored with one error line, never trusted half-way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def save(path: Path, model: BaseModel) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(model.model_dump_json(indent=1))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def load(path: Path, model: type[M]) -> M | None:
    """The saved model, or None when there is none or it is unreadable."""
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError) as exc:
        log.error("ignoring the saved state in %s: %s", path, exc)
        return None
