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

SRCS =		dnsfwd.c options.c listen.c query.c mux.c netmon.c cache.c \
		tls.c dns.c log.c util.c
HDRS =		dnsfwd.h
# mbedTLS 3.6 from Debian 13, unpacked here by tests/mbedtls3.sh.
M3 =		build/mbedtls3
M3LIB =		$(M3)/usr/lib/$(shell $(CC) -print-multiarch)

DEBS =		build-essential libev-dev libmbedtls-dev ca-certificates
TEST_DEBS =	unbound python3-dnspython knot-dnsutils openssl mandoc systemd \
		dnsmasq-base iproute2

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

tests/test_dns: tests/test_dns.c dns.c util.c log.c $(HDRS)
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -I. -o $@ tests/test_dns.c dns.c \
	    util.c log.c

tests/test_mux: tests/test_mux.c tests/check.h mux.c dns.c log.c util.c \
	    tls.c $(HDRS)
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -I. -o $@ tests/test_mux.c dns.c \
	    log.c util.c tls.c $(LIBS)

tests/test_cache: tests/test_cache.c tests/check.h cache.c dns.c log.c \
	    util.c $(HDRS)
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -I. -o $@ tests/test_cache.c dns.c \
	    log.c util.c

tests/test_query: tests/test_query.c tests/check.h query.c cache.c dns.c \
	    log.c util.c $(HDRS)
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -I. -o $@ tests/test_query.c cache.c \
	    dns.c log.c util.c $(LIBS)

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
	@$(MAKE) -s deps-install PKGS="$(DEBS) $(TEST_DEBS)"

deps-run:
	@$(MAKE) -s deps-install PKGS="$(DEBS)"

UNIT =		tests/test_dns tests/test_mux tests/test_cache tests/test_query \
		tests/test_options
VARIANTS =	dnsfwd dnsfwd-asan dnsfwd-mbedtls3

check: deps
	$(MAKE) $(UNIT) $(VARIANTS)
	mandoc -Tlint -W warning dnsfwd.8
	$(PY) tests/runall.py $(UNIT) -- $(VARIANTS) -- tests/units.py

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

clean:
	rm -f $(VARIANTS) $(UNIT)

.PHONY: all check deps deps-run deps-install run lint install uninstall clean
