/*
 * nodelay.so: TCP_NODELAY on every accepted socket, preloaded into the
 * upstream unbound when BENCH_UPSTREAM_NODELAY=1 (see bench/README.md).
 *
 * unbound 1.17 leaves Nagle's algorithm on for the DNS-over-TLS
 * connections it accepts.  When it writes an answer while the previous
 * one is still unacknowledged (two pipelined answers, say), the second
 * waits for the client's ACK, which a client in delayed-ACK mode sends
 * with its next query or after about 40 ms.  With this preload the
 * benchmark sees the forwarders alone; without it, what they do about an
 * upstream that Nagles.
 */
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <stddef.h>

static void
nodelay(int fd)
{
	int	 one = 1;

	if (fd >= 0)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int
accept(int fd, struct sockaddr *sa, socklen_t *len)
{
	static int (*real)(int, struct sockaddr *, socklen_t *);
	int	 s;

	if (real == NULL)
		*(void **)&real = dlsym(RTLD_NEXT, "accept");
	s = real(fd, sa, len);
	nodelay(s);
	return s;
}

int
accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
	static int (*real)(int, struct sockaddr *, socklen_t *, int);
	int	 s;

	if (real == NULL)
		*(void **)&real = dlsym(RTLD_NEXT, "accept4");
	s = real(fd, sa, len, flags);
	nodelay(s);
	return s;
}
