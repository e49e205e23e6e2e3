/*
 * tls.c: DNS-over-TLS sessions over sockets the caller owns, on mbedTLS:
 * certificate and pin checks, session tickets per upstream, and
 * non-blocking reads and writes that report what they wait for.
 */
#ifndef TLS_H
#define TLS_H

#include <stddef.h>
#include <stdint.h>

/* Results of non-blocking I/O steps (here and on plain TCP). */
#define IO_ERR		(-1)
#define IO_WANT_READ	(-2)
#define IO_WANT_WRITE	(-3)

/* One upstream's name, pins and session ticket; lives as the process. */
struct tls_upstream;
/* One session; lives as long as its connection. */
struct tls_conn;

void	tls_init(void);
int	tls_load_ca(const char *);
void	tls_shutdown(void);
const char *tls_strerror(int);
struct tls_upstream *tls_upstream_new(const char *, const uint8_t (*)[32],
	    int, int);
void	tls_upstream_free(struct tls_upstream *);
/* Forgets the session ticket: the next handshake is a full one. */
void	tls_upstream_forget(struct tls_upstream *);
struct tls_conn *tls_conn_new(struct tls_upstream *, int);
/* Sends close_notify first when notify; the socket stays the caller's. */
void	tls_conn_free(struct tls_conn *, int notify);
int	tls_handshake(struct tls_conn *, char *, size_t);
const char *tls_version(struct tls_conn *);
int	tls_resumed(struct tls_conn *);
int	tls_drained(struct tls_conn *);
int64_t	tls_arrived(const struct tls_conn *);
int	tls_read(struct tls_conn *, uint8_t *, size_t);
int	tls_write(struct tls_conn *, const uint8_t *, size_t);
int	tls_flush(struct tls_conn *);

#endif /* TLS_H */
