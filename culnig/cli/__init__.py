"""The ``culnig`` command line: one module per command group, each with ``register(sub)``.

The CLI only parses and calls library functions; a user mistake (:class:`CulnigError`) is one
``culnig: error: ...`` line and exit 2; Ctrl-C is exit 130 and SIGTERM exit 143, one line each.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from culnig import __version__
from culnig.errors import CulnigError

# Command groups in --help order; finetune and saq are optional until their modules exist.
GROUPS = ("models", "evaluation", "attribution", "masking", "data", "selection", "lape",
          "finetune", "runs", "saq")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks and clean-up run."""


def _on_sigterm(signum, frame):  # pragma: no cover - exercised by the signal tests
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="culnig",
        description="Find the neurons an LLM uses for cultural understanding (CULNIG) and test "
                    "them by ablation with lm-evaluation-harness on vLLM.",
    )
    parser.add_argument("--version", action="version", version=f"culnig {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in GROUPS:
        try:
            module = importlib.import_module(f"culnig.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"culnig.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if passthrough:
        args.lm_eval_args = passthrough
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except CulnigError as exc:
        print(f"culnig: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nculnig: {args.command} interrupted; {_resume_hint(args)}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"culnig: {args.command} terminated; {_resume_hint(args)}", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


def _resume_hint(args: argparse.Namespace) -> str:
    hint = getattr(args, "resume_hint", None)
    return hint or "finished outputs are kept: run the same command again to continue"


if __name__ == "__main__":
    sys.exit(main())
