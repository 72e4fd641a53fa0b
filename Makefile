# streambus: plain GNU make.  `make run` and `make check` do everything on a
# fresh Debian machine (see README.md).

PREFIX   ?= /usr/local
DESTDIR  ?=
CC       ?= cc
PKGS     := libevent hiredis jansson libmicrohttpd inih libsystemd
DEB_PKGS := build-essential pkg-config libevent-dev libhiredis-dev \
            libjansson-dev libmicrohttpd-dev check libinih-dev libsystemd-dev \
            redis-server redis-tools mandoc
SANITIZE ?=

CFLAGS   ?= -O2 -g
CFLAGS   += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wpointer-arith -Wshadow -Werror -Iinclude \
            $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS   += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm
ifneq ($(SANITIZE),)
CFLAGS   += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS  += -fsanitize=$(SANITIZE)
export LSAN_OPTIONS = suppressions=$(CURDIR)/tests/lsan.supp
# full stacks through libraries built without frame pointers (jansson),
# so that the suppressions see where a leak comes from
export ASAN_OPTIONS = fast_unwind_on_malloc=0
export UBSAN_OPTIONS = print_stacktrace=1:halt_on_error=1
endif

CORE_SRCS   := src/auth.c src/log.c src/config.c src/proto.c src/metrics.c src/redis.c \
               src/broker.c src/conn.c src/http.c src/util.c \
               src/sentinel.c src/cluster.c
CORE_OBJS   := $(CORE_SRCS:.c=.o)
CLIENT_OBJS := src/client.o
BINS        := src/streambusd src/streambus-cli perf/streambus-bench

CHECK_LIBS  := $(shell pkg-config --libs check 2>/dev/null)
UNIT_TESTS  := tests/check_proto tests/check_config tests/check_metrics tests/check_redis
INTEG_TESTS := tests/check_integration tests/check_abuse tests/check_sentinel tests/check_cluster
TESTS       := $(UNIT_TESTS) $(INTEG_TESTS)

.PHONY: all deps run check check-valgrind unit integration bench chaos chaos-short clean install uninstall

all: $(BINS)

src/%.o: src/%.c $(wildcard include/*.h)
	$(CC) $(CFLAGS) -c -o $@ $<

src/streambusd: src/main.o $(CORE_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

src/streambus-cli: src/cli.o $(CLIENT_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

perf/streambus-bench: perf/bench.c $(CLIENT_OBJS) $(wildcard include/*.h)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ perf/bench.c $(CLIENT_OBJS) $(LDLIBS)

tests/%.o: tests/%.c $(wildcard include/*.h tests/*.h)
	$(CC) $(CFLAGS) -Itests -c -o $@ $<

tests/check_%: tests/check_%.o tests/harness.o $(CORE_OBJS) $(CLIENT_OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(CHECK_LIBS)

# Traffic under faults (tests/traffic.c), a real Sentinel setup
# (tests/redis_sentinel.c) and a real Redis Cluster (tests/redis_cluster.c),
# the last two shared with the chaos suite.
tests/check_sentinel: tests/traffic.o tests/redis_sentinel.o
tests/check_cluster: tests/traffic.o tests/redis_cluster.o

# Installs what the build and the tests need: as root with apt-get, otherwise
# prints the command to run.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "deps: installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "deps: missing packages; run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

# Runs the daemon in the foreground with etc/streambus.conf.  When no Redis
# answers at its redis.url, a private redis-server (AOF on, data in ./run/)
# is started for it and stopped again when the daemon exits.
RUN_CONF ?= etc/streambus.conf
run: deps all
	@url=$$(awk -F'=' '/^\[/{sec=$$0} sec=="[redis]" && $$1 ~ /^url[ \t]*$$/ {sub(/;.*/, "", $$2); gsub(/[ \t]/, "", $$2); print $$2}' $(RUN_CONF)); \
	hp=$${url#redis://}; hp=$${hp##*@}; hp=$${hp%%/*}; host=$${hp%:*}; port=$${hp##*:}; \
	[ -n "$$host" ] || { host=127.0.0.1; port=6379; }; \
	rpid=""; \
	if ! redis-cli -h $$host -p $$port ping >/dev/null 2>&1; then \
	  mkdir -p run; echo "run: no Redis at $$host:$$port; starting a private redis-server (data in ./run/)"; \
	  redis-server --bind $$host --port $$port --dir $$(pwd)/run --appendonly yes \
	    --appendfsync everysec --save '' --daemonize no --logfile $$(pwd)/run/redis.log & rpid=$$!; \
	  for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do \
	    redis-cli -h $$host -p $$port ping >/dev/null 2>&1 && break; sleep 0.25; done; \
	fi; \
	trap '[ -n "$$rpid" ] && kill $$rpid 2>/dev/null; wait' EXIT INT TERM; \
	./src/streambusd -c $(RUN_CONF); rc=$$?; \
	exit $$rc

