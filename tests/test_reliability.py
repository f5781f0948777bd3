"""Reliability of the libraries (issue 19): weights identity of score, set and checkpoint files,
safetensors only, context length, clean stops, strict score and set files, unknown countries, file
modes. Numbers in the test names are the issue's findings."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attribution.engine import AttributionOptions, Attributor
from culnig.errors import CulnigError
from culnig.loading import weights_stamp
from tests.conftest import CULNIG, REPO, run_culnig, single_error

ROWS = [("USA", "A", "Which one is right? A. tea B. coffee"),
        ("UK", "B", "Pick one of A, B, C for the question about food and sport."),
        ("USA", "1", "Answer with 0 or 1 only: is the sky blue?"),
        ("Japan", "C", "Options A B C D. Choose."),
        ("UK", "D", "A short one"),
        ("Japan", "yes", "Is this a question with a longer answer? Say yes or no."),
        ("USA", "E", "Choose among A, B, C, D, E please, the answer is"),
        ("UK", "A", "A or B?")]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny Llamas of the same shape (same registry fingerprint), seeds 0 and 1."""
    from culnig.testing import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("pair")
    return (save_tiny_checkpoint("llama", root / "tiny", seed=0),
            save_tiny_checkpoint("llama", root / "tiny2", seed=1))


def write_items(path: Path, rows=ROWS, first_line: dict | None = None, repeat: int = 1) -> Path:
    lines = [json.dumps(first_line)] if first_line else []
    for r in range(repeat):
        lines += [json.dumps({"id": f"i{r}-{k}", "dataset": "t", "country": c, "answer": a,
                              "prompt": p}) for k, (c, a, p) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def interrupt_on(n: int, monkeypatch) -> None:
    """Make the n-th batch raise KeyboardInterrupt (as Ctrl-C would)."""
    original, calls = Attributor.process_batch, {"n": 0}

    def batch(self, b):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self, b)

    monkeypatch.setattr(Attributor, "process_batch", batch)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# --- 1, 2: weights identity -------------------------------------------------------------------
