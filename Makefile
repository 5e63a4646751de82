.PHONY: deps test bench

# Install what the tests need (apt, pip, npm), then run every test.
test: deps
	python3 -m pytest -ra

deps:
	bash scripts/install-test-deps

bench:
	python3 -m bench.credentials
	python3 -m bench.login
	python3 -m bench.spawn
	python3 -m bench.route
