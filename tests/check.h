/*
 * The smallest unit test harness: CHECK counts, names a failure by file,
 * line and condition, and check_done prints the closing line that CI
 * reads ("name: N passed, N failed") and gives the exit status.
 */
#ifndef CHECK_H
#define CHECK_H

#include <stdio.h>

static int	 check_passed, check_failed;

#define CHECK(cond) do {						\
	if (cond)							\
		check_passed++;						\
	else {								\
		check_failed++;						\
		fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__,	\
		    #cond);						\
	}								\
} while (0)

static inline int
check_done(const char *name)
{
	printf("%s: %d passed, %d failed\n", name, check_passed, check_failed);
	return check_failed ? 1 : 0;
}

#endif /* CHECK_H */
