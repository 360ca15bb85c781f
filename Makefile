# crmguard: PGXS build, plus the two commands of the README (make demo, make test)

EXTENSION = crmguard
MODULE_big = crmguard
OBJS = src/crmguard.o src/crypto.o src/principal.o src/jwt.o src/redact.o src/audit.o src/worker.o src/criteria.o src/outbox.o src/guard.o src/otp.o src/otp_rule.o src/otp_shmem.o src/visibility.o src/review.o src/approval.o src/approval_lock.o src/approval_engine.o
DATA_built = crmguard--1.1.sql
# the install script is assembled from one part per feature, in name order
SQL_PARTS = $(sort $(wildcard src/sql/*.sql))
PGFILEDESC = "crmguard - CRM data-governance rules enforced in the database"

SHLIB_LINK += -lsodium
PG_CPPFLAGS += -Isrc
PG_CFLAGS += -Wall -Wextra -Wno-unused-parameter

REGRESS = $(shell sed -n "s/^test: //p" test/schedule)
REGRESS_OPTS = --inputdir=. --load-extension=crmguard

PG_CONFIG ?= $(shell command -v pg_config >/dev/null 2>&1 && pg_config --version | grep -q ' 15' && echo pg_config || echo /usr/lib/postgresql/15/bin/pg_config)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
endif

# every module includes the shared header: rebuild them all when it changes
$(OBJS): src/crmguard.h src/otp.h src/approval.h

crmguard--1.1.sql: $(SQL_PARTS)
	cat $^ > $@

.PHONY: deps demo test bench

# Install what a fresh Debian machine lacks (no-op when everything is there)
deps:
	@bash scripts/deps.sh

demo: deps
	$(MAKE) all
	$(MAKE) install
	@bash scripts/demo.sh

test: deps
	$(MAKE) all
	$(MAKE) install
	@bash scripts/test.sh

bench: deps
	$(MAKE) all
	$(MAKE) install
	@bash bench/run.sh
