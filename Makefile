# The two set-up commands of README.md: each one creates/updates .venv/ by itself.
#   make demo   prepare the embedded default model and run the main job on it
#   make test   run the whole test suite
VENV   := .venv
STAMP  := $(VENV)/.culnig-setup
CULNIG := $(VENV)/bin/culnig

.PHONY: demo test setup clean-venv

$(STAMP): pyproject.toml scripts/setup-venv.sh
	bash scripts/setup-venv.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(CULNIG) models demo
	$(CULNIG) models check demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
