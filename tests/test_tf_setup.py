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


def _compile_once(env: dict[str, str]) -> subprocess.CompletedProcess:
    code = (
        "import os\nfrom textgen._tf import tensorflow\ntf = tensorflow()\n"
        "f = tf.function(lambda x: tf.tanh(x @ x), jit_compile=True)\n"
        "f(tf.ones([4, 4]))\nprint(os.environ.get('TF_XLA_FLAGS', ''))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )


def test_xla_keeps_what_it_compiles_under_the_textgen_cache(tmp_path):
    """The second run of a model finds its compiled step in $TEXTGEN_CACHE/xla."""
    env = {k: v for k, v in os.environ.items() if k != "TF_XLA_FLAGS"}
    env["TEXTGEN_CACHE"] = str(tmp_path / "cache")
    proc = _compile_once(env)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "cache" / "xla"
    assert proc.stdout.strip() == f"--tf_xla_persistent_cache_directory={folder}"
    assert any(p.name.startswith("xla_compile_cache") for p in folder.iterdir())


def test_a_user_named_xla_cache_is_left_alone(tmp_path):
    mine = tmp_path / "mine"
    env = dict(os.environ, TEXTGEN_CACHE=str(tmp_path / "cache"))
    env["TF_XLA_FLAGS"] = f"--tf_xla_persistent_cache_directory={mine}"
    proc = _compile_once(env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == env["TF_XLA_FLAGS"]
    assert not (tmp_path / "cache" / "xla").exists()


def test_tensorflow_loads_without_matplotlib_which_stays_importable_after():
    """Keras' plotting helpers would import matplotlib.pyplot (about half a second) on
    every start; textgen hides it during the import, and ``textgen plot`` still finds it."""
    pytest.importorskip("matplotlib")
    code = (
        "import sys\nfrom textgen._tf import keras, tensorflow\ntensorflow()\nkeras()\n"
        "print('matplotlib' in sys.modules, 'matplotlib.pyplot' in sys.modules)\n"
        "import matplotlib.pyplot\nprint(matplotlib.pyplot.__name__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["False False", "matplotlib.pyplot"]


def test_a_matplotlib_imported_before_tensorflow_is_left_alone():
    pytest.importorskip("matplotlib")
    code = (
        "import sys, matplotlib\nfrom textgen._tf import tensorflow\ntensorflow()\n"
        "print(sys.modules['matplotlib'] is matplotlib)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_every_traced_function_goes_through_textgen_tf_traced():
    """A bare ``tf.function`` would trace with autograph on: seconds more per first step."""
    bare = re.compile(r"(@|\b)tf\.function\(|@tf\.function\b")
    modules = list((ROOT / "textgen").rglob("*.py"))
    assert any("traced(" in p.read_text() for p in modules if p.name != "_tf.py")
    offenders = [
        str(p.relative_to(ROOT))
        for p in modules
        if p.name != "_tf.py" and bare.search(p.read_text())
    ]
    assert offenders == []
    assert bare.search("step = tf.function(fn)") and bare.search("@tf.function\ndef f")


def test_traced_turns_autograph_off_and_passes_other_options():
    from textgen._tf import tensorflow, traced

    tf = tensorflow()

    def branchy(x):
        if x > 0:  # Python control flow on a tensor: only autograph could rewrite it
            return x
        return -x

    with pytest.raises(tf.errors.OperatorNotAllowedInGraphError):
        traced(branchy)(tf.constant(1.0))

    @traced(input_signature=[tf.TensorSpec([None], tf.float32)])
    def double(x):
        return 2.0 * x

    assert double(tf.constant([1.0, 2.0])).numpy().tolist() == [2.0, 4.0]
    assert len(double.get_concrete_function().structured_input_signature[0]) == 1
    with pytest.raises(TypeError):  # the signature is enforced: a rank-2 input is refused
        double(tf.constant([[1.0]]))


def test_traced_refuses_an_autograph_option():
    from textgen._tf import traced

    with pytest.raises(TypeError, match="autograph"):
        traced(lambda x: x, autograph=True)
