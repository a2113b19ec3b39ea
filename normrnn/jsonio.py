"""JSON helpers: atomic files (config.json, results.json, best.json, checkpoint config sidecar)
and strict JSON values (JSON has no NaN or infinity)."""
import json
import math
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


def finite_or_none(obj: Any) -> Any:
  """NaN and +-inf -> None, recursively through dicts, lists and tuples, so that the JSON written
  from `obj` is strict (readable by any JSON parser)."""
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if isinstance(obj, dict):
    return {k: finite_or_none(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite_or_none(v) for v in obj]
  return obj
