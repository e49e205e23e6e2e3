/*
 * log.c: one line per event on stderr (journald files it by priority),
 * and the fatal exits of start-up.
 */
#ifndef LOG_H
#define LOG_H

#include <stdint.h>

/* Exit codes, as listed in dnsfwd.8 EXIT STATUS. */
#define EXIT_SETUP	1	/* bind failed, cannot switch user, ... */
#define EXIT_USAGE	2	/* bad configuration: options, CA file, user */

enum log_level { LOG_LVL_ERROR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

void	log_init(enum log_level);
int	log_level_parse(const char *, enum log_level *);
void	log_warn(const char *, ...) __attribute__((__format__(printf, 1, 2)));
void	log_warnx(const char *, ...) __attribute__((__format__(printf, 1, 2)));
void	log_info(const char *, ...) __attribute__((__format__(printf, 1, 2)));
void	log_debug(const char *, ...) __attribute__((__format__(printf, 1, 2)));
void	log_error(const char *, ...) __attribute__((__format__(printf, 1, 2)));
/* The last warning or error logged, even below the level shown; or "". */
const char *log_last_warning(void);
/* Warns at most once every few seconds per call site (pass a static). */
void	log_ratelimited(int64_t *, const char *, ...)
	    __attribute__((__format__(printf, 2, 3)));
__attribute__((__noreturn__)) void fatal(int, const char *, ...)
	    __attribute__((__format__(printf, 2, 3)));
__attribute__((__noreturn__)) void fatalx(int, const char *, ...)
	    __attribute__((__format__(printf, 2, 3)));

#endif /* LOG_H */
