# Makefile for the milestones PostgreSQL extension (PGXS).
#
#   make && make install   build and install (needs the server headers:
#                          postgresql-server-dev-15); never installs packages
#   make installcheck      the pg_regress suites against a running server
#   make demo              build, install and play a story of orders in a throwaway cluster
#   make test              build, install and run every suite (pg_regress + pgTAP + shell)
#   make deb               the Debian package postgresql-15-milestones, in build-deb/
#
# Only the convenience targets (demo, test, bench, fuzz, deb, deps,
# scaleout-demo) set up a fresh Debian 12 machine: as root they install the
# packages that are missing (test/tools/ensure-deps, one list).  Plain make,
# make install and make installcheck never run the package manager:
# packagers build in chroots, and other systems have no dpkg.
#
# The Makefile also works out of tree (VPATH), as pg_buildext builds it:
#   make -C build-15 -f ../Makefile VPATH=.. PG_CONFIG=...
# so every source path below goes through $(srcdir), and sources are
# found with $(wildcard $(srcdir)/...).

EXTENSION  = milestones
MODULE_big = milestones
OBJS       = $(patsubst $(srcdir)/%.c,%.o,$(wildcard $(srcdir)/src/*.c))
# Versions.  sql/milestones--1.0.sql is the released 1.0 script and never
# changes.  What 1.1 added lives in sql/1.1/*.sql: both the 1.1 install
# script and the 1.0 -> 1.1 upgrade script are built from those files (see
# sql/1.1/00_header.sql), so the two cannot drift apart; 1.1 is released
# too, and those two built scripts never change again.  What 1.2 adds lives
# in sql/1.2/*.sql the same way: the 1.2 install script is 1.0 + sql/1.1/ +
# sql/1.2/, the 1.1 -> 1.2 upgrade script is sql/1.2/ (see
# sql/1.2/00_header.sql), and a 1.0 database follows 1.0 -> 1.1 -> 1.2 by
# itself.  Every version's scripts are installed: a database at 1.0 or 1.1
# keeps working with this library and can be updated.
EXTVERSION       = 1.2
UPGRADE_PARTS    = $(sort $(wildcard $(srcdir)/sql/1.1/*.sql))
UPGRADE_PARTS_12 = $(sort $(wildcard $(srcdir)/sql/1.2/*.sql))
DATA             = sql/milestones--1.0.sql $(COMPANION_DATA)
DATA_built       = sql/milestones--1.1.sql sql/milestones--1.0--1.1.sql \
                   sql/milestones--1.2.sql sql/milestones--1.1--1.2.sql
PGFILEDESC = "milestones - milestone orders for a freelance marketplace"

# Companion extensions shipped with milestones (issue 13): milestones_proxy
# lives in proxy/.  Its control file proxy/*.control and its scripts
# proxy/sql/*--*.sql are DATA of this Makefile, installed next to
# milestones' own files in share/extension, so make install, make deb and
# the Debian package carry them as soon as they exist.  A script built by
# make goes into DATA_built instead (with its rule here, like milestones').
COMPANION_DATA = $(filter-out proxy/sql/milestones_proxy--1.2.sql proxy/sql/milestones_proxy--1.1--1.2.sql, \
                 $(patsubst $(srcdir)/%,%,$(wildcard $(srcdir)/proxy/*.control $(srcdir)/proxy/sql/*--*.sql)))
# milestones_proxy 1.2 is built like milestones' own scripts: the released
# 1.1 script plus proxy/sql/1.2/ is the install script, proxy/sql/1.2/ the
# 1.1 -> 1.2 upgrade.
PROXY_PARTS_12 = $(sort $(wildcard $(srcdir)/proxy/sql/1.2/*.sql))
DATA_built    += proxy/sql/milestones_proxy--1.2.sql proxy/sql/milestones_proxy--1.1--1.2.sql

# Monitoring (SPEC section 13): the queries file of
# prometheus-postgres-exporter and the Prometheus alerting rules, installed
# (and so packaged) in share/extension/milestones/, e.g.
# /usr/share/postgresql/15/extension/milestones/milestones-queries.yaml.
# Not /usr/share/doc: the exporter reads the queries file at run time, and
# Debian lets an admin (and container images do) exclude /usr/share/doc.
# Beside the extension's scripts, because the queries name the views of
# this very version of the extension, per PostgreSQL major version as the
# scripts are; a subfolder, because PostgreSQL reads only *.control and
# *.sql files there.  PGXS installs DATA flat, hence a rule of its own.
PROMETHEUS_FILES = prometheus/milestones-queries.yaml prometheus/milestones-alerts.yml
PROMETHEUS_DIR   = $(datadir)/$(datamoduledir)/milestones

# pg_regress suites: sql/<name>.sql against expected/<name>.out.  They need
# only the extension itself (no pg_cron, no pgTAP), so make installcheck
# runs against any server that has milestones installed.
REGRESS = $(patsubst $(srcdir)/sql/%.sql,%,$(filter-out $(srcdir)/sql/milestones--%,$(wildcard $(srcdir)/sql/*.sql)))

# make deb's results (see deb below); make clean removes them.
DEB_DIR     = build-deb
EXTRA_CLEAN = $(DEB_DIR)

PG_CONFIG ?= pg_config
PG_CPPFLAGS += -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers
# Only the symbols PostgreSQL looks up are exported (src/milestones.h says
# which and why); test/shell/54_symbols.t holds the list.
PG_CPPFLAGS += -fvisibility=hidden

# The convenience targets install missing packages BEFORE pg_config is
# asked for PGXS: on a bare machine that is what brings the server headers.
CONVENIENCE_GOALS = deps demo test bench fuzz deb scaleout-demo
ifneq (,$(filter $(CONVENIENCE_GOALS),$(MAKECMDGOALS)))
ENSURE_DEPS := $(shell $(dir $(firstword $(MAKEFILE_LIST)))test/tools/ensure-deps --quiet >&2)
ifneq ($(.SHELLSTATUS),0)
$(error test/tools/ensure-deps could not install the packages milestones needs (see above))
endif
endif

PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifeq (,$(wildcard $(PGXS)))
$(error PostgreSQL's PGXS not found (pg_config: $(PG_CONFIG)).  Install the server headers (Debian: postgresql-server-dev-15), set PG_CONFIG=/path/to/pg_config, or run "make deps" as root)
endif
include $(PGXS)

# Out of tree the object and script folders do not exist yet.
ifneq ($(abspath $(srcdir)),$(CURDIR))
$(shell $(MKDIR_P) src sql)
endif

.PHONY: deps demo test bench fuzz deb install-prometheus uninstall-prometheus

install: install-prometheus
install-prometheus:
	$(MKDIR_P) '$(DESTDIR)$(PROMETHEUS_DIR)'
	$(INSTALL_DATA) $(addprefix $(srcdir)/, $(PROMETHEUS_FILES)) '$(DESTDIR)$(PROMETHEUS_DIR)/'

uninstall: uninstall-prometheus
uninstall-prometheus:
	rm -f $(addprefix '$(DESTDIR)$(PROMETHEUS_DIR)'/, $(notdir $(PROMETHEUS_FILES)))
	rmdir '$(DESTDIR)$(PROMETHEUS_DIR)' 2>/dev/null || true

SCRIPT_GUARD = \echo Use "CREATE EXTENSION milestones" to load this file. \quit

# The folder is a prerequisite too: removing a part changes its time only.
sql/milestones--1.1.sql: sql/milestones--1.0.sql $(UPGRADE_PARTS) $(srcdir)/sql/1.1
	{ echo '/* sql/milestones--1.1.sql - install script of milestones 1.1, built by make from sql/milestones--1.0.sql and sql/1.1/ */'; \
	  printf '%s\n' '$(SCRIPT_GUARD)'; \
	  grep -v '^\\echo ' $<; \
	  cat $(UPGRADE_PARTS); } > $@

sql/milestones--1.0--1.1.sql: $(UPGRADE_PARTS) $(srcdir)/sql/1.1
	{ echo '/* sql/milestones--1.0--1.1.sql - upgrade script 1.0 -> 1.1, built by make from sql/1.1/ */'; \
	  printf '%s\n' '$(SCRIPT_GUARD)'; \
	  cat $(UPGRADE_PARTS); } > $@

sql/milestones--1.2.sql: sql/milestones--1.0.sql $(UPGRADE_PARTS) $(UPGRADE_PARTS_12) $(srcdir)/sql/1.1 $(srcdir)/sql/1.2
	{ echo '/* sql/milestones--1.2.sql - install script of milestones 1.2, built by make from sql/milestones--1.0.sql, sql/1.1/ and sql/1.2/ */'; \
	  printf '%s\n' '$(SCRIPT_GUARD)'; \
	  grep -v '^\\echo ' $<; \
	  cat $(UPGRADE_PARTS) $(UPGRADE_PARTS_12); } > $@

sql/milestones--1.1--1.2.sql: $(UPGRADE_PARTS_12) $(srcdir)/sql/1.2
	{ echo '/* sql/milestones--1.1--1.2.sql - upgrade script 1.1 -> 1.2, built by make from sql/1.2/ */'; \
	  printf '%s\n' '$(SCRIPT_GUARD)'; \
	  cat $(UPGRADE_PARTS_12); } > $@

PROXY_GUARD = \echo Use "CREATE EXTENSION milestones_proxy CASCADE" to load this file. \quit

proxy/sql/milestones_proxy--1.2.sql: $(srcdir)/proxy/sql/milestones_proxy--1.1.sql $(PROXY_PARTS_12) $(srcdir)/proxy/sql/1.2
	@mkdir -p proxy/sql
	{ echo '/* proxy/sql/milestones_proxy--1.2.sql - install script of milestones_proxy 1.2, built by make from milestones_proxy--1.1.sql and proxy/sql/1.2/ */'; \
	  printf '%s\n' '$(PROXY_GUARD)'; \
	  grep -v '^\\echo ' $<; \
	  cat $(PROXY_PARTS_12); } > $@

proxy/sql/milestones_proxy--1.1--1.2.sql: $(PROXY_PARTS_12) $(srcdir)/proxy/sql/1.2
	@mkdir -p proxy/sql
	{ echo '/* proxy/sql/milestones_proxy--1.1--1.2.sql - upgrade script 1.1 -> 1.2 of milestones_proxy, built by make from proxy/sql/1.2/ */'; \
	  printf '%s\n' '$(PROXY_GUARD)'; \
	  cat $(PROXY_PARTS_12); } > $@

# deps: install every package the targets below need (as root).
deps:
	$(srcdir)/test/tools/ensure-deps

# demo: a story of real orders printed as a DBA would look at them, then a
# confirmed-mode story (MILESTONES_DESTDIR: as for make test).
demo: all
	$(MAKE) install $(if $(MILESTONES_DESTDIR),DESTDIR=$(MILESTONES_DESTDIR))
	test/tools/demo

# scaleout-demo: four partitions and a proxy (milestones_proxy, PL/Proxy) in
# throwaway clusters, a story of orders through the proxy, and where each
# order landed.  Everything is stopped and removed at the end.
.PHONY: scaleout-demo
scaleout-demo: all
	$(MAKE) install
	test/tools/scaleout-demo

# test: every suite in one throwaway cluster, ending with "N passed, N failed".
# MILESTONES_DESTDIR=/some/dir installs into that folder instead of the
# server's own (make install DESTDIR=...) and runs the cluster with
# extension_destdir pointing there (Debian's PostgreSQL): two builds can
# then be tested side by side on one machine.
export MILESTONES_DESTDIR
test: all
	$(MAKE) install $(if $(MILESTONES_DESTDIR),DESTDIR=$(MILESTONES_DESTDIR))
	test/tools/run-tests

# bench: the performance benchmark (issue 6) in a throwaway cluster, about
# 15 to 20 minutes (of which the backlog catch-up, test/bench/backlog, 4 to 8,
# and the clearance sweep, test/bench/clearance, 1);
# BENCH_QUICK=1 for a smoke run of a minute or two.  See doc/performance.md.
# MILESTONES_DESTDIR: as for test.
# BENCH_BASE=<git ref>: instead, two builds side by side (issue 20), the ref
# and this working tree (or BENCH_HEAD=<git ref>), each built and installed
# into a temporary folder of its own and run in a cluster of its own, rounds
# interleaved (test/bench/compare; about 10 minutes; nothing is installed
# into the server's folders).
BENCH_BASE ?=
BENCH_HEAD ?=
bench: all
ifneq ($(strip $(BENCH_BASE)),)
	BENCH_BASE='$(BENCH_BASE)' BENCH_HEAD='$(BENCH_HEAD)' test/bench/compare
else
	$(MAKE) install $(if $(MILESTONES_DESTDIR),DESTDIR=$(MILESTONES_DESTDIR))
	test/bench/run
endif

# fuzz: SQLsmith against a database with the extension and orders in every
# state, in a throwaway cluster; fails if the server crashed even once.
# Bounded by FUZZ_QUERIES queries and FUZZ_SECONDS seconds.  CI runs a short
# pass of it in make test (test/shell/33_fuzz_smoke.t).
FUZZ_QUERIES ?= 20000
FUZZ_SECONDS ?= 300
fuzz: all
	$(MAKE) install $(if $(MILESTONES_DESTDIR),DESTDIR=$(MILESTONES_DESTDIR))
	test/fuzz/run-fuzz $(FUZZ_QUERIES) $(FUZZ_SECONDS)

# deb: the Debian package postgresql-15-milestones (debian/, pg_buildext),
# built from a copy of the tree (test/tools/build-deb says why and how):
#   build-deb/postgresql-15-milestones_1.2-1_amd64.deb  (+ -dbgsym, .buildinfo, .changes)
# Its build runs make installcheck against the built files in a throwaway
# cluster; DEB_BUILD_OPTIONS=nocheck skips that.
deb:
	rm -rf $(DEB_DIR)
	$(srcdir)/test/tools/build-deb $(CURDIR)/$(DEB_DIR)

# Every object depends on the headers of src/ (engine.h's structs are
# shared): PGXS tracks no header dependencies unless the server was
# configured with --enable-depend, and a stale object reads a changed
# struct with its old layout.
$(OBJS): $(wildcard $(srcdir)/src/*.h)
