"""Atomic JSON files (config.json, results.json, best.json, checkpoint config sidecar)."""
import json
import os
from typing import Any


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes obj as sorted, indented JSON via a temporary file and os.replace, so a reader (or a
  resumed run after kill -9) never sees a half-written file."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
    f.write('\n')
  os.replace(tmp, path)
