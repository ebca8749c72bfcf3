"""textgen export: SavedModel and LiteRT, checked by a program that has no textgen.

The exports are made once per module. One fresh subprocess, which imports only
TensorFlow, numpy and ai_edge_litert (and asserts that ``textgen`` is not in
``sys.modules``), runs every exported model; the tests compare its results with what
textgen itself computes: greedy ``generate`` texts equal ``textgen generate``'s, ``step``
logits equal the numpy decoder's within 1e-5 over 50 steps, and 50 greedy LiteRT steps
pick the tokens textgen picks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from textgen.cli import main
from textgen.decoding.generate import Generator
from textgen.rundir import load_bundle

from .conftest import TOY_CORPUS, TOY_SENTENCES, small_config

TOY_SEEDS = [s.split()[0] for s in TOY_SENTENCES]  # 경마장에, 그의, 가는
CHAR_SEEDS = ["경마장", "그의 말", "오는"]
STEPS = 50

# Run in a fresh interpreter: TensorFlow and the LiteRT interpreter, no textgen.
FOREIGN = r"""
import json, sys
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

jobs = json.load(open(sys.argv[1]))
out = {}
for job in jobs:
    name = job["name"]
    if job["kind"] == "savedmodel":
        loaded = tf.saved_model.load(job["path"])
        result = {"texts": []}
        if "generate" in loaded.signatures:
            gen = loaded.signatures["generate"]
            for seed in job["seeds"]:
                text = gen(seed=tf.constant(seed), max_tokens=tf.constant(job["max_tokens"]),
                           temperature=tf.constant(0.0), rng_seed=tf.constant(0, tf.int64))
                result["texts"].append(text["text"].numpy().decode("utf-8"))
            result["refused"] = []
            for seed in job.get("bad_seeds", []):
                try:
                    gen(seed=tf.constant(seed), max_tokens=tf.constant(5),
                        temperature=tf.constant(0.0), rng_seed=tf.constant(0, tf.int64))
                    result["refused"].append(None)
                except tf.errors.InvalidArgumentError as err:
                    result["refused"].append(err.message)
            if job.get("sample"):  # temperature > 0: the same rng_seed, the same text
                args = dict(seed=tf.constant(job["seeds"][0]), max_tokens=tf.constant(20),
                            temperature=tf.constant(1.5))
                result["sampled"] = [
                    gen(rng_seed=tf.constant(r, tf.int64), **args)["text"].numpy().decode()
                    for r in (1, 1, 2, 3, 4)
                ]
        step = loaded.signatures["step"]
        ids = np.asarray(job["ids"], np.int32)  # (steps, batch)
        state = np.zeros((ids.shape[1], job["state_size"]), np.float32)
        logits = []
        for row in ids:
            res = step(ids=tf.constant(row), state=tf.constant(state))
            logits.append(res["logits"].numpy())
            state = res["state"].numpy()
        np.save(job["logits_out"], np.stack(logits))
    else:
        interp = Interpreter(model_path=job["path"])
        runner = interp.get_signature_runner("step")
        state = np.zeros((1, job["state_size"]), np.float32)
        for token in job["seed_ids"]:
            res = runner(ids=np.array([token], np.int32), state=state)
            state = res["state"]
        picked = []
        for _ in range(job["steps"]):
            token = int(np.argmax(res["logits"][0]))
            picked.append(token)
            res = runner(ids=np.array([token], np.int32), state=res["state"])
        types = sorted({d["dtype"].__name__ for d in interp.get_tensor_details()})
        result = {"picked": picked, "tensor_types": types}
    out[name] = result
