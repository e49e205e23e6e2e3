# dnsfwd: plain DNS in front, DNS over TLS behind.
# `make run` builds and runs it; `make check` installs what is missing,
# builds every variant and runs every test.

PREFIX ?=	/usr/local
DESTDIR ?=
CC ?=		cc
CFLAGS ?=	-O2 -g
WARN =		-Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
		-Wmissing-prototypes -Wmissing-declarations -Wpointer-arith \
		-Wsign-compare -Wformat=2
HARDEN =	-fstack-protector-strong -fstack-clash-protection -fcf-protection \
		-D_FORTIFY_SOURCE=2 -fPIE
ALL_CFLAGS =	-std=gnu11 -D_GNU_SOURCE $(WARN) $(HARDEN) $(CFLAGS)
LDHARDEN =	-pie -Wl,-z,relro,-z,now
# libev and mbedTLS are linked in by default: shared libraries are
# mapped, and counted in RSS, in large pieces, and linking them in keeps an
# idle dnsfwd under 2.5 MiB.  Packagers who want Debian's security updates
# of libmbedtls to apply without a rebuild set STATIC_DEPS=no.
STATIC_DEPS ?=	yes
DEPLIBS =	-lmbedtls -lmbedx509 -lmbedcrypto -lev
LIBS_yes =	-Wl,-Bstatic $(DEPLIBS) -Wl,-Bdynamic -lm
LIBS_no =	$(DEPLIBS)
LIBS =		$(LIBS_$(STATIC_DEPS))
SAN =		-fsanitize=address,undefined -fno-omit-frame-pointer \
		-fno-sanitize-recover=undefined
PY =		/usr/bin/python3

SRCS =		dnsfwd.c options.c listen.c query.c mux.c upstream.c conn.c \
		health.c \
		netmon.c cache.c tls.c dns.c siphash.c log.c util.c
# One header per module (its interface); conn.h is the pool's and the
# connection's alone; dnsfwd.h holds what all share.
HDRS =		dnsfwd.h options.h listen.h query.h mux.h upstream.h conn.h \
		health.h \
		netmon.h cache.h tls.h dns.h siphash.h log.h util.h
# mbedTLS 3.6 from Debian 13, unpacked here by tests/mbedtls3.sh.
M3 =		build/mbedtls3
M3LIB =		$(M3)/usr/lib/$(shell $(CC) -print-multiarch)

DEBS =		build-essential libev-dev libmbedtls-dev ca-certificates
TEST_DEBS =	unbound python3-dnspython knot-dnsutils openssl mandoc systemd \
		dnsmasq-base iproute2 nftables clang-14 libclang-rt-14-dev valgrind

RUN_ARGS =	--bind-udp 127.0.0.1:5353 --bind-tcp 127.0.0.1:5353 \
		--connect-tls 9.9.9.9\#dns.quad9.net \
		--connect-tls 1.1.1.1\#cloudflare-dns.com

all: dnsfwd

dnsfwd: $(SRCS) $(HDRS)
	$(CC) $(ALL_CFLAGS) $(LDHARDEN) -o $@ $(SRCS) $(LIBS)

dnsfwd-asan: $(SRCS) $(HDRS)
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -o $@ $(SRCS) $(LIBS)

$(M3)/.done: tests/mbedtls3.sh
	bash tests/mbedtls3.sh $(M3) >/dev/null
	touch $@

# --disable-new-dtags: RPATH, not RUNPATH, so the libraries' own
# dependencies are found in the same private directory.
dnsfwd-mbedtls3: $(SRCS) $(HDRS) $(M3)/.done
	$(CC) $(ALL_CFLAGS) -I$(M3)/usr/include $(LDHARDEN) -o $@ $(SRCS) \
	    -L$(M3LIB) -Wl,--disable-new-dtags -Wl,-rpath,$(abspath $(M3LIB)) \
	    $(LIBS)

tests/test_dns: tests/test_dns.c dns.c siphash.c util.c log.c $(HDRS)
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -I. -o $@ tests/test_dns.c dns.c siphash.c \
	    util.c log.c $(LIBS)

tests/test_mux: tests/test_mux.c tests/check.h mux.c upstream.c conn.c health.c dns.c siphash.c \
	    log.c util.c tls.c $(HDRS)
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -I. -o $@ tests/test_mux.c health.c \
	    dns.c siphash.c log.c util.c tls.c $(LIBS)

tests/test_cache: tests/test_cache.c tests/check.h tests/mb.h tests/walk.h cache.c dns.c siphash.c log.c \
	    util.c $(HDRS)
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -I. -o $@ tests/test_cache.c dns.c siphash.c \
	    log.c util.c $(LIBS)

