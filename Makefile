# crmguard: PGXS build, plus the two commands of the README (make demo, make test)

EXTENSION = crmguard
MODULE_big = crmguard
OBJS = src/crmguard.o src/crypto.o src/principal.o src/jwt.o src/redact.o src/audit.o src/worker.o src/criteria.o src/outbox.o src/guard.o src/ddl_objects.o src/drop.o src/otp.o src/otp_rule.o src/otp_shmem.o src/otp_idle.o src/visibility.o src/review.o src/approval.o src/fields.o src/fields_read.o src/fields_write.o src/fields_sql.o src/device.o src/activity.o src/approval_lock.o src/approval_engine.o
DATA_built = crmguard--1.1.sql
# released versions' scripts are kept as shipped; each release adds its upgrade step
DATA = crmguard--1.0.sql crmguard--1.0--1.1.sql
# the install script is assembled from one part per feature, in name order
SQL_PARTS = $(sort $(wildcard src/sql/*.sql))
PGFILEDESC = "crmguard - CRM data-governance rules enforced in the database"

SHLIB_LINK += -lsodium
PG_CPPFLAGS += -Isrc
PG_CFLAGS += -Wall -Wextra -Wno-unused-parameter

# make test SANITIZE=1 (scripts/sanitize.sh): the module built with AddressSanitizer
# and UBSan, run in a cluster whose postmaster has the sanitizer runtime preloaded;
# an undefined behaviour ends the backend like a memory error does (no recovery)
ifneq ($(SANITIZE),)
PG_CFLAGS += -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
SHLIB_LINK += -fsanitize=address,undefined
endif

# Programs shipped with the extension (libpq, libsodium), installed with the
# server's programs: one name per program, built from src/bin/<name, _ for ->.c
CG_PROGRAMS = crmguard-device
EXTRA_CLEAN = $(CG_PROGRAMS) src/bin/*.o src/build-flags

REGRESS = $(shell sed -n "s/^test: //p" test/schedule)
REGRESS_OPTS = --inputdir=. --load-extension=crmguard

PG_CONFIG ?= $(shell command -v pg_config >/dev/null 2>&1 && pg_config --version | grep -q ' 15' && echo pg_config || echo /usr/lib/postgresql/15/bin/pg_config)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
endif

# every module includes the shared header: rebuild them all when it changes
$(OBJS): src/crmguard.h src/otp.h src/approval.h

# the objects remember whether they were built for the sanitizers: switching
# SANITIZE on or off rebuilds them all
src/build-flags: FORCE
	@echo 'SANITIZE=$(SANITIZE)' | cmp -s - $@ || echo 'SANITIZE=$(SANITIZE)' > $@
$(OBJS): src/build-flags
.PHONY: FORCE
src/fields.o src/fields_read.o src/fields_write.o src/fields_sql.o: src/fields.h

crmguard--1.1.sql: $(SQL_PARTS)
	cat $^ > $@

all: $(CG_PROGRAMS)
install: install-programs

src/bin/%.o: src/bin/%.c
	$(CC) $(CFLAGS) -Wall -Wextra -I$(includedir) -c $< -o $@

# each program: one line naming its objects
crmguard-device: src/bin/crmguard_device.o

$(CG_PROGRAMS):
	$(CC) $(CFLAGS) $^ $(LDFLAGS) -L$(libdir) -lpq -lsodium -o $@

.PHONY: install-programs
install-programs: $(CG_PROGRAMS)
	$(MKDIR_P) '$(DESTDIR)$(bindir)'
	$(INSTALL_PROGRAM) $(CG_PROGRAMS) '$(DESTDIR)$(bindir)/'


# crmguard-relay, the outbox's sender (libpq, libcurl).  PGXS builds one PROGRAM
# per Makefile, so each client program has rules of its own, hooked into PGXS's
# all/install/uninstall/clean.
RELAY = relay/crmguard-relay
RELAY_OBJS = relay/crmguard-relay.o relay/config.o relay/template.o relay/smtp.o relay/http.o relay/util.o
RELAY_CPPFLAGS = -I$(shell $(PG_CONFIG) --includedir)
RELAY_CFLAGS = -O2 -g -Wall -Wextra -D_GNU_SOURCE
RELAY_LIBS = -lpq -lcurl

all: $(RELAY)

$(RELAY): $(RELAY_OBJS)
	$(CC) $(RELAY_CFLAGS) -o $@ $(RELAY_OBJS) $(LDFLAGS_EX) $(RELAY_LIBS)

relay/%.o: relay/%.c relay/relay.h
	$(CC) $(RELAY_CFLAGS) $(RELAY_CPPFLAGS) -c -o $@ $<

install: install-relay
install-relay: $(RELAY)
	$(MKDIR_P) '$(DESTDIR)$(bindir)'
	$(INSTALL_PROGRAM) $(RELAY) '$(DESTDIR)$(bindir)/crmguard-relay'

uninstall: uninstall-relay uninstall-programs
uninstall-programs:
	rm -f $(addprefix '$(DESTDIR)$(bindir)'/,$(CG_PROGRAMS))
uninstall-relay:
	rm -f '$(DESTDIR)$(bindir)/crmguard-relay'

clean: clean-relay
clean-relay:
	rm -f $(RELAY) $(RELAY_OBJS)

.PHONY: deps demo test bench install-notice install-relay uninstall-relay clean-relay

# Install what a fresh Debian machine lacks (no-op when everything is there)
deps:
	@bash scripts/deps.sh

# demo, test and bench install into the system PostgreSQL: say so before doing it
install-notice:
	@echo "crmguard: installing system-wide, for every cluster of $$($(PG_CONFIG) --version):"
	@echo "crmguard:   $(pkglibdir)/crmguard.so, $(datadir)/extension/crmguard*,"
	@echo "crmguard:   $(bindir)/crmguard-relay and crmguard-device ('make uninstall' removes them)"

demo: deps
	$(MAKE) all
	@$(MAKE) --no-print-directory install-notice
	$(MAKE) install
	@bash scripts/demo.sh

test: deps
	$(MAKE) all
	@$(MAKE) --no-print-directory install-notice
	$(MAKE) install
	@bash scripts/$(if $(SANITIZE),sanitize,test).sh

bench: deps
	$(MAKE) all
	@$(MAKE) --no-print-directory install-notice
	$(MAKE) install
	@bash bench/run.sh
