"""scripts/gpu_check.py runs end to end (its --smoke mode, on the CPU): the parent runs each
section in a child process and collects one JSON file."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from normrnn.kernels import cpu_lstm
from tests.helpers import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / 'mnist').is_dir(), reason='shared MNIST copy absent')
def test_smoke_run_writes_every_section(tmp_path):
  out = tmp_path / 'gpu.json'
  sections = 'bench/ptb,pallas_variants,train/smnist/none/scan'
  proc = subprocess.run(
      [sys.executable, 'scripts/gpu_check.py', '--smoke', '--sections', sections,
       '--schemes', 'none', '--kernel-schemes', 'none', '--out', str(out)],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report['environment']['jax'] and report['command'].startswith('python scripts/')
  assert list(report['sections']) == sections.split(',')
  for name, section in report['sections'].items():
    assert 'error' not in section, (name, section)

  bench = report['sections']['bench/ptb']['result']
  # The reference, the scan and every kernel ran (the C++ one where its extension is built);
  # cuDNN's LSTM needs a GPU (an error here).
  expected = {'flax_optimized_lstm', 'none', 'none@fused', 'none@pallas'}
  assert set(bench['ms']) == expected | ({'none@cpu'} if cpu_lstm.unavailable() is None else set())
  assert 'cudnn_lstm' in bench['errors']
  assert bench['ratio_to_flax_optimized_lstm']['flax_optimized_lstm'] == 1.0

  variant = report['sections']['pallas_variants']['result']['variants']['default']
  assert variant['interpreted'] and variant['ms'] > 0  # interpret mode on the CPU

  train = report['sections']['train/smnist/none/scan']['result']
  assert train['steps_timed'] == 2 and train['paper_steps'] > 0
  assert math.isfinite(train['loss_last']) and train['projected_hours'] > 0
  assert 'not the paper' in train['data_note']
