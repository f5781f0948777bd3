# The two set-up commands of README.md: each one creates/updates .venv/ by itself.
#   make demo   the main job: `culnig demo` on the embedded default model and bundled data
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
	$(CULNIG) demo $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