tests/test_query: tests/test_query.c tests/check.h tests/mb.h tests/walk.h query.c cache.c dns.c siphash.c \
	    log.c util.c $(HDRS)
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -I. -o $@ tests/test_query.c cache.c \
	    dns.c siphash.c log.c util.c $(LIBS)

# siphash.c is included by its test, to reach the core's other round counts.
tests/test_siphash: tests/test_siphash.c tests/check.h siphash.c siphash.h
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -I. -o $@ tests/test_siphash.c

tests/test_options: tests/test_options.c tests/check.h options.c log.c \
	    util.c $(HDRS) dnsfwd.8
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -I. -o $@ tests/test_options.c log.c \
	    util.c $(LIBS)

# Installs the Debian packages named in PKGS that are missing.
deps-install:
	@missing=$$(for p in $(PKGS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	    grep -q 'install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing:" $$missing; \
		apt-get -o Acquire::Retries=3 update -qq && \
		    DEBIAN_FRONTEND=noninteractive \
		    apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "missing packages; run: sudo apt-get install" $$missing; \
		exit 1; \
	fi

deps:
	@$(MAKE) -s deps-install PKGS="$(DEBS) $(TEST_DEBS) $(DEB_DEBS) \
	    $(BOOT_DEBS)"

deps-run:
	@$(MAKE) -s deps-install PKGS="$(DEBS)"

UNIT =		tests/test_dns tests/test_mux tests/test_cache tests/test_query \
		tests/test_options tests/test_siphash
VARIANTS =	dnsfwd dnsfwd-asan dnsfwd-mbedtls3

check: deps
	$(MAKE) headers $(UNIT) $(VARIANTS) $(FUZZ_BINS) bench/pathemu
	mandoc -Tlint -W warning dnsfwd.8
	$(PY) tests/runall.py $(UNIT) -- $(VARIANTS) -- tests/units.py \
	    tests/siphash_ref.py tests/test_fakeup.py tests/test_pathemu.py \
	    "tests/soak.py --short --dnsfwd ./dnsfwd-asan" \
	    "env FUZZ_JOBS=1 bash fuzz/run.sh $(FUZZ_SMOKE_SECONDS) \
	    $(FUZZ_TARGETS)" -- tests/boottest.py

# Every header compiles alone: it includes what its own declarations use.
headers:
	@for h in $(HDRS); do \
	    echo "#include \"$$h\"" | $(CC) $(ALL_CFLAGS) -fsyntax-only \
	    -x c - || { echo "$$h does not compile alone"; exit 1; }; done; \
	echo "headers: each of $(words $(HDRS)) compiles alone"

run: deps-run
	$(MAKE) dnsfwd
	./dnsfwd $(RUN_ARGS)

lint:
	mandoc -Tlint -W warning dnsfwd.8

# The units' ExecStart= names $(PREFIX)/sbin/dnsfwd.  /etc/default/dnsfwd
# is installed only when absent, and uninstalled only when unchanged.
UNITDIR ?=	$(PREFIX)/lib/systemd/system
install: dnsfwd
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/share/man/man8 \
	    $(DESTDIR)$(UNITDIR) $(DESTDIR)/etc/default
	install -m 755 dnsfwd $(DESTDIR)$(PREFIX)/sbin/dnsfwd
	install -m 644 dnsfwd.8 $(DESTDIR)$(PREFIX)/share/man/man8/dnsfwd.8
	sed 's|/usr/local/|$(PREFIX)/|g' dnsfwd.service \
	    >$(DESTDIR)$(UNITDIR)/dnsfwd.service
	chmod 644 $(DESTDIR)$(UNITDIR)/dnsfwd.service
	install -m 644 dnsfwd.socket $(DESTDIR)$(UNITDIR)/dnsfwd.socket
	[ -e $(DESTDIR)/etc/default/dnsfwd ] || \
	    install -m 644 dnsfwd.default $(DESTDIR)/etc/default/dnsfwd

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/sbin/dnsfwd \
	    $(DESTDIR)$(PREFIX)/share/man/man8/dnsfwd.8 \
	    $(DESTDIR)$(UNITDIR)/dnsfwd.service $(DESTDIR)$(UNITDIR)/dnsfwd.socket
	if cmp -s dnsfwd.default $(DESTDIR)/etc/default/dnsfwd; then \
	    rm -f $(DESTDIR)/etc/default/dnsfwd; \
	elif [ -e $(DESTDIR)/etc/default/dnsfwd ]; then \
	    echo "kept $(DESTDIR)/etc/default/dnsfwd: it was changed"; fi

# The Debian package (issue 17, debian/).  `make deb` copies the tree (the
# files git knows, changed or not, or every file outside build/ without
# git) to $(DEB_OUT)/src, runs dpkg-buildpackage -us -uc -b there, so that
# every artifact lands in $(DEB_OUT), and fails if lintian has an error or
# a warning to report.  DEB_VERSION=V builds version V instead, with a
# changelog entry added in the copy (the boot test's upgrade);
# DEB_LINTIAN=no skips lintian.
DEB_DEBS =	debhelper dpkg-dev lintian
BOOT_DEBS =	mmdebstrap systemd-container util-linux
DEB_OUT ?=	build/deb
DEB_VERSION ?=
DEB_LINTIAN ?=	yes

deb:
	@$(MAKE) -s deps-install PKGS="$(DEBS) $(DEB_DEBS)"
	rm -rf $(DEB_OUT)
	mkdir -p $(DEB_OUT)/src
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	    git ls-files -z -co --exclude-standard; \
	else \
	    find . \( -path ./build -o -path ./.git \) -prune -o -type f \
	    -print0; \
	fi | tar --null --no-recursion --ignore-failed-read -T - -cf - | \
	    tar -C $(DEB_OUT)/src -xf -
	if [ -n "$(DEB_VERSION)" ]; then \
	    cd $(DEB_OUT)/src && \
	    { printf 'dnsfwd (%s) unstable; urgency=medium\n\n  * %s\n\n -- %s  %s\n\n' \
	    "$(DEB_VERSION)" "Rebuilt as $(DEB_VERSION)." \
	    "$$(dpkg-parsechangelog -SMaintainer)" "$$(date -R)"; \
	    cat debian/changelog; } >debian/changelog.new && \
	    mv debian/changelog.new debian/changelog; \
	fi
	cd $(DEB_OUT)/src && dpkg-buildpackage -us -uc -b
	if [ "$(DEB_LINTIAN)" != no ]; then \
	    lintian --fail-on error,warning $(DEB_OUT)/*.changes; fi

# The package booted (tests/boottest.py, also run by make check): Debian 12
# and 13 roots made by mmdebstrap from this host's Debian mirror and cached
# as tarballs in BOOT_TEST_CACHE (/var/cache/dnsfwd-boot-test, outside the
# tree, so that a fresh clone finds them), each booted with systemd-nspawn
# in its own network namespace, the package built for it installed with
# apt, and checked: socket activation on 127.0.0.1 and [::1], the sandbox,
# restarts, a bad option, the systemd-resolved recipe, upgrade, remove and
# purge.  About two minutes with the roots cached; making them takes one
# to five more, with the mirror and the machine's load.
boot-test:
	@$(MAKE) -s deps-install PKGS="$(DEBS) $(DEB_DEBS) $(BOOT_DEBS)"
	$(PY) tests/boottest.py

boot-test-clean:
	rm -rf build/boot $${BOOT_TEST_CACHE:-/var/cache/dnsfwd-boot-test}

# Fault-injection soak: 40,000 queries against each build (about 90 s each).
soak: dnsfwd dnsfwd-asan
	$(PY) tests/soak.py --dnsfwd ./dnsfwd
	$(PY) tests/soak.py --dnsfwd ./dnsfwd-asan

clean:
	rm -f $(VARIANTS) $(UNIT)

.PHONY: all check headers soak deps deps-run deps-install run lint install \
	uninstall clean deb boot-test boot-test-clean

# Fuzzing and memory checking (issue 9).
# `make fuzz` runs each libFuzzer target of fuzz/ (see the comment at the
# top of each fuzz/fuzz_*.c) for FUZZ_SECONDS, FUZZ_JOBS at a time, on its
# seed corpus fuzz/corpus/TARGET and its crash regressions
# fuzz/regress/TARGET, writing new inputs and crashes under build/fuzz/
# only; `make fuzz-smoke` does the same for FUZZ_SMOKE_SECONDS each (under
# a minute in all, for `make check`) and closes with "fuzz: N passed, N
# failed".  `make fuzz-corpus` remakes the seeds (fuzz/mkcorpus.py).
# `make valgrind` runs tests/integration.py once more with dnsfwd-vg, an
# unsanitized build, under valgrind memcheck (fuzz/valgrind_it.py, which
# lists the scenarios it skips there and why; 4 to 7 minutes), and
# `make valgrind-quick` 90 seconds' worth of it.  They need clang-14,
# libclang-rt-14-dev and valgrind, and install nothing.
FUZZ_CC ?=	clang-14
FUZZ_SECONDS ?=	60
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_JOBS ?=	2
FUZZ_TARGETS =	query upstream cache options
FUZZ_BINS =	$(FUZZ_TARGETS:%=fuzz/%-fuzz)
FUZZ_CFLAGS =	-std=gnu11 -D_GNU_SOURCE $(WARN) -g -O1 \
		-fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=undefined -fno-omit-frame-pointer -I.
# The input, not the system, sets the clocks and the random IDs.
FUZZ_WRAP =	-Wl,--wrap=now_ms,--wrap=boottime_ms,--wrap=random_bytes

fuzz/query-fuzz: fuzz/fuzz_query.c fuzz/fuzz.h query.c cache.c dns.c siphash.c log.c \
	    util.c $(HDRS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_query.c cache.c dns.c siphash.c \
	    log.c util.c $(FUZZ_WRAP) -lev -lm

fuzz/upstream-fuzz: fuzz/fuzz_upstream.c fuzz/fuzz.h mux.c upstream.c conn.c health.c \
	    dns.c siphash.c tls.c log.c util.c $(HDRS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_upstream.c health.c dns.c siphash.c \
	    tls.c log.c util.c $(FUZZ_WRAP) -lmbedtls -lmbedx509 -lmbedcrypto \
	    -lev -lm

fuzz/cache-fuzz: fuzz/fuzz_cache.c fuzz/fuzz.h cache.c dns.c siphash.c log.c util.c \
	    $(HDRS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_cache.c dns.c siphash.c log.c \
	    util.c $(FUZZ_WRAP) -lev -lm

fuzz/options-fuzz: fuzz/fuzz_options.c fuzz/fuzz.h options.c log.c util.c \
	    $(HDRS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ fuzz/fuzz_options.c options.c \
	    log.c util.c -Wl,--wrap=exit -lmbedcrypto -lev -lm

fuzz: $(FUZZ_BINS)
	FUZZ_JOBS=$(FUZZ_JOBS) bash fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-smoke: $(FUZZ_BINS)
	FUZZ_JOBS=$(FUZZ_JOBS) bash fuzz/run.sh $(FUZZ_SMOKE_SECONDS) \
	    $(FUZZ_TARGETS)

fuzz-corpus:
	$(PY) fuzz/mkcorpus.py

dnsfwd-vg: $(SRCS) $(HDRS)
	$(CC) $(ALL_CFLAGS) -O1 -o $@ $(SRCS) $(LIBS)

valgrind: dnsfwd-vg
	$(PY) fuzz/valgrind_it.py -j $(FUZZ_JOBS)

# One at a time: under memcheck a scenario beside another misses its
# deadlines more often, and make check runs other jobs alongside.
valgrind-quick: dnsfwd-vg
	$(PY) fuzz/valgrind_it.py --quick -j 1

fuzz-clean:
	rm -rf $(FUZZ_BINS) dnsfwd-vg build/fuzz

.PHONY: fuzz fuzz-smoke fuzz-corpus valgrind valgrind-quick fuzz-clean

# Benchmarks (issue 10), not part of make check.
# `make bench` installs what it lacks from Debian (as root), builds dnsfwd,
# bench/echo, bench/relay, bench/latency, bench/nodelay.so and bench/pathemu,
# and runs bench/bench.py in a private network namespace (loopback only):
# dnsfwd beside stubby, unbound, dnsdist and knot-resolver, all forwarding
# over DNS-over-TLS to one local unbound; then PATH, the same over emulated
# 30 ms paths between two network namespaces; in about 22 minutes.
# `BENCH_QUICK=1 make bench` is a four-minute check of the harness;
# BENCH_ONLY=path or BENCH_ONLY=loopback runs one part;
# BENCH_UPSTREAM_NODELAY=1 preloads bench/nodelay.so into the loopback
# upstream.  Writes bench/RESULTS.md, bench/results.png and bench/path.png;
# see bench/README.md.
BENCH_DEBS =	dnsperf unbound stubby dnsdist knot-resolver gnuplot-nox \
		openssl iproute2 util-linux python3

bench/echo: bench/echo.c
	$(CC) $(ALL_CFLAGS) $(LDHARDEN) -o $@ bench/echo.c

bench/relay: bench/relay.c
	$(CC) $(ALL_CFLAGS) $(LDHARDEN) -o $@ bench/relay.c

bench/pathemu: bench/pathemu.c
	$(CC) $(ALL_CFLAGS) $(LDHARDEN) -o $@ bench/pathemu.c -lm

bench/latency: bench/latency.c
	$(CC) $(ALL_CFLAGS) $(LDHARDEN) -o $@ bench/latency.c -lm

bench/nodelay.so: bench/nodelay.c
	$(CC) $(ALL_CFLAGS) -fPIC -shared -o $@ bench/nodelay.c -ldl

bench:
	@$(MAKE) -s deps-install PKGS="$(DEBS) $(BENCH_DEBS)"
	$(MAKE) dnsfwd bench/echo bench/relay bench/latency bench/nodelay.so \
	    bench/pathemu
	$(PY) bench/bench.py

bench-clean:
	rm -f bench/echo bench/relay bench/latency bench/nodelay.so \
	    bench/pathemu

.PHONY: bench bench-clean