def test_1_resume_refuses_a_checkpoint_of_another_models_weights(pair, tmp_path, monkeypatch):
    from attribution.run import run_attribution
    from attribution.scores import Scores

    tiny, tiny2 = pair
    assert weights_stamp(tiny) != weights_stamp(tiny2)
    data = write_items(tmp_path / "items.jsonl")
    out = tmp_path / "s.safetensors"
    opts = AttributionOptions(batch_size=2)
    interrupt_on(3, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_attribution(str(tiny), data, out, opts, checkpoint_every=2, progress=False)
    monkeypatch.undo()
    partial = tmp_path / "s.safetensors.partial"
    before = partial.read_bytes()
    line = single_error(run_culnig("attribute", "--model", str(tiny2), "--data", str(data),
                                   "--out", str(out), "--batch-size", "2", "--resume"))
    assert str(tiny) in line and str(tiny2) in line
    assert weights_stamp(tiny) in line and weights_stamp(tiny2) in line
    assert partial.read_bytes() == before and not out.exists()
    # the same model resumes, and its scores equal an uninterrupted run's
    run_attribution(str(tiny), data, out, opts, checkpoint_every=2, resume=True, progress=False)
    full = run_attribution(str(tiny), data, tmp_path / "full.safetensors", opts, progress=False)
    a, b = Scores.load(out), Scores.load(full)
    assert a.meta["weights_stamp"] == weights_stamp(tiny)
    assert torch.equal(a.sum_p, b.sum_p) and torch.equal(a.tensors["max.gate"], b.tensors["max.gate"])


def test_2_bake_refuses_a_set_selected_on_other_weights(pair, tmp_path):
    from attribution.run import run_attribution
    from masking.bake import bake

    tiny, tiny2 = pair
    scores = run_attribution(str(tiny), write_items(tmp_path / "items.jsonl"),
                             tmp_path / "neur.safetensors", AttributionOptions(), progress=False)
    set_path = tmp_path / "general.json"
    proc = run_culnig("select", "general", "--neur", str(scores), "--no-control", "--no-crc",
                      "--out", str(set_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    made = json.loads(set_path.read_text())["model"]
    assert made["weights_stamp"] == weights_stamp(tiny)  # score file -> set file

    out = tmp_path / "masked"
    line = single_error(run_culnig("bake", "--model", str(tiny2), "--set", str(set_path),
                                   "--out", str(out)))
    assert str(tiny) in line and str(tiny2) in line and "--allow-other-weights" in line
    assert weights_stamp(tiny) in line and weights_stamp(tiny2) in line
    assert not out.exists() and leftovers(tmp_path) == []

    other = bake(str(tiny2), set_path, out, allow_other_weights=True).manifest
    assert other["allow_other_weights"] is True and other["set"]["same_weights"] is False
    assert other["set"]["weights_stamp"] == weights_stamp(tiny)
    assert other["source"]["weights_stamp"] == weights_stamp(tiny2)
    same = bake(str(tiny), set_path, tmp_path / "masked-tiny").manifest
    assert same["set"]["same_weights"] is True and same["allow_other_weights"] is False
    # a set file written before weights stamps existed still loads and bakes (stamp unknown)
    data = json.loads(set_path.read_text())
    del data["model"]["weights_stamp"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = bake(str(tiny2), tmp_path / "old.json", tmp_path / "masked-old").manifest
    assert old["set"]["same_weights"] is None


# --- 5: safetensors only ----------------------------------------------------------------------
def test_5_every_load_path_refuses_pickle_only_folders(pair, tmp_path, monkeypatch):
    import shutil

    from culnig import loading
    from masking.source import resolve_source

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(pair[0] / f, pickled / f)
    (pickled / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(CulnigError) as bake_side:
        resolve_source(str(pickled))
    with pytest.raises(CulnigError) as load_side:
        loading.load_model(str(pickled))
    assert str(load_side.value) == str(bake_side.value)  # one message
    assert "pickle" in str(load_side.value) and "arbitrary code" in str(load_side.value)
    data = write_items(tmp_path / "items.jsonl")
    line = single_error(run_culnig("attribute", "--model", str(pickled), "--data", str(data),
                                   "--out", str(tmp_path / "s.safetensors")))
    assert "pickle weights" in line and "arbitrary code" in line
    # transformers is always asked for safetensors
    import transformers

    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(ref, **kwargs):
        seen.update(kwargs)
        return real(ref, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    loading.load_model(str(pair[0]))
    assert seen.get("use_safetensors") is True


# --- 6: context length ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_model(tmp_path_factory) -> Path:
    from culnig.testing import save_tiny_checkpoint

    return save_tiny_checkpoint("llama", tmp_path_factory.mktemp("short") / "ctx64", seed=0,
                                max_position_embeddings=64)


def test_6_items_longer_than_the_context_are_an_error_unless_truncated(short_model, tmp_path):
    from attribution.run import run_attribution
    from attribution.scores import Scores
    from culnig.loading import load_model

    long_prompt = "Which of these is a traditional dish? " * 20
    rows = ROWS[:2] + [("USA", "A", long_prompt)] + ROWS[2:4]
    data = write_items(tmp_path / "items.jsonl", rows)
    _, tok, _ = load_model(str(short_model))
    text = tok.apply_chat_template([{"role": "user", "content": long_prompt}], tokenize=False,
                                   add_generation_prompt=True)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    assert n > 64
    out = tmp_path / "s.safetensors"
    line = single_error(run_culnig("attribute", "--model", str(short_model), "--data", str(data),
                                   "--out", str(out)))
    assert f"{data}:3: item 'i0-2' is {n} tokens long, more than the model's context of 64" in line
    assert "--truncate" in line
    line = single_error(run_culnig("attribute", "--model", str(short_model), "--data", str(data),
                                   "--out", str(out), "--max-length", "0"))
    assert ">= 2" in line
    line = single_error(run_culnig("attribute", "--model", str(short_model), "--data", str(data),
                                   "--out", str(out), "--max-length", "20"))
    assert f"{data}:" in line and "--max-length 20" in line
    assert not out.exists()
    for side in ("left", "right"):
        path = run_attribution(str(short_model), data, tmp_path / f"{side}.safetensors",
                               AttributionOptions(truncate=side), progress=False)
        meta = Scores.load(path).meta
        assert meta["truncation"] == {"side": side, "limit": 64, "items": 1}
        assert meta["options"]["truncate"] == side


def test_6_truncation_keeps_the_answer_and_bos():
    from attribution.encode import Encoded, fit

    enc = Encoded(input_ids=[1, 10, 11, 12, 13, 14, 50, 51], answer_ids=[50, 51, 52])
    left = fit(enc, 5, "left", bos_id=1, what="x")
    right = fit(enc, 5, "right", bos_id=1, what="x")
    assert left.input_ids == [1, 13, 14, 50, 51] and left.truncated == 3
    assert right.input_ids == [1, 10, 11, 50, 51] and right.truncated == 3
    assert fit(enc, 5, "left", bos_id=None, what="x").input_ids == [12, 13, 14, 50, 51]
    with pytest.raises(CulnigError, match="does not fit"):
        fit(enc, 3, "left", bos_id=1, what="x")
    with pytest.raises(CulnigError, match=">= 2"):
        AttributionOptions(max_length=1)
    with pytest.raises(CulnigError, match="--truncate"):
        AttributionOptions(truncate="middle")


# --- 7, 8: clean stops ------------------------------------------------------------------------
def _start(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, f"{path} did not appear"
        time.sleep(0.05)


# `culnig bake` (its real CLI main, with its signal handling), with a shard write that waits
# once the temporary folder has content.
SLOW_BAKE = """
import sys, time
from pathlib import Path
import masking.bake as b
real = b.write_scaled
def slow(src, dst, *a, **k):
    real(src, dst, *a, **k)
    Path(sys.argv[1]).write_text("in the middle")
    time.sleep(120)
b.write_scaled = slow
from culnig.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_7_interrupted_bake_leaves_no_temporary_folder(pair, tmp_path, sig):
    from culnig.neuron_sets import NeuronSet
    from culnig.loading import layout_of

    tiny = pair[0]
    set_path = tmp_path / "s.json"
    NeuronSet.from_indices(layout_of(str(tiny)), "hand", {"gate": {0: [1, 2]}}).save(set_path)
    out, flag = tmp_path / "out", tmp_path / "flag"
    proc = _start(SLOW_BAKE, str(flag), "bake", "--model", str(tiny), "--set", str(set_path),
                  "--out", str(out))
    _wait_for(flag, proc)
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert "Traceback" not in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_7_rerun_removes_stale_bake_folders_and_force_over_a_file_leaves_nothing(pair, tmp_path):
    from culnig.neuron_sets import NeuronSet
    from culnig.loading import layout_of
    from masking.bake import bake

    tiny = pair[0]
    set_path = tmp_path / "s.json"
    NeuronSet.from_indices(layout_of(str(tiny)), "hand", {"gate": {0: [1, 2]}}).save(set_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.tmp-{dead.pid}-abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        alive = tmp_path / f".other.tmp-{running.pid}-efgh"  # a running process's: kept
        alive.mkdir()
        bake(str(tiny), set_path, tmp_path / "out")
        assert not stale.exists() and alive.exists()
    finally:
        running.kill()
        running.wait()
    alive.rmdir()
    (tmp_path / "file").write_text("a regular file\n")
    bake(str(tiny), set_path, tmp_path / "file", force=True)
    assert (tmp_path / "file" / "culnig_mask.json").is_file()
    assert leftovers(tmp_path) == []


ATTRIBUTE = """
import sys, time
import attribution.engine as e
real = e.Attributor.process_batch
def slow(self, batch):
    time.sleep(0.05)
    return real(self, batch)
e.Attributor.process_batch = slow
from culnig.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_8_interrupted_attribute_keeps_its_checkpoint_and_resumes(pair, tmp_path, sig):
    from attribution.run import run_attribution
    from attribution.scores import Scores

    tiny = pair[0]
    data = write_items(tmp_path / "items.jsonl", repeat=16)  # 128 items, batches of 4
    out = tmp_path / "s.safetensors"
    args = ["attribute", "--model", str(tiny), "--data", str(data), "--out", str(out),
            "--batch-size", "4", "--checkpoint-every", "8"]
    proc = _start(ATTRIBUTE, *args)
    partial = tmp_path / "s.safetensors.partial"
    _wait_for(partial, proc)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert "Traceback" not in err and "--resume" in err
    assert partial.is_file() and not out.exists() and leftovers(tmp_path) == []
    done = run_culnig(*args, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not partial.exists()
    full = run_attribution(str(tiny), data, tmp_path / "full.safetensors",
                           AttributionOptions(batch_size=4), progress=False)
    a, b = Scores.load(out), Scores.load(full)
    assert torch.equal(a.count, b.count) and torch.equal(a.sum_p, b.sum_p)
    for key in a.tensors:
        assert torch.equal(a.tensors[key], b.tensors[key]), key


# --- 9: malformed score files -----------------------------------------------------------------
def _score_file(path: Path, meta, tensors=None) -> Path:
    from safetensors.torch import save_file

    tensors = tensors or {"max.gate": torch.zeros(2, 2, 8), "count": torch.ones(2, dtype=torch.float64),
                          "sum_p": torch.ones(2, dtype=torch.float64)}
    save_file(tensors, str(path), metadata={"culnig": meta if isinstance(meta, str) else json.dumps(meta)})
    return path


GOOD_META = {"format": "culnig-scores/1", "countries": ["USA"], "modules": ["gate"],
             "aggregations": ["max"], "n_layers": 2, "n_neurons": {"gate": 8}, "arch": "llama",
             "fingerprint": "f" * 16}


@pytest.mark.parametrize("case,want", [
    ("not json", "metadata is not JSON"),
    ("no countries", "lacks 'countries'"),
    ("shape", "tensor 'max.gate' has shape [2, 2, 8], but the metadata implies [2, 3, 8]"),
    ("countries", "tensor 'count' has shape [2], but 2 countries (+ total) need [3]"),
    ("missing tensor", "no such tensor"),
])
def test_9_malformed_score_files_are_one_line(tmp_path, case, want):
    from attribution.scores import Scores

    meta = dict(GOOD_META)
    if case == "not json":
        meta = "{not json"
    elif case == "no countries":
        del meta["countries"]
    elif case == "shape":
        meta["n_layers"] = 3
    elif case == "countries":
        meta["countries"] = ["USA", "UK"]
    else:
        meta["aggregations"] = ["max", "mean"]
    path = _score_file(tmp_path / "s.safetensors", meta)
    with pytest.raises(CulnigError, match="^" + str(path).replace(".", r"\.") + ": ") as exc:
        Scores.load(path)
    assert want in str(exc.value)
    assert Scores.load(_score_file(tmp_path / "ok.safetensors", GOOD_META)).countries == ["USA"]
    line = single_error(run_culnig("select", "general", "--neur", str(path), "--no-control",
                                   "--no-crc", "--out", str(tmp_path / "set.json")))
    assert want in line


# --- 9, 10: malformed and loose set files -----------------------------------------------------
def _set_data() -> dict:
    return {"format": "culnig-neuron-set/1", "method": "hand",
            "model": {"fingerprint": "f" * 16, "arch": "llama", "n_layers": 2,
                      "n_neurons": {"gate": 10, "up": 10, "q": 5, "k": 5, "v": 5}},
            "neurons": {"gate": {"0": [1, 2, 3], "1": [4]}}}


@pytest.mark.parametrize("case,want", [
    ("list", "a JSON object is expected, got a list"),
    ("model string", "field 'model' must be an object"),
    ("scalar layer", "gate layer 0: indices must be a list of integers, got a number"),
    ("1e30", "gate layer 0: index 1e+30 is not an integer"),
    ("float", "gate layer 0: index 3.7 is not an integer"),
    ("string", 'gate layer 0: index "5" is not an integer'),
    ("bool", "gate layer 0: index true is not an integer"),
    ("nested", "gate layer 0: index [1, 2] is not an integer"),
    ("duplicate", "gate layer 0: index 3 is listed twice"),
    ("unsorted", "gate layer 0: indices are not sorted"),
    ("negative", "gate layer 0: index -1 is negative"),
    ("layer key", "gate layer x: the layer must be a non-negative integer"),
    ("layer range", "gate layer 7: out of range (the model has 2 layers)"),
    ("big int", "gate layer 0: index 1000000000000000000000000000000 is out of range"),
])
def test_9_10_set_files_are_strict(tmp_path, case, want):
    from culnig.neuron_sets import NeuronSet

    data = _set_data()
    gate = data["neurons"]["gate"]
    if case == "list":
        data = [data]
    elif case == "model string":
        data["model"] = "tiny"
    else:
        value = {"scalar layer": 3, "1e30": [1e30], "float": [1, 3.7], "string": ["5"],
                 "bool": [True, 2], "nested": [[1, 2]], "duplicate": [1, 3, 3, 4],
                 "unsorted": [3, 1], "negative": [-1, 2], "big int": [10 ** 30]}.get(case)
        if case == "layer key":
            gate["x"] = [1]
        elif case == "layer range":
            gate["7"] = [1]
        else:
            gate["0"] = value
    path = tmp_path / "set.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CulnigError) as exc:
        NeuronSet.load(path)
    assert str(exc.value).startswith(f"{path}: ") and want in str(exc.value), str(exc.value)
    if case in ("list", "model string", "scalar layer", "1e30"):  # the tracebacks
        assert want in single_error(run_culnig("sets", "show", str(path)))


def test_10_counts_are_never_inflated_by_duplicates():
    from culnig.neuron_sets import NeuronSet

    ns = NeuronSet(model=_set_data()["model"], method="hand",
                   neurons={"gate": {0: [5, 1, 1, 5, 3]}, "q": {1: [0, 0]}})
    assert ns.counts()["gate"] == 3 and ns.counts()["total"] == 4
    assert ns.neurons["gate"][0].tolist() == [1, 3, 5]


# --- 11: unknown countries, file modes, --out folder ------------------------------------------
def test_11_unknown_country_is_an_error_unless_declared(pair, tmp_path):
    from attribution.items import read_items

    rows = ROWS[:2] + [("Untied Kingdom", "A", "Tea or coffee?")]
    data = write_items(tmp_path / "items.jsonl", rows)
    with pytest.raises(CulnigError) as exc:
        read_items(data)
    msg = str(exc.value)
    assert msg.startswith(f"{data}:3: unknown country 'Untied Kingdom'")
    assert "USA" in msg and "South Korea" in msg and '{"countries"' in msg
    line = single_error(run_culnig("attribute", "--model", str(pair[0]), "--data", str(data),
                                   "--out", str(tmp_path / "s.safetensors")))
    assert "Untied Kingdom" in line and "known:" in line
    # spellings of known countries are one country; declared names are taken as written
    spelled = write_items(tmp_path / "spelled.jsonl", [("US", "A", "x"), ("United States", "B", "y"),
                                                       ("Great Britain", "C", "z")])
    assert [it.country for it in read_items(spelled)] == ["USA", "USA", "UK"]
    declared = write_items(tmp_path / "declared.jsonl", rows, first_line={"countries": ["Untied Kingdom"]})
    assert [it.country for it in read_items(declared)] == ["USA", "UK", "Untied Kingdom"]
    late = tmp_path / "late.jsonl"
    late.write_text(data.read_text() + json.dumps({"countries": ["Atlantis"]}) + "\n")
    with pytest.raises(CulnigError, match="first line"):
        read_items(late)
    from attribution.identification import blend_items

    with pytest.raises(CulnigError, match="unknown country 'Untied Kingdom'; known: USA"):
        blend_items(countries=["Untied Kingdom"])


def test_11_written_files_follow_the_umask(pair, tmp_path):
    from attribution.identification import write_items as write_identification_items
    from attribution.run import run_attribution
    from culnig.neuron_sets import NeuronSet
    from culnig.loading import layout_of

    old = os.umask(0o022)
    try:
        items = tmp_path / "items.jsonl"
        write_identification_items(items, [{"id": "a", "dataset": "t", "country": "USA",
                                            "answer": "A", "prompt": "A or B?"}])
        scores = run_attribution(str(pair[0]), items, tmp_path / "s.safetensors",
                                 AttributionOptions(), progress=False)
        set_path = NeuronSet.from_indices(layout_of(str(pair[0])), "hand",
                                          {"gate": {0: [1]}}).save(tmp_path / "set.json")
    finally:
        os.umask(old)
    for path in (items, scores, set_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_11_attribute_out_existing_folder_is_refused_before_any_work(pair, tmp_path):
    data = write_items(tmp_path / "items.jsonl")
    folder = tmp_path / "scores"
    folder.mkdir()
    t0 = time.time()
    line = single_error(run_culnig("attribute", "--model", str(pair[0]), "--data", str(data),
                                   "--out", str(folder), "--force"))
    assert f"{folder} is a folder" in line
    assert folder.is_dir() and list(folder.iterdir()) == [] and not list(tmp_path.glob("*.partial"))
    assert time.time() - t0 < 120
