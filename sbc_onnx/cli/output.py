"""How the commands write their JSON reports: atomically, numpy values as lists."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..io.atomic import write_text_atomic


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=_json_value))


def _json_value(o):
    return o.tolist() if hasattr(o, "tolist") else str(o)
