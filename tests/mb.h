/*
 * Building DNS messages by hand for the unit tests: a header, names,
 * records of any section with their counts kept.  Included by the tests
 * that need it; a test uses what it needs, hence MB_FN.  The includer
 * defines MSG_MAX (the builder's capacity) and the T_ and C_ codes.
 */
#ifndef TESTS_MB_H
#define TESTS_MB_H

#define MB_FN	static __attribute__((__unused__))

enum section { AN, NS, AR };

struct mb {
	uint8_t		 m[MSG_MAX];
	size_t		 len;
};

MB_FN void
need(const struct mb *b, size_t n)
{
	if (b->len + n > sizeof(b->m)) {
		fprintf(stderr, "test message overflow\n");
		exit(2);
	}
}

MB_FN void
mb_u8(struct mb *b, unsigned int v)
{
	need(b, 1);
	b->m[b->len++] = (uint8_t)v;
}

MB_FN void
mb_u16(struct mb *b, unsigned int v)
{
	need(b, 2);
	dns_put16(b->m + b->len, (uint16_t)v);
	b->len += 2;
}

MB_FN void
mb_u32(struct mb *b, uint32_t v)
{
	mb_u16(b, v >> 16);
	mb_u16(b, v & 0xffff);
}

MB_FN void
mb_bytes(struct mb *b, const void *p, size_t n)
{
	need(b, n);
	if (n > 0)
		memcpy(b->m + b->len, p, n);
	b->len += n;
}

/* "a.b.c" as uncompressed labels; "" or "." is the root. */
MB_FN void
mb_name(struct mb *b, const char *name)
{
	const char	*s = name, *dot;
	size_t		 l;

	if (strcmp(name, ".") == 0)
		s = "";
	while (*s != '\0') {
		dot = strchr(s, '.');
		l = dot != NULL ? (size_t)(dot - s) : strlen(s);
		mb_u8(b, (unsigned int)l);
		mb_bytes(b, s, l);
		s += l;
		if (*s == '.')
			s++;
	}
	mb_u8(b, 0);
}

MB_FN void
mb_hdr(struct mb *b, uint16_t id, uint8_t f2, uint8_t f3)
{
	memset(b->m, 0, DNS_HDRLEN);
	dns_put16(b->m, id);
	b->m[2] = f2;
	b->m[3] = f3;
	b->len = DNS_HDRLEN;
}

MB_FN void
mb_question(struct mb *b, const char *name, uint16_t type, uint16_t class)
{
	mb_name(b, name);
	mb_u16(b, type);
	mb_u16(b, class);
	dns_put16(b->m + 4, (uint16_t)(dns_get16(b->m + 4) + 1));
}

MB_FN void
count_up(struct mb *b, enum section sec)
{
	uint8_t	*p = b->m + 6 + 2 * sec;

	dns_put16(p, (uint16_t)(dns_get16(p) + 1));
}

/*
 * Appends a record in section sec (callers add sections in order) owned
 * by name, or by a compression pointer to ptr when name is NULL.
 * Returns the offset of its rdata.
 */
MB_FN size_t
mb_rr(struct mb *b, enum section sec, const char *name, uint16_t ptr,
    uint16_t type, uint16_t class, uint32_t ttl, const void *rd,
    size_t rdlen)
{
	size_t	 at;

	if (name != NULL)
		mb_name(b, name);
	else
		mb_u16(b, 0xc000 | ptr);
	mb_u16(b, type);
	mb_u16(b, class);
	mb_u32(b, ttl);
	mb_u16(b, (unsigned int)rdlen);
	at = b->len;
	mb_bytes(b, rd, rdlen);
	count_up(b, sec);
	return at;
}

/* An A record 192.0.2.x. */
MB_FN size_t
mb_a(struct mb *b, enum section sec, const char *name, uint16_t ptr,
    uint32_t ttl, uint8_t x)
{
	uint8_t	 a[4] = { 192, 0, 2, x };

	return mb_rr(b, sec, name, ptr, T_A, C_IN, ttl, a, 4);
}

/* A record whose rdata is one uncompressed name (CNAME, NS). */
MB_FN size_t
mb_rr_name(struct mb *b, enum section sec, const char *name, uint16_t ptr,
    uint16_t type, uint32_t ttl, const char *target)
{
	struct mb	 t;

	t.len = 0;
	mb_name(&t, target);
	return mb_rr(b, sec, name, ptr, type, C_IN, ttl, t.m, t.len);
}

MB_FN size_t
mb_soa(struct mb *b, enum section sec, const char *name, uint16_t ptr,
    uint32_t ttl, uint32_t minimum)
{
	struct mb	 t;

	t.len = 0;
	mb_name(&t, "ns1.example.com");
	mb_name(&t, "hostmaster.example.com");
	mb_u32(&t, 2024010101);	/* serial */
	mb_u32(&t, 7200);	/* refresh */
	mb_u32(&t, 3600);	/* retry */
	mb_u32(&t, 1209600);	/* expire */
	mb_u32(&t, minimum);
	return mb_rr(b, sec, name, ptr, T_SOA, C_IN, ttl, t.m, t.len);
}

#endif /* TESTS_MB_H */
