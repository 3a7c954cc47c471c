/*-------------------------------------------------------------------------
 *
 * listen.c
 *		The benchmark's live listener: LISTEN milestones and log every
 *		notification with the time it arrived.
 *
 * test/bench/run compiles it (gcc + libpq, both build dependencies already)
 * and runs it through the API runs.  For each notification on channel
 * `milestones` it writes one line "event_id<TAB>arrival" to stdout, arrival
 * in microseconds since the Unix epoch (CLOCK_REALTIME, the clock the
 * server's commit timestamps use), event_id taken from the JSON payload
 * (0 when the payload has none).  It prints "ready" to stderr once LISTEN
 * has committed, and exits on SIGTERM or SIGINT after flushing what it
 * has read.  The connection comes from the usual PG* environment.
 *
 * Usage: listen [conninfo] > arrivals.tsv
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#include "libpq-fe.h"

static volatile sig_atomic_t stopping = 0;

/*
 * OnSignal - SIGTERM/SIGINT handler: ask the main loop to finish.
 */
static void
OnSignal(int signo)
{
	(void) signo;
	stopping = 1;
}

/*
 * NowMicros - the wall clock in microseconds since the epoch.
 */
static long long
NowMicros(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * PayloadEventId - the number after "event_id": in a JSON payload, or 0.
 */
static long long
PayloadEventId(const char *payload)
{
	const char *p = strstr(payload, "\"event_id\"");

	if (p == NULL)
		return 0;
	p += strlen("\"event_id\"");
	while (*p == ' ' || *p == ':' || *p == '"')
		p++;
	return strtoll(p, NULL, 10);
}

/*
 * main - connect, LISTEN, then log notifications until told to stop.
 */
int
main(int argc, char **argv)
{
	PGconn	   *conn;
	PGresult   *res;
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = OnSignal;	/* no SA_RESTART: select() returns EINTR */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	conn = PQconnectdb(argc > 1 ? argv[1] : "");
	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "listen: %s", PQerrorMessage(conn));
		return 1;
	}
	res = PQexec(conn, "SET application_name = 'bench_listener'; LISTEN milestones");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		fprintf(stderr, "listen: %s", PQerrorMessage(conn));
		return 1;
	}
	PQclear(res);
	fprintf(stderr, "ready\n");
	fflush(stderr);

	while (!stopping)
	{
		int			sock = PQsocket(conn);
		fd_set		input;
		struct timeval tv = {0, 200000};
		PGnotify   *n;

		FD_ZERO(&input);
		FD_SET(sock, &input);
		if (select(sock + 1, &input, NULL, NULL, &tv) < 0)
		{
			if (errno == EINTR)
				continue;
			perror("listen: select");
			return 1;
		}
		if (!PQconsumeInput(conn))
		{
			fprintf(stderr, "listen: %s", PQerrorMessage(conn));
			return 1;
		}
		while ((n = PQnotifies(conn)) != NULL)
		{
			if (strcmp(n->relname, "milestones") == 0)
				printf("%lld\t%lld\n", PayloadEventId(n->extra), NowMicros());
			PQfreemem(n);
		}
		fflush(stdout);
	}
	fflush(stdout);
	PQfinish(conn);
	return 0;
}
