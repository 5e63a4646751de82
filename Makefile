.PHONY: deps test bench

# Install what the tests need (apt, pip, npm), then run every test.
test: deps
	python3 -m pytest -ra

deps:
	bash scripts/install-test-deps

bench:
	python3 bench/credentials.py
	python3 bench/login.py
	python3 bench/spawn.py
	python3 bench/route.py