unit: $(UNIT_TESTS)
	@for t in $(UNIT_TESTS); do ./$$t || exit 1; done

integration: all $(INTEG_TESTS)
	@for t in $(INTEG_TESTS); do ./$$t || exit 1; done

check: deps
	@$(MAKE) --no-print-directory all $(TESTS)
	@$(MAKE) --no-print-directory unit integration chaos-short check-ops

CHAOS := tests/chaos/chaos
CHAOS_OBJS := tests/harness.o tests/redis_sentinel.o tests/redis_cluster.o
$(CHAOS): tests/chaos/chaos.c $(CHAOS_OBJS) $(CORE_OBJS) $(CLIENT_OBJS) $(wildcard include/*.h tests/*.h)
	$(CC) $(CFLAGS) -Itests $(LDFLAGS) -o $@ tests/chaos/chaos.c $(CHAOS_OBJS) $(CORE_OBJS) $(CLIENT_OBJS) $(LDLIBS) $(CHECK_LIBS)

# The fault-injection suite: minutes per scenario.  `make check` runs it
# in its short form (CHAOS_SECONDS=3).
CHAOS_SECONDS ?= 60
chaos: all $(CHAOS)
	./$(CHAOS) --seconds $(CHAOS_SECONDS)

chaos-short: all $(CHAOS)
	./$(CHAOS) --seconds 3

# The integration and cluster suites with the daemon under valgrind memcheck: any error,
# or a definite leak at exit, fails the test that stopped that daemon.
check-valgrind: DEB_PKGS += valgrind
check-valgrind: deps
	@$(MAKE) --no-print-directory all $(INTEG_TESTS)
	SB_DAEMON=tests/valgrind-daemon.sh ./tests/check_integration
	SB_DAEMON=tests/valgrind-daemon.sh ./tests/check_cluster

bench: all
	@sh perf/run

clean:
	rm -f src/*.o src/broker_lua.h tests/*.o perf/*.o $(BINS) $(TESTS) $(CHAOS)

src/broker_lua.h: src/broker.lua
	awk 'BEGIN { print "/* generated from broker.lua by make */"; print "static const char broker_lua[] =" } \
	  { gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); print "\t\"" $$0 "\\n\"" } END { print ";" }' $< > $@

src/broker.o: src/broker_lua.h
.SECONDARY:

