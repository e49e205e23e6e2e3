/*
 * nlshim.so: an LD_PRELOAD library for tests of dnsfwd's network watcher.
 * Route lookups (RTM_GETROUTE) that the process sends on a netlink
 * socket are swallowed: the send succeeds and the kernel never answers,
 * as if its reply were lost.  Everything else passes through.
 *
 *	cc -shared -fPIC -o nlshim.so tests/nlshim.c -ldl
 */
#define _GNU_SOURCE
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

#include <dlfcn.h>
#include <string.h>

typedef ssize_t send_fn(int, const void *, size_t, int);
typedef ssize_t sendto_fn(int, const void *, size_t, int,
    const struct sockaddr *, socklen_t);
typedef ssize_t sendmsg_fn(int, const struct msghdr *, int);

static int
swallowed(int fd, const void *buf, size_t len)
{
	struct nlmsghdr	 nh;
	int		 dom = 0;
	socklen_t	 dl = sizeof(dom);

	if (buf == NULL || len < sizeof(nh) ||
	    getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &dl) == -1 ||
	    dom != AF_NETLINK)
		return 0;
	memcpy(&nh, buf, sizeof(nh));
	return nh.nlmsg_type == RTM_GETROUTE;
}

ssize_t
send(int fd, const void *buf, size_t len, int flags)
{
	send_fn	*real = (send_fn *)dlsym(RTLD_NEXT, "send");

	if (swallowed(fd, buf, len))
		return (ssize_t)len;
	return real(fd, buf, len, flags);
}

ssize_t
sendto(int fd, const void *buf, size_t len, int flags,
    const struct sockaddr *to, socklen_t tolen)
{
	sendto_fn *real = (sendto_fn *)dlsym(RTLD_NEXT, "sendto");

	if (swallowed(fd, buf, len))
		return (ssize_t)len;
	return real(fd, buf, len, flags, to, tolen);
}

ssize_t
sendmsg(int fd, const struct msghdr *m, int flags)
{
	sendmsg_fn *real = (sendmsg_fn *)dlsym(RTLD_NEXT, "sendmsg");

	if (m != NULL && m->msg_iovlen > 0 && swallowed(fd,
	    m->msg_iov[0].iov_base, m->msg_iov[0].iov_len))
		return (ssize_t)m->msg_iov[0].iov_len;
	return real(fd, m, flags);
}
