.PHONY: deps lint test bench

# Install what the tests need (apt, pip, npm), lint the code, then run every test.
test: deps lint
	python3 -m pytest -ra

deps:
	bash scripts/install-test-deps

# flake8's settings are in setup.cfg (flake8 does not read pyproject.toml)
lint:
	python3 -m flake8 casa_auth casa_hub casa_spawner casa_session casa_condor tests bench config

bench:
	python3 -m bench.credentials
	python3 -m bench.login
	python3 -m bench.spawn
	python3 -m bench.route
	python3 -m bench.gateway
	python3 -m bench.xcache
	python3 -m bench.coffea
	python3 -m bench.htcondor_workers