# ---- Operations: install, uninstall, check-ops ------------------------------
# `make install` puts the two programs in $(BINDIR), the man pages in
# $(MANDIR), the systemd unit in $(SYSTEMDUNITDIR) (with ExecStart and the
# configuration path rewritten for BINDIR and SYSCONFDIR), the Prometheus
# alerts and Grafana dashboard in $(DATADIR), and etc/streambus.conf as
# $(SYSCONFDIR)/streambus/streambus.conf unless that file already exists: an
# installed configuration is never overwritten.  `make uninstall` removes the
# same files, and the configuration only while it is unmodified.  Both honour
# PREFIX and DESTDIR.  The configuration stays under /etc by default, because
# that is where streambusd looks without -c.
BINDIR         ?= $(PREFIX)/bin
SYSCONFDIR     ?= /etc
MANDIR         ?= $(PREFIX)/share/man
DATADIR        ?= $(PREFIX)/share/streambus
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
OPS_CONF       := $(DESTDIR)$(SYSCONFDIR)/streambus/streambus.conf
OPS_MANPAGES   := $(wildcard man/*.[1-8])
OPS_MANSECTIONS := $(sort $(subst .,,$(suffix $(OPS_MANPAGES))))
OPS_DATA       := etc/streambus-alerts.yml etc/grafana-dashboard.json

install: src/streambusd src/streambus-cli
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(DATADIR) \
	  $(DESTDIR)$(SYSCONFDIR)/streambus
	install -m 0755 src/streambusd src/streambus-cli $(DESTDIR)$(BINDIR)/
	@if [ -e $(OPS_CONF) ]; then \
	  echo "install: keeping the existing $(OPS_CONF)"; \
	else \
	  echo "install -m 0644 etc/streambus.conf $(OPS_CONF)"; \
	  install -m 0644 etc/streambus.conf $(OPS_CONF); \
	fi
	sed -e 's|/usr/local/bin/streambusd|$(BINDIR)/streambusd|g' \
	    -e 's|/etc/streambus/|$(SYSCONFDIR)/streambus/|g' \
	    systemd/streambusd.service > $(DESTDIR)$(SYSTEMDUNITDIR)/streambusd.service.tmp
	chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/streambusd.service.tmp
	mv -f $(DESTDIR)$(SYSTEMDUNITDIR)/streambusd.service.tmp $(DESTDIR)$(SYSTEMDUNITDIR)/streambusd.service
	$(foreach s,$(OPS_MANSECTIONS),install -d $(DESTDIR)$(MANDIR)/man$(s) && \
	  install -m 0644 $(filter %.$(s),$(OPS_MANPAGES)) $(DESTDIR)$(MANDIR)/man$(s)/ && ) true
	install -m 0644 $(OPS_DATA) $(DESTDIR)$(DATADIR)/
	@[ -n "$(DESTDIR)" ] || echo "install: now run: systemctl daemon-reload && systemctl enable --now streambusd"

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/streambusd $(DESTDIR)$(BINDIR)/streambus-cli \
	  $(DESTDIR)$(SYSTEMDUNITDIR)/streambusd.service \
	  $(addprefix $(DESTDIR)$(DATADIR)/,$(notdir $(OPS_DATA))) \
	  $(foreach f,$(OPS_MANPAGES),$(DESTDIR)$(MANDIR)/man$(subst .,,$(suffix $(f)))/$(notdir $(f)))
	rmdir $(DESTDIR)$(DATADIR) 2>/dev/null || true
	@if [ ! -e $(OPS_CONF) ]; then :; \
	elif cmp -s etc/streambus.conf $(OPS_CONF); then \
	  echo "rm -f $(OPS_CONF)"; rm -f $(OPS_CONF); \
	  rmdir $(DESTDIR)$(SYSCONFDIR)/streambus 2>/dev/null || true; \
	else \
	  echo "uninstall: keeping the modified $(OPS_CONF)"; \
	fi

# Unit file, install/uninstall, alert rules, dashboard and man pages; parts
# whose tool is missing are skipped (systemd-analyze, promtool: not in
# DEB_PKGS, as systemd does not belong in a container and prometheus is big).
DEB_PKGS += jq clang libclang-rt-14-dev
.PHONY: check-ops
check-ops: src/streambusd src/streambus-cli
	@bash tests/ops.sh

# ---- Fuzzing (Hardening): libFuzzer targets, see tests/fuzz/README --------
# `make fuzz` builds tests/fuzz/build/fuzz_proto and fuzz_config with clang
# (the project's sources compiled in, with the same sanitizers), replays the
# inputs under tests/fuzz/regressions/, then fuzzes each target for
# FUZZ_SECONDS (default 60) from the seed corpus.  `make fuzz-short` is the
# CI form (10 s each).  New corpus entries and crash artifacts go to
# tests/fuzz/build/ (ignored by git).  FUZZ_EXTRA=-DFUZZ_SKIP_KNOWN skips
# the checks of bugs already reported, for long campaigns.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_MAXLEN  ?= 65536
FUZZ_EXTRA   ?=
FUZZ_DIR     := tests/fuzz/build
FUZZ_SRCS    := src/proto.c src/config.c src/log.c src/util.c src/metrics.c
FUZZ_CFLAGS  := -g -O1 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Iinclude -Itests \
                -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
                -fno-omit-frame-pointer $(FUZZ_EXTRA) \
                $(shell pkg-config --cflags libevent jansson inih 2>/dev/null)
FUZZ_LIBS    := $(shell pkg-config --libs libevent jansson inih 2>/dev/null) -lm
FUZZ_TARGETS := $(FUZZ_DIR)/fuzz_proto $(FUZZ_DIR)/fuzz_config

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_SRCS) $(wildcard include/*.h)
	@mkdir -p $(FUZZ_DIR)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(FUZZ_SRCS) $(FUZZ_LIBS)

.PHONY: fuzz fuzz-build fuzz-regress fuzz-short fuzz-clean
fuzz-build: $(FUZZ_TARGETS)

# Every saved input once per target: a fixed bug stays fixed.
fuzz-regress: fuzz-build
	@for t in proto config; do \
	  set -- tests/fuzz/regressions/$$t/*; [ -e "$$1" ] || continue; \
	  echo "fuzz: replaying $$# regression input(s) of fuzz_$$t"; \
	  ./$(FUZZ_DIR)/fuzz_$$t -runs=1 "$$@" >$(FUZZ_DIR)/regress-$$t.log 2>&1 || \
	    { tail -n 40 $(FUZZ_DIR)/regress-$$t.log; exit 1; }; \
	done

fuzz: fuzz-regress
	@for t in proto config; do \
	  mkdir -p $(FUZZ_DIR)/corpus-$$t; \
	  echo "fuzz: fuzz_$$t for $(FUZZ_SECONDS) s"; \
	  ./$(FUZZ_DIR)/fuzz_$$t -max_len=$(FUZZ_MAXLEN) -max_total_time=$(FUZZ_SECONDS) \
	    -dict=tests/fuzz/$$t.dict -artifact_prefix=$(FUZZ_DIR)/$$t- -print_final_stats=1 \
	    $(FUZZ_DIR)/corpus-$$t tests/fuzz/corpus/$$t >$(FUZZ_DIR)/fuzz-$$t.log 2>&1 || \
	    { tail -n 60 $(FUZZ_DIR)/fuzz-$$t.log; exit 1; }; \
	  grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec|^Done' \
	    $(FUZZ_DIR)/fuzz-$$t.log || true; \
	done

fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=10

fuzz-clean:
	rm -rf $(FUZZ_DIR)