assert "textgen" not in sys.modules, "the foreign program imported textgen"
out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "textgen")
json.dump(out, open(sys.argv[2], "w"))
"""


def _train(tmp: Path, name: str, **sections: dict) -> Path:
    from textgen.training.loop import train

    run_dir = tmp / name
    cfg = small_config(TOY_CORPUS, **sections)
    train(cfg, run_dir, progress=False, log=lambda _m: None)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, toy_run) -> dict[str, Path]:
    """The toy word run (LSTM) and two tiny char runs: syllables in lines mode (SimpleRNN)
    and jamo in stream mode (2 GRU layers), whose greedy decoding runs the full 50 steps."""
    tmp = tmp_path_factory.mktemp("export-runs")
    small = {"embedding_dim": 8, "units": 32}
    fast = {"epochs": 20, "learning_rate": 0.02, "jit_compile": False}  # XLA: slower here
    return {
        "toy": toy_run,
        "char": _train(
            tmp, "char", data={"level": "char"}, model=small | {"cell": "rnn"}, train=fast
        ),
        "jamo": _train(
            tmp,
            "jamo",
            data={"level": "char", "normalize": "nfd", "mode": "stream", "seq_len": 20},
            model=small | {"cell": "gru", "layers": 2},
            train=fast,
        ),
    }


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[str, Path]:
    """Each run exported through the command line, once."""
    tmp = tmp_path_factory.mktemp("exported")
    paths = {}
    cli = CliRunner()
    for name, run in runs.items():
        paths[name] = tmp / f"{name}-savedmodel"
        result = cli.invoke(
            main, ["export", str(run), "--format", "savedmodel", "--out", str(paths[name])]
        )
        assert result.exit_code == 0, result.output
    for name, run, extra in (
        ("char-litert", "jamo", []),
        ("char-int8", "jamo", ["--quantize", "dynamic"]),
        ("toy-litert", "toy", []),
    ):
        paths[name] = tmp / name
        args = ["export", str(runs[run]), "--format", "litert", "--out", str(paths[name])]
        result = cli.invoke(main, args + extra)
        assert result.exit_code == 0, result.output
    return paths


def _step_ids(vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, vocab_size, size=(STEPS, 2)).astype(np.int32)


@pytest.fixture(scope="module")
def foreign(runs, exported, tmp_path_factory) -> dict:
    """Run every export in one fresh interpreter without textgen; its results."""
    tmp = tmp_path_factory.mktemp("foreign")
    rng = np.random.default_rng(0)
    jobs = []
    for name in ("toy", "char", "jamo"):
        info = json.loads((exported[name] / "export.json").read_text(encoding="utf-8"))
        seeds = TOY_SEEDS if name == "toy" else CHAR_SEEDS
        jobs.append(
            {
                "name": name,
                "kind": "savedmodel",
                "path": str(exported[name]),
                "seeds": seeds,
                "max_tokens": STEPS,
                "state_size": info["state_size"],
                "ids": _step_ids(info["vocab_size"], rng).tolist(),
                "logits_out": str(tmp / f"{name}-logits.npy"),
                "bad_seeds": ["", "   ", "zzz qqq"] if name == "toy" else [],
                "sample": name == "char",
            }
        )
    jamo, toy = load_bundle(runs["jamo"]), load_bundle(runs["toy"])
    seed_ids = Generator(jamo.lm, jamo.tokenizer).encode_seed(CHAR_SEEDS[0]).tolist()
    toy_ids = Generator(toy.lm, toy.tokenizer).encode_seed(TOY_SEEDS[2]).tolist()
    for name, ids in (("char-litert", seed_ids), ("char-int8", seed_ids), ("toy-litert", toy_ids)):
        info = json.loads((exported[name] / "export.json").read_text(encoding="utf-8"))
        jobs.append(
            {
                "name": name,
                "kind": "litert",
                "path": str(exported[name] / "model.tflite"),
                "state_size": info["state_size"],
                "seed_ids": ids,
                "steps": STEPS,
            }
        )
    (tmp / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    (tmp / "foreign.py").write_text(FOREIGN, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run(
        [sys.executable, "foreign.py", "jobs.json", "out.json"],
        cwd=tmp,  # not the project folder: textgen is not importable by accident
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp / "out.json").read_text(encoding="utf-8"))
    out["jobs"] = {job["name"]: job for job in jobs}
    return out


def test_foreign_program_has_no_textgen(foreign):
    assert foreign["modules"] == []


@pytest.mark.parametrize("name", ["toy", "char", "jamo"])
def test_greedy_generate_equals_textgen_generate(runs, foreign, name):
    bundle = load_bundle(runs[name])
    seeds = foreign["jobs"][name]["seeds"]
    expected = [Generator(bundle.lm, bundle.tokenizer).generate(s, length=STEPS)[0] for s in seeds]
    assert foreign[name]["texts"] == expected
    if name == "toy":
        assert expected == TOY_SENTENCES  # the toy's three sentences, exactly


@pytest.mark.parametrize("name", ["toy", "char", "jamo"])
def test_step_logits_equal_numpy_decoder(runs, foreign, name):
    lm = load_bundle(runs[name]).lm
    job = foreign["jobs"][name]
    ids = np.asarray(job["ids"], np.int32)
    got = np.load(job["logits_out"])
    state = lm.initial_state(ids.shape[1])
    for t, row in enumerate(ids):
        logits, state = lm.step(row, state)
        np.testing.assert_allclose(got[t], logits, rtol=0, atol=1e-5, err_msg=f"step {t}")
    assert got.shape == (STEPS, ids.shape[1], lm.vocab_size)


def test_generate_refuses_bad_seeds_and_samples_repeatably(foreign):
    empty, blank, unknown = foreign["toy"]["refused"]
    assert "the seed is empty" in empty and "the seed is empty" in blank
    assert "no token of the seed is in the vocabulary of the model" in unknown
    sampled = foreign["char"]["sampled"]
    assert sampled[0] == sampled[1]  # same rng_seed, same draws
    assert len(set(sampled[1:])) > 1  # other seeds, other texts
    assert all(text.startswith(CHAR_SEEDS[0]) for text in sampled)


def test_litert_greedy_steps_pick_textgen_tokens(runs, foreign):
    bundle = load_bundle(runs["jamo"])
    gen = Generator(bundle.lm, bundle.tokenizer)
    gen.syllables = None  # the foreign loop is plain argmax over LiteRT's step: no jamo rules
    decoded = gen.continue_ids(CHAR_SEEDS[0], length=STEPS)
    assert len(decoded.ids[0]) == STEPS  # stream mode: no <eos> cuts it short
    assert foreign["char-litert"]["picked"] == decoded.ids[0]


def test_litert_lstm_greedy_steps_pick_textgen_tokens_up_to_eos(runs, foreign):
    bundle = load_bundle(runs["toy"])
    decoded = Generator(bundle.lm, bundle.tokenizer).continue_ids(TOY_SEEDS[2], length=STEPS)
    kept = decoded.ids[0]  # 가는 → 말이 고와야 오는 말이 곱다, then <eos>
    picked = foreign["toy-litert"]["picked"]
    assert picked[: len(kept)] == kept and picked[len(kept)] == bundle.tokenizer.eos_id


def test_quantized_litert_has_int8_weights_and_is_smaller(exported, foreign):
    assert "int8" in foreign["char-int8"]["tensor_types"]
    assert "int8" not in foreign["char-litert"]["tensor_types"]
    small = (exported["char-int8"] / "model.tflite").stat().st_size
    assert small < (exported["char-litert"] / "model.tflite").stat().st_size
    info = json.loads((exported["char-int8"] / "export.json").read_text(encoding="utf-8"))
    assert info["quantize"] == "dynamic" and info["signatures"] == ["step"]


def test_export_folder_describes_the_model(runs, exported):
    info = json.loads((exported["jamo"] / "export.json").read_text(encoding="utf-8"))
    bundle = load_bundle(runs["jamo"])
    assert info["level"] == "jamo" and info["cell"] == "gru" and info["layers"] == 2
    assert info["state_layout"] == [
        {"layer": 0, "units": 32, "h": [0, 32]},
        {"layer": 1, "units": 32, "h": [32, 64]},
    ]
    assert info["state_size"] == 64
    vocab = json.loads((exported["jamo"] / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == list(bundle.tokenizer.vocab.tokens)
    assert "NFD" in info["left_to_caller"]
    assert "no loose jamo" in info["syllables"]  # generate's syllable rules, said
    toy = json.loads((exported["toy"] / "export.json").read_text(encoding="utf-8"))
    assert "syllables" not in toy


def test_help_has_an_example():
    result = CliRunner().invoke(main, ["export", "--help"])
    assert result.exit_code == 0
    assert "textgen export runs/ko-toy --format savedmodel" in result.output


def test_write_litert_step_public_function(runs, tmp_path):
    from textgen.export import write_litert_step

    bundle = load_bundle(runs["toy"])
    path = write_litert_step(bundle.lm, tmp_path / "toy.tflite")
    assert path == tmp_path / "toy.tflite" and path.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.tflite"]  # no temporary file


@pytest.mark.slow
def test_subword_export_is_step_only_with_its_sentencepiece_model(tmp_path):
    """A subword run: no generate (sentencepiece is not a TensorFlow op), step, and a
    sentencepiece.model whose ids, fed to step, give the numpy decoder's logits."""
    import sentencepiece
    import tensorflow as tf

    run = _train(
        tmp_path,
        "subword",
        data={"level": "subword", "vocab_size": 300},
        model={"embedding_dim": 8, "units": 16},
        train={"epochs": 1, "jit_compile": False},
    )
    out = tmp_path / "exported"
    result = CliRunner().invoke(
        main, ["export", str(run), "--format", "savedmodel", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("note: a subword model's tokenizer is not a TensorFlow")
    info = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert info["signatures"] == ["step"] and "sentencepiece" in info["left_to_caller"]
    bundle = load_bundle(run)
    seed = "경마장에 있는"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(out / "sentencepiece.model"))
    ids = sp.encode(seed)
    assert ids == bundle.tokenizer.encode(seed).tolist()
    loaded = tf.saved_model.load(str(out))
    assert sorted(loaded.signatures) == ["serving_default", "step"]
    state = np.zeros((1, info["state_size"]), np.float32)
    numpy_state = bundle.lm.initial_state(1)
    for token in ids:
        res = loaded.signatures["step"](ids=tf.constant([token]), state=tf.constant(state))
        state = res["state"].numpy()
        logits, numpy_state = bundle.lm.step(np.array([token]), numpy_state)
        np.testing.assert_allclose(res["logits"].numpy(), logits, rtol=0, atol=1e-5)
