"""Every subcommand's user mistakes end in one ``culnig: error:`` line and exit 2, never a
traceback (run in-process through ``culnig.cli.main``: an uncaught exception fails the test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from culnig.cli import build_parser, main


def _cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    bad_json = tmp / "bad.json"
    bad_json.write_text("{not json")
    empty = tmp / "empty"
    empty.mkdir(exist_ok=True)
    cfg = tmp / "sweep.yaml"
    cfg.write_text("run_dir: x\nmodels: [demo]\n")
    items = tmp / "items.jsonl"
    items.write_text(json.dumps({"id": "1"}) + "\n")
    return [
        ("models check", ["models", "check", str(tmp / "nope")], "no such model folder"),
        ("eval", ["eval", "--model", str(tmp / "nope"), "--tasks", "culnig_qnli"], "no such model"),
        ("attribute", ["attribute", "--model", str(tmp / "nope"), "--data", str(items),
                       "--out", str(tmp / "s.safetensors")], "missing field 'dataset'"),
        ("bake", ["bake", "--model", str(tmp / "nope"), "--set", str(bad_json),
                  "--out", str(tmp / "o")], ""),
        ("verify", ["verify", "--model", str(tmp / "nope"), "--set", str(bad_json),
                    "--masked", str(tmp / "m")], ""),
        ("data build", ["data", "build", "--data-dir", str(tmp / "nope"), "--out", str(tmp / "d")],
         "no such data folder"),
        ("data wvs-majority", ["data", "wvs-majority", "--values", str(tmp / "v.tsv"),
                               "--demographic", str(tmp / "d.tsv"), "--out", str(tmp / "o.jsonl")],
         "no such file"),
        ("select general", ["select", "general", "--neur", str(tmp / "n.safetensors"),
                            "--ctrl", str(tmp / "c"), "--crc", str(tmp / "r"),
                            "--out", str(tmp / "g.json")], ""),
        ("select specific", ["select", "specific", "--neur", str(tmp / "n.safetensors"),
                             "--ctrl", str(tmp / "c"), "--crc", str(tmp / "r"), "--country", "Spain",
                             "--out", str(tmp / "s.json")], ""),
        ("select random", ["select", "random", "--like", str(bad_json), "--out", str(tmp / "r")], ""),
        ("select lape", ["select", "lape", "--stats", str(tmp / "nope.safetensors"),
                         "--out", str(tmp / "l")], ""),
        ("sets show", ["sets", "show", str(tmp / "nope.json")], "no such neuron set file"),
        ("sets compare", ["sets", "compare", str(bad_json), str(bad_json)], ""),
        ("sets combine", ["sets", "combine", str(bad_json), "and", str(bad_json),
                          "--out", str(tmp / "c.json")], ""),
        ("modules", ["modules", "--model", str(tmp / "nope"), "--set", str(bad_json)], ""),
        ("activations", ["activations", "--model", str(tmp / "nope"), "--corpus",
                         f"en={tmp / 'none.txt'}", "--out", str(tmp / "a.safetensors")], ""),
        ("tasks ppl", ["tasks", "ppl", "--corpus", f"en={tmp / 'none.txt'}", "--out", str(tmp / "t")], ""),
        ("corpora blend", ["corpora", "blend", "--blend-dir", str(tmp / "nope"), "--out", str(tmp / "c")], ""),
        ("report-lape", ["report-lape"], "--out"),
        ("finetune", ["finetune", "--model", str(tmp / "nope"), "--set", str(bad_json),
                      "--out", str(tmp / "f")], ""),
        ("sweep", ["sweep", str(cfg)], "'tasks' is required"),
        ("report", ["report", str(empty)], "no results/ folder"),
        ("saq rejudge", ["saq", "rejudge", str(tmp / "nope")], ""),
        ("demo", ["demo", "--model", str(tmp / "nope"), "--out", str(tmp / "demo")], ""),
    ]


def _all_commands() -> set[str]:
    """Every leaf command of the parser (``data build``, ``sweep``, ...)."""
    import argparse

    out: set[str] = set()

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out.add(prefix.strip())
            return
        for name, sub in subs[0].choices.items():
            walk(sub, f"{prefix} {name}")

    walk(build_parser(), "")
    return out


def test_every_command_has_an_error_case(tmp_path):
    covered = {name for name, _, _ in _cases(tmp_path)}
    missing = _all_commands() - covered - {"env", "models demo", "models smollm2", "models list",
                                           "saq judges"}
    assert not missing, f"commands without an error-path case here: {sorted(missing)}"


@pytest.mark.parametrize("index", range(24))
def test_user_mistake_is_one_line(index, tmp_path, capsys):
    name, argv, expect = _cases(tmp_path)[index]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (name, code, err[-2000:])
    assert "Traceback (most recent call last)" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("culnig: error:")]
    assert len(lines) == 1, (name, err[-2000:])
    assert expect in lines[0], (name, lines[0])


def test_eval_unknown_task_is_one_line_before_lm_eval_starts(tiny_llama, capsys):
    """Issue 19, finding 4: was a ValueError traceback from lm-eval after 16 s."""
    code = main(["eval", "--model", str(tiny_llama), "--backend", "hf", "--tasks", "no_such_task"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-2000:]
    (line,) = [ln for ln in err.splitlines() if ln.startswith("culnig: error:")]
    assert "unknown task 'no_such_task'" in line
