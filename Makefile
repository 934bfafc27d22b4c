# The two commands of the README: `make demo` and `make test`.
# Both create .venv and install what they need; nothing has to be installed by hand.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# PostgreSQL store tests run whenever a server answers here; EMFENCE_REQUIRE_PG=1
# turns "skip: no PostgreSQL" into a failure, so CI cannot silently skip them.
PG_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
export EMFENCE_TEST_PG ?= $(PG_URL)

# numba's on-disk cache checks only the source file of the cached function, not the
# kernels it inlines from other modules (engine kernels inline geofence kernels) nor the
# constants it compiles in (engine kernels take the type codes from contract/). Keying
# the cache folder by a hash of every *kernels.py, engine/state.py (the X_*, D_* and P_*
# columns the kernels compile in), engine/late_state.py (the late state's LATE_*) and
# contract/*.py makes any change start afresh.
export NUMBA_CACHE_DIR := $(CURDIR)/.numba-cache/$(shell cat $(sort $(wildcard */*kernels.py */*/kernels.py engine/state.py engine/late_state.py contract/*.py)) | sha1sum | cut -c1-16)

# pytest-xdist workers for `make test` (every test starts its own brokers and databases
# on free ports, so they run side by side); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2

.PHONY: test demo venv system-deps lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# Debian packages the tests use: mosquitto (the real broker the MQTT tests start on a
# free port), chromium + chromium-driver (the console's end-to-end test), a CJK font
# (fonts-wqy-microhei, ~1.6 MB: the console's Chinese text in the browser tests and
# their screenshots; fonts-noto-cjk would be ~56 MB), tzdata (console.timezone) and
# openssl (certificates for the TLS test).
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v mosquitto_passwd >/dev/null 2>&1 || missing="$$missing mosquitto-clients"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	[ -n "$$(fc-list :lang=zh 2>/dev/null)" ] || missing="$$missing fonts-wqy-microhei"; \
	[ -e /usr/share/zoneinfo/Asia/Shanghai ] || missing="$$missing tzdata"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: $(STAMP) system-deps
	@if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -d "$(EMFENCE_TEST_PG)"; then \
	  export EMFENCE_REQUIRE_PG=1; fi; \
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal && \
	echo "--- kernels again as plain Python (NUMBA_DISABLE_JIT=1)" && \
	NUMBA_DISABLE_JIT=1 $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal -m kernel

demo: $(STAMP) system-deps
	$(PY) -m emfence.demo

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .numba-cache demo-run bench-out
