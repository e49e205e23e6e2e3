/*
 * Logging to stderr, one line per event.  Under systemd (JOURNAL_STREAM
 * set) each line starts with its syslog priority, <3> to <7>, so journald
 * files it correctly.  Writes never go to a socket that may need our own
 * DNS, so they cannot deadlock the daemon.
 */
#include <sys/stat.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* Minimum seconds between two copies of one rate-limited warning. */
#define LOG_RATELIMIT_S	5

static enum log_level log_verbosity = LOG_LVL_INFO;
static int	log_journal;
/* The last warning or error, logged or not, for the service's status. */
static char	last_warning[160];

static void	remember(const char *);
static void	vlog(enum log_level, int, const char *, va_list)
		    __attribute__((__format__(printf, 3, 0)));

static const struct {
	const char	*name;
	int		 syslog_pri;
} levels[] = {
	[LOG_LVL_ERROR] = { "error", 3 },
	[LOG_LVL_WARN] = { "warn", 4 },
	[LOG_LVL_INFO] = { "info", 6 },
	[LOG_LVL_DEBUG] = { "debug", 7 },
};

/*
 * systemd names the journal stream as "device:inode"; it only counts
 * while stderr is still that stream, not a file it was redirected to.
 */
static int
stderr_is_journal(void)
{
	const char		*js = getenv("JOURNAL_STREAM");
	unsigned long long	 dev, ino;
	struct stat		 st;

	if (js == NULL || sscanf(js, "%llu:%llu", &dev, &ino) != 2 ||
	    fstat(STDERR_FILENO, &st) == -1)
		return 0;
	return st.st_dev == (dev_t)dev && st.st_ino == (ino_t)ino;
}

void
log_init(enum log_level lvl)
{
	log_verbosity = lvl;
	log_journal = stderr_is_journal();
	setvbuf(stderr, NULL, _IOLBF, 0);
}

int
log_level_parse(const char *s, enum log_level *lvl)
{
	size_t	 i;

	for (i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
		if (strcmp(s, levels[i].name) == 0) {
			*lvl = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

/* Cut to fit: a status line, not a log. */
static void
remember(const char *msg)
{
	size_t	 n = strnlen(msg, sizeof(last_warning) - 1);

	memcpy(last_warning, msg, n);
	last_warning[n] = '\0';
}

static void
vlog(enum log_level lvl, int errnum, const char *fmt, va_list ap)
{
	char	 msg[1024];

	if (lvl > log_verbosity && lvl > LOG_LVL_WARN)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (lvl <= LOG_LVL_WARN)
		remember(msg);
	if (lvl > log_verbosity)
		return;
	if (log_journal)
		fprintf(stderr, "<%d>", levels[lvl].syslog_pri);
	else
		fprintf(stderr, "%s: ", levels[lvl].name);
	if (errnum)
		fprintf(stderr, "%s: %s\n", msg, strerror(errnum));
	else
		fprintf(stderr, "%s\n", msg);
}

#define LOGFN(fn, lvl, err)				\
void							\
fn(const char *fmt, ...)				\
{							\
	int	 saved = errno;				\
	va_list	 ap;					\
							\
	va_start(ap, fmt);				\
	vlog(lvl, err ? saved : 0, fmt, ap);		\
	va_end(ap);					\
	errno = saved;					\
}

LOGFN(log_warn, LOG_LVL_WARN, 1)
LOGFN(log_warnx, LOG_LVL_WARN, 0)
LOGFN(log_info, LOG_LVL_INFO, 0)
LOGFN(log_debug, LOG_LVL_DEBUG, 0)
LOGFN(log_error, LOG_LVL_ERROR, 0)

const char *
log_last_warning(void)
{
	return last_warning;
}

void
log_ratelimited(int64_t *last, const char *fmt, ...)
{
	int64_t	 now = now_ms();
	va_list	 ap;

	if (*last != 0 && now - *last < LOG_RATELIMIT_S * 1000)
		return;
	*last = now;
	va_start(ap, fmt);
	vlog(LOG_LVL_WARN, 0, fmt, ap);
	va_end(ap);
}

void
fatal(int code, const char *fmt, ...)
{
	int	 saved = errno;
	va_list	 ap;

	va_start(ap, fmt);
	vlog(LOG_LVL_ERROR, saved, fmt, ap);
	va_end(ap);
	exit(code);
}

void
fatalx(int code, const char *fmt, ...)
{
	va_list	 ap;

	va_start(ap, fmt);
	vlog(LOG_LVL_ERROR, 0, fmt, ap);
	va_end(ap);
	exit(code);
}
