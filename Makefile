# Two entry points for a fresh machine (see README): `make demo` and `make test`.
.PHONY: setup demo test test-all bench

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/edgetrain demo

test: setup
	.venv/bin/python -m pytest -q -n 2 -p no:cacheprovider

test-all: setup
	EDGETRAIN_SLOW=1 .venv/bin/python -m pytest -q -n 2 -p no:cacheprovider
