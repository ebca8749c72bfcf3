"""TensorFlow is imported in one place, with the allocator setting training relies on."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_only_textgen_tf_imports_tensorflow_or_keras():
    """A module-level import elsewhere could load TensorFlow before the allocator is set.

    (Imports inside functions that first call ``textgen._tf.tensorflow()`` are fine.)
    """
    direct = re.compile(r"^(import|from)\s+(tensorflow|keras)\b", re.MULTILINE)
    modules = list((ROOT / "textgen").rglob("*.py"))
    assert len(modules) > 20 and any(p.parent.name == "training" for p in modules)
    offenders = [
        str(p.relative_to(ROOT))
        for p in modules
        if p.name != "_tf.py" and direct.search(p.read_text())
    ]
    assert offenders == []


@pytest.mark.parametrize(("preset", "expected"), [(None, "true"), ("false", "false")])
def test_tensorflow_loads_with_the_pooling_allocator_unless_told_otherwise(preset, expected):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    if preset is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = preset
    code = (
        "import os\nfrom textgen._tf import tensorflow\ntensorflow()\n"
        "print(os.environ['TF_CPU_ALLOCATOR_USE_BFC'])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected
