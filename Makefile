# Shortcuts; the README's two commands are ci/demo.sh and ci/test.sh.
.PHONY: setup demo test unit bench
setup:
	./ci/setup.sh
demo:
	./ci/demo.sh
test:
	./ci/test.sh
unit:
	./ci/test.sh tests/unit
bench: setup
	.venv/bin/python -m bench
