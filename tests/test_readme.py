"""The README as a new user reads it: the Python API example runs as a script from an unrelated
directory (the package is installed), and the scheme table lists the registry."""
import os
import re
import subprocess
import sys
from pathlib import Path

from normrnn.norms import NORMS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()


def _section(title):
  start = README.index(f'\n## {title}')
  end = README.find('\n## ', start + 1)
  return README[start:end if end != -1 else None]


def test_python_api_example_runs_from_an_unrelated_directory(tmp_path):
  code = re.search(r'```python\n(.*?)```', _section('Python API'), re.S).group(1)
  (tmp_path / 'example.py').write_text(code)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('PYTHONPATH', None)
  out = subprocess.run([sys.executable, 'example.py'], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  loss = float(re.search(r'train loss ([\d.]+)', out.stdout).group(1))
  accuracy = float(re.search(r'test accuracy ([\d.]+)', out.stdout).group(1))
  assert loss < 0.3 and accuracy > 0.9, out.stdout
  assert "'recurrent_mean': (20, 128)" in out.stdout


def test_scheme_table_lists_every_registered_scheme_with_its_declaration():
  rows = {m.group(1): m.group(0) for m in
          re.finditer(r'^\| `(\w+)` \|.*$', _section('Normalization schemes'), re.M)}
  assert set(rows) == set(NORMS)
  for name, scheme in NORMS.items():
    cells = [c.strip() for c in rows[name].strip('|').split('|')]
    assert cells[1] == scheme.label
    assert cells[8] == ', '.join(scheme.cells)
    assert cells[9].startswith('yes' if not scheme.batch_statistics else '**no**')
