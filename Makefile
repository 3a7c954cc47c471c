# Makefile for the milestones PostgreSQL extension (PGXS).
#
#   make demo   build, install and play a story of orders in a throwaway cluster
#   make test   build, install and run every suite (pg_regress + pgTAP + shell)
#
# Both set up what they need on a fresh Debian 12 machine (as root): missing
# packages are installed by test/tools/ensure-deps.

EXTENSION  = milestones
MODULE_big = milestones
OBJS       = $(patsubst %.c,%.o,$(wildcard src/*.c))
# Versions.  sql/milestones--1.0.sql is the released 1.0 script and never
# changes.  Everything after it lives in sql/1.1/*.sql; both the 1.1 install
# script and the 1.0 -> 1.1 upgrade script are built from those files (see
# sql/1.1/00_header.sql), so the two cannot drift apart.
EXTVERSION    = 1.1
UPGRADE_PARTS = $(sort $(wildcard sql/1.1/*.sql))
DATA          = sql/milestones--1.0.sql $(COMPANION_DATA)
DATA_built    = sql/milestones--1.1.sql sql/milestones--1.0--1.1.sql
# Companion extensions shipped with milestones (issue 13): milestones_proxy
# lives in proxy/ (SQL only).  Its control file and scripts are DATA of this
# Makefile, installed next to milestones' own files in share/extension.
COMPANION_DATA = $(wildcard proxy/*.control proxy/sql/*--*.sql)
PGFILEDESC = "milestones - milestone orders for a freelance marketplace"

# pg_regress suites: sql/<name>.sql against expected/<name>.out
REGRESS      = $(patsubst sql/%.sql,%,$(filter-out sql/milestones--%,$(wildcard sql/*.sql)))
REGRESS_OPTS = --inputdir=. --load-extension=pgtap

PG_CONFIG ?= pg_config
PG_CPPFLAGS += -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers

# Without the server headers pg_config's PGXS path does not exist: install
# them first so that even "make help"-style invocations work on a new box.
PGXS := $(shell test/tools/ensure-deps --quiet >&2; $(PG_CONFIG) --pgxs)
include $(PGXS)

.PHONY: deps demo test

SCRIPT_GUARD = \echo Use "CREATE EXTENSION milestones" to load this file. \quit

sql/milestones--1.1.sql: sql/milestones--1.0.sql $(UPGRADE_PARTS)
	{ echo '/* sql/milestones--1.1.sql - install script of milestones 1.1, built by make from sql/milestones--1.0.sql and sql/1.1/ */'; \
	  printf '%s\n' '$(SCRIPT_GUARD)'; \
	  grep -v '^\\echo ' $<; \
	  cat $(UPGRADE_PARTS); } > $@

sql/milestones--1.0--1.1.sql: $(UPGRADE_PARTS)
	{ echo '/* sql/milestones--1.0--1.1.sql - upgrade script 1.0 -> 1.1, built by make from sql/1.1/ */'; \
	  printf '%s\n' '$(SCRIPT_GUARD)'; \
	  cat $(UPGRADE_PARTS); } > $@

deps:
	test/tools/ensure-deps

# demo: a story of real orders printed as a DBA would look at them.
demo: all
	$(MAKE) install
	test/tools/demo

# scaleout-demo: four partitions and a proxy (milestones_proxy, PL/Proxy) in
# throwaway clusters, a story of orders through the proxy, and where each
# order landed.  Everything is stopped and removed at the end.
.PHONY: scaleout-demo
scaleout-demo: all
	$(MAKE) install
	test/tools/scaleout-demo

# test: every suite in one throwaway cluster, ending with "N passed, N failed".
test: all
	$(MAKE) install
	test/tools/run-tests

# bench: the performance benchmark (issue 6) in a throwaway cluster, about
# 10 minutes; BENCH_QUICK=1 for a few-seconds smoke run.  See README.
.PHONY: bench
bench: all
	$(MAKE) install
	test/bench/run

# fuzz: SQLsmith (Debian package sqlsmith, installed when missing) against a
# database with the extension and orders in every state, in a throwaway
# cluster; fails if the server crashed even once.  Bounded by
# FUZZ_QUERIES queries and FUZZ_SECONDS seconds.  CI runs a short pass of it
# in make test (test/shell/33_fuzz_smoke.t).
FUZZ_QUERIES ?= 20000
FUZZ_SECONDS ?= 300
.PHONY: fuzz
fuzz: all
	MILESTONES_EXTRA_PACKAGES=sqlsmith test/tools/ensure-deps
	$(MAKE) install
	test/fuzz/run-fuzz $(FUZZ_QUERIES) $(FUZZ_SECONDS)
