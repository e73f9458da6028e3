# fusegw — two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEB_PKGS := fuse3 libfuse3-dev pkg-config attr btrfs-progs xfsprogs fio gcc python3-dev \
            libsystemd-dev systemd python3-venv patch
# Only the tests need these: `make test` installs them (a node gets no Redis from `make install`);
# postgresql: the manager's database that tests/postgres_fixture.py starts for the migration.
TEST_DEB_PKGS := redis-server postgresql
STAMP_DEB := $(VENV)/.deb-stamp
STAMP_TEST_DEB := $(VENV)/.test-deb-stamp
STAMP_PY := $(VENV)/.py-stamp
# pyfuse3 from its pinned sdist with fusegw's patches (third_party/pyfuse3/README.md says why).
PYFUSE3 := third_party/pyfuse3
STAMP_PYFUSE3 := $(VENV)/.pyfuse3-stamp
# Where install makes fusegw reachable by the system (scripts/install-system.sh says why these);
# override them to install elsewhere, e.g. `make install SBINDIR=/tmp/x/sbin UNITDIR=...`.
SBINDIR ?= /usr/local/sbin
UNITDIR ?= /usr/local/lib/systemd/system
TMPFILESDIR ?= /usr/local/lib/tmpfiles.d
SYSTEM_DIRS = BIN=$(CURDIR)/$(BIN) SBINDIR=$(SBINDIR) UNITDIR=$(UNITDIR) TMPFILESDIR=$(TMPFILESDIR)

.PHONY: install uninstall run test lint bench clean

install: $(STAMP_DEB) $(STAMP_PYFUSE3) $(STAMP_PY)  ## idempotent: packages, .venv, links, units
	@$(SYSTEM_DIRS) scripts/install-system.sh install

uninstall:  ## removes what install put outside the tree (not the packages, not .venv)
	@$(SYSTEM_DIRS) scripts/install-system.sh uninstall

# The Makefile is a prerequisite: a package added to DEB_PKGS reaches machines with a .venv.
$(STAMP_DEB): Makefile
	@scripts/apt-install.sh $(DEB_PKGS)
	@mkdir -p $(VENV) && touch $@

# The packages start a Redis and a PostgreSQL of their own where systemd runs: switched off, the
# tests start theirs.
$(STAMP_TEST_DEB): Makefile | $(STAMP_DEB)
	@dpkg -s $(TEST_DEB_PKGS) >/dev/null 2>&1 || { scripts/apt-install.sh $(TEST_DEB_PKGS) && \
	  if [ -d /run/systemd/system ]; then for unit in redis-server postgresql; do \
	    systemctl disable --now $$unit.service >/dev/null 2>&1 || true; done; fi; }
	@touch $@

# Rebuilt when the series, a patch or the script changes; before `pip install -e`, whose
# `pyfuse3>=3.5,<3.6` the installed 3.5.0+fusegw.N satisfies (so pip keeps it).
$(STAMP_PYFUSE3): $(PYFUSE3)/series $(PYFUSE3)/build.sh $(wildcard $(PYFUSE3)/patches/*.patch) \
                  | $(STAMP_DEB)
	@[ -x $(BIN)/python ] || $(PY) -m venv $(VENV)
	$(PYFUSE3)/build.sh $(BIN)
	@touch $@

$(STAMP_PY): pyproject.toml | $(STAMP_DEB) $(STAMP_PYFUSE3)
	@[ -x $(BIN)/python ] || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/pip install -q -e '.[test,dev]'
	@touch $@

run: install  ## serve a demo gateway on ./var until Ctrl-C
	$(BIN)/python scripts/demo.py

test: install $(STAMP_TEST_DEB)  ## the whole suite
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check fusegw backends mountd tests bench
	$(BIN)/mypy fusegw backends mountd

bench: install
	$(BIN)/python bench/run.py $(if $(QUICK),--quick,)

clean: uninstall  # no links left pointing into a removed .venv
	-rm -rf $(VENV) .venv-manager var
