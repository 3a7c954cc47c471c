/*-------------------------------------------------------------------------
 *
 * src/relay.c
 *		The relay: notifications sent off the API's commit path.
 *
 * A transaction that runs NOTIFY takes PostgreSQL's cluster-wide
 * notification lock at commit, which serializes every notifying commit of
 * the cluster.  So when milestones is in shared_preload_libraries, a
 * background worker (the relay) connected to the database named by
 * milestones.database_name sends the notifications instead (SPEC section 5):
 *
 *	- it reads the events through the durable consumer mechanism as the
 *	  reserved consumer "_relay" (the common batch in C, src/relay_batch.c;
 *	  the rest through milestones._relay_batch: _next_batch, the batch's
 *	  payloads, _finish_batch), so it sends committed events only, in
 *	  commit order, and resumes from its saved position after a restart or
 *	  a crash;
 *	- each batch is one transaction: its NOTIFYs and the finish of the batch
 *	  commit together, so a listener that stays connected never gets an
 *	  event twice;
 *	- it is woken by the events trigger at every commit that wrote events
 *	  (a latch in shared memory), sends at most one batch per
 *	  RELAY_PERIOD_MS under load, and polls every
 *	  milestones.relay_poll_interval milliseconds for what a latch cannot
 *	  announce: COMMIT PREPARED, a new CREATE EXTENSION;
 *	- above milestones.relay_max_queue_usage of the notification queue
 *	  (a listener that never reads) it pauses, with one WARNING, and goes on
 *	  when the queue drains;
 *	- SIGTERM is die(), as in worker_spi: pg_terminate_backend() ends it
 *	  even while it runs a statement or waits for a lock (a FATAL error);
 *	  when its database is dropped (DROP DATABASE ... WITH (FORCE)) it
 *	  exits for good (exit code 0: the postmaster does not restart it, or,
 *	  when the signal came in the middle of a statement, the restarted
 *	  worker exits with 0 before connecting); any other termination exits
 *	  with 1 and the postmaster restarts it after bgw_restart_time;
 *	- on every exit (normal, FATAL, the postmaster's death) it clears the
 *	  pid and latch it published (a before_shmem_exit callback), so
 *	  relay_status() never shows a process that is gone.
 *
 * Backends of the served database see the relay in shared memory and skip
 * the fallback NOTIFY (src/events.c); every other database, or a server
 * without the preload, notifies at commit as before.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/bgworker_internals.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/catcache.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "milestones.h"

PG_FUNCTION_INFO_V1(milestones_relay_info);
PG_FUNCTION_INFO_V1(milestones_relay_serves);

PGDLLEXPORT void milestones_relay_main(Datum main_arg);

/* The relay's consumer: one mechanism for the relay and the applications. */
#define RELAY_CONSUMER "_relay"
#define RELAY_WORKER_NAME "milestones relay"

/* What the relay publishes for the backends and relay_status(). */
typedef struct RelayShared
{
	slock_t		mutex;
	pid_t		pid;			/* the running relay, 0 when none */
	Latch	   *latch;			/* its latch, set at commits that wrote events */
	bool		gave_up;		/* its database was dropped: no relay any more */
	bool		paused;			/* notification queue above the threshold */
	bool		extension_present;	/* milestones installed in its database */
	TimestampTz started_at;
	TimestampTz heartbeat;		/* last time round its loop */
	TimestampTz last_batch_at;
	int64		batches;		/* batches sent since the server started */
	int64		notifications;	/* notifications sent since the server started */
	int32		last_batch_size;
	char		last_error[256];
} RelayShared;

/* Settings (GUCs). */
static char *relay_database_name = NULL;

/* A lock timeout was reported since the last batch that went through. */
static bool lock_reported = false;
/*
 * Commit coalescing: a batch costs its transaction and bookkeeping (some
 * 0.5 ms of CPU) however few events it carries, so a busy database is
 * served at most one batch per RELAY_PERIOD_MS: after a batch of fewer
 * than RELAY_COALESCE_BELOW events the relay lets commits gather until
 * that much time has passed since the batch began (an event waits half of
 * it on average; the first event after a quiet spell goes at once).  A
 * batch of RELAY_COALESCE_BELOW or more means a backlog: the next one
 * follows at once.
 */
#define RELAY_COALESCE_BELOW 50
#define RELAY_PERIOD_MS 15L

/*
 * The relay's deadlock_timeout and lock_timeout (ceilings: a shorter
 * setting is kept), so that it loses a deadlock to the session it meets
 * (see milestones_relay_main).
 */
#define RELAY_DEADLOCK_TIMEOUT_MS 100
#define RELAY_LOCK_TIMEOUT_MS 200

static double relay_max_queue_usage = 0.5;
static int	relay_poll_interval = 250;
static int	relay_batch_size = 1000;

/* Shared memory, when preloaded. */
static RelayShared *relay = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* This worker: _relay_start() has run since it started. */
static bool relay_start_done = false;

/* Set in the postmaster when the worker got its slot; inherited by backends. */
static bool relay_registered = false;

/* This backend: does the relay serve its database (-1 not known yet)? */
static int	serves_this_database = -1;

/* This backend: set the relay's latch when the transaction commits. */
static bool wake_at_commit = false;

/* The worker: when it last warned of a full notification queue. */
static TimestampTz last_pause_warning = 0;

/*
 * The worker: its exit was decided on the way out of its main loop
 * (RelayShutdown), so RelayBeforeShmemExit only clears what it published.
 */
static bool exit_decided = false;

/* The worker: a SIGTERM came (RelayDie). */
static volatile sig_atomic_t got_sigterm = false;

/* RelayShmemRequest asks for the relay's shared memory (PostgreSQL 15 hook). */
static void
RelayShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(RelayShared)));
}

/* RelayShmemStartup creates (or attaches to) the relay's shared memory. */
static void
RelayShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	relay = ShmemInitStruct("milestones relay", sizeof(RelayShared), &found);
	if (!found)
	{
		memset(relay, 0, sizeof(RelayShared));
		SpinLockInit(&relay->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * WorkerRegistered says whether the postmaster's list of background
 * workers holds the relay: RegisterBackgroundWorker only logs, and returns,
 * when max_worker_processes has no slot left.
 */
static bool
WorkerRegistered(void)
{
	slist_iter	iter;

	slist_foreach(iter, &BackgroundWorkerList)
	{
		RegisteredBgWorker *rw = slist_container(RegisteredBgWorker, rw_lnode, iter.cur);

		if (strcmp(rw->rw_worker.bgw_library_name, "milestones") == 0 &&
			strcmp(rw->rw_worker.bgw_function_name, "milestones_relay_main") == 0)
			return true;
	}
	return false;
}

/*
 * RelayXactCallback wakes the relay when a transaction that wrote events
 * commits (after the commit is visible), and forgets the wish otherwise.
 * A COMMIT PREPARED runs no callback: the relay's poll finds it.
 */
static void
RelayXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit && relay != NULL)
			{
				Latch	   *latch;

				SpinLockAcquire(&relay->mutex);
				latch = relay->pid != 0 ? relay->latch : NULL;
				SpinLockRelease(&relay->mutex);
				if (latch != NULL)
					SetLatch(latch);
			}
			wake_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			wake_at_commit = false;
			break;
		default:
			break;
	}
}

/*
 * RelayInit defines the relay's settings and, when the library is being
 * preloaded, milestones.database_name (PGC_POSTMASTER settings can only be
 * defined then), its shared memory and its background worker; called from
 * _PG_init.  Without the preload the fallback applies everywhere.
 */
void
RelayInit(void)
{
	BackgroundWorker worker;

	DefineCustomRealVariable("milestones.relay_max_queue_usage",
							 "Notification queue usage above which the milestones relay pauses.",
							 "A fraction of pg_notification_queue_usage(): a listener that never reads fills the queue.",
							 &relay_max_queue_usage,
							 0.5, 0.0, 1.0,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("milestones.relay_poll_interval",
							"How often the milestones relay looks for commits it was not woken for.",
							"COMMIT PREPARED and a new CREATE EXTENSION are found by this poll.",
							&relay_poll_interval,
							250, 10, 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("milestones.relay_batch_size",
							"Most events the milestones relay notifies in one transaction.",
							NULL,
							&relay_batch_size,
							1000, 1, 100000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	RegisterXactCallback(RelayXactCallback, NULL);

	/* The rest only when preloaded: a PGC_POSTMASTER setting, the worker. */
	if (!process_shared_preload_libraries_in_progress)
		return;
	DefineCustomStringVariable("milestones.database_name",
							   "Database whose events the milestones relay notifies.",
							   "Other databases notify at commit (fallback). Needs milestones in shared_preload_libraries.",
							   &relay_database_name,
							   "postgres",
							   PGC_POSTMASTER,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = RelayShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = RelayShmemStartup;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "milestones");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "milestones_relay_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, RELAY_WORKER_NAME);
	snprintf(worker.bgw_type, BGW_MAXLEN, RELAY_WORKER_NAME);
	RegisterBackgroundWorker(&worker);
	relay_registered = WorkerRegistered();
}

/*
 * RelayServesThisDatabase says whether the relay notifies for this
 * backend's database: preloaded, registered, this database is
 * milestones.database_name, and the relay has not given up (its database
 * was dropped).  While the relay restarts it still serves: what commits
 * meanwhile is sent when it is back, from its saved position.
 */
bool
RelayServesThisDatabase(void)
{
	bool		gave_up;

	if (!relay_registered || relay == NULL || !OidIsValid(MyDatabaseId))
		return false;
	SpinLockAcquire(&relay->mutex);
	gave_up = relay->gave_up;
	SpinLockRelease(&relay->mutex);
	if (gave_up)
		return false;
	if (serves_this_database < 0)
	{
		char	   *name = get_database_name(MyDatabaseId);

		serves_this_database = (name != NULL && relay_database_name != NULL &&
								strcmp(name, relay_database_name) == 0) ? 1 : 0;
	}
	return serves_this_database == 1;
}

/* RelayWakeAtCommit asks for the relay's latch to be set when this transaction commits. */
void
RelayWakeAtCommit(void)
{
	wake_at_commit = true;
}

/*
 * RelayDie is the SIGTERM handler: die(), as worker_spi's since PostgreSQL
 * 13, so that the termination interrupts a statement or a lock wait too,
 * and a note that it came, for the exit's log line.
 */
static void
RelayDie(SIGNAL_ARGS)
{
	got_sigterm = true;
	die(postgres_signal_arg);
}

/* SetNote records the relay's last error (or clears it) for relay_status(). */
static void
SetNote(const char *note)
{
	SpinLockAcquire(&relay->mutex);
	strlcpy(relay->last_error, note ? note : "", sizeof(relay->last_error));
	SpinLockRelease(&relay->mutex);
}

/*
 * DatabaseBeingDropped says whether a DROP DATABASE holds the lock on the
 * relay's database: DROP DATABASE ... WITH (FORCE) takes it, then signals
 * every backend of the database (the relay too) with SIGTERM.  A session
 * lock, tried without waiting: it needs no transaction, so it also works
 * on the way out of a FATAL error, whatever state the transaction is in.
 */
static bool
DatabaseBeingDropped(void)
{
	LOCKTAG		tag;

	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, MyDatabaseId, 0);
	if (LockAcquire(&tag, AccessShareLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
		return true;
	LockRelease(&tag, AccessShareLock, true);
	return false;
}

/* LogDropped says, once, why the relay stops for good. */
static void
LogDropped(void)
{
	ereport(LOG,
			(errmsg("milestones relay exiting: database \"%s\" is being dropped", relay_database_name),
			 errdetail("The relay will not be restarted; notifications fall back to NOTIFY at commit until the server restarts.")));
}

/* LogTerminating says that the relay ends on request, and comes back. */
static void
LogTerminating(void)
{
	ereport(LOG,
			(errmsg("milestones relay terminating on request"),
			 errdetail("It is restarted by the postmaster and resumes from its saved position.")));
}

/*
 * RelayBeforeShmemExit runs on every exit of the worker (before_shmem_exit,
 * before its PGPROC and latch are released): a normal one, a FATAL error
 * (pg_terminate_backend() while it runs a statement or waits for a lock:
 * die() and ProcessInterrupts()), the postmaster's death.  It clears the
 * pid and latch it published, so that relay_status() never shows a dead
 * process and no backend sets a latch that another process may own next.
 * When the exit was not decided by RelayShutdown and the database is being
 * dropped, the relay gives up: the postmaster restarts it (exit code 1),
 * and the new worker sees gave_up and exits for good (0) before it
 * connects.
 */
static void
RelayBeforeShmemExit(int code, Datum arg)
{
	bool		dropped = false;

	if (!exit_decided && code != 0 && OidIsValid(MyDatabaseId))
		dropped = DatabaseBeingDropped();
	SpinLockAcquire(&relay->mutex);
	if (relay->pid == MyProcPid)
	{
		relay->pid = 0;
		relay->latch = NULL;
	}
	if (dropped)
		relay->gave_up = true;
	SpinLockRelease(&relay->mutex);
	if (dropped)
		LogDropped();
	else if (!exit_decided && got_sigterm)
		LogTerminating();
}

/*
 * GaveUp says whether the relay gave up: its database was dropped.  Not
 * inlined: a local of the worker's main function set before its PG_TRY
 * would be a "clobbered by longjmp" warning.
 */
static pg_noinline bool
GaveUp(void)
{
	bool		gave_up;

	SpinLockAcquire(&relay->mutex);
	gave_up = relay->gave_up;
	SpinLockRelease(&relay->mutex);
	return gave_up;
}

/*
 * RelayShutdown ends the worker between two units, after a SIGTERM (die()
 * set ProcDiePending): for good (exit code 0, the postmaster does not
 * restart it) when its database is being dropped, else with 1 so that the
 * postmaster restarts it.  Interrupts are held: CHECK_FOR_INTERRUPTS would
 * turn the pending termination into a FATAL error and exit code 1.
 */
static void
RelayShutdown(void)
{
	bool		dropped;

	HOLD_INTERRUPTS();
	dropped = DatabaseBeingDropped();
	exit_decided = true;
	SpinLockAcquire(&relay->mutex);
	relay->pid = 0;
	relay->latch = NULL;
	if (dropped)
		relay->gave_up = true;
	SpinLockRelease(&relay->mutex);
	if (dropped)
	{
		LogDropped();
		proc_exit(0);			/* 0: the postmaster does not restart it */
	}
	LogTerminating();
	proc_exit(1);
}

/* The relay's statements; %1$s is the extension's schema (quoted). */
typedef enum RelayStmt
{
	STMT_START,
	STMT_PENDING,
	STMT_BATCH,
	STMT_COUNT
} RelayStmt;

typedef struct RelayStmtDef
{
	const char *sql;
	int			nargs;
	Oid			argtypes[2];
} RelayStmtDef;

static const RelayStmtDef relay_stmts[STMT_COUNT] = {
	[STMT_START] = {"SELECT %1$s._relay_start()", 0, {InvalidOid}},
	[STMT_PENDING] = {"SELECT %1$s._has_pending($1)", 1, {TEXTOID}},
	[STMT_BATCH] = {"SELECT b.payload FROM %1$s._relay_batch($1) b ORDER BY b.event_id", 1, {INT4OID}},
};

/* The prepared and kept plans, and the schema they were prepared for. */
static SPIPlanPtr relay_plan_slots[STMT_COUNT];
static RelayPlans relay_plans = {STMT_COUNT, relay_plan_slots, ""};

/*
 * RunStmt runs one of the relay's statements from its kept plan and checks
 * that it returned rows.
 */
static void
RunStmt(RelayStmt stmt, const char *schema, Datum *values)
{
	int			ret;

	ret = SPI_execute_plan(RelayPlan(&relay_plans, stmt, schema, relay_stmts[stmt].sql,
									 relay_stmts[stmt].nargs, relay_stmts[stmt].argtypes, 0),
						   values, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "milestones relay: statement %d failed: %s", (int) stmt, SPI_result_code_string(ret));
}

/*
 * QueueTooFull pauses the relay above milestones.relay_max_queue_usage of
 * the notification queue, with one WARNING when it starts (a pause again
 * within a minute, as the relay's own catch-up refills the queue, is a LOG
 * line) and one LOG line when it ends, so a listener that never reads cannot make the relay fill
 * the queue (and then fail every NOTIFY of the cluster).
 */
static bool
QueueTooFull(void)
{
	double		usage = DatumGetFloat8(DirectFunctionCall1(pg_notification_queue_usage, (Datum) 0));
	bool		was_paused;

	SpinLockAcquire(&relay->mutex);
	was_paused = relay->paused;
	relay->paused = usage > relay_max_queue_usage;
	SpinLockRelease(&relay->mutex);
	if (usage > relay_max_queue_usage)
	{
		/* One WARNING per stretch of trouble: a minute after the last one. */
		if (!was_paused &&
			TimestampDifferenceExceeds(last_pause_warning, GetCurrentTimestamp(), 60 * 1000))
		{
			last_pause_warning = GetCurrentTimestamp();
			ereport(WARNING,
					(errmsg("milestones relay paused: the notification queue is %.1f%% full", usage * 100.0),
					 errdetail("A session listens without reading its notifications; above milestones.relay_max_queue_usage (%.1f%%) the relay sends nothing.",
							   relay_max_queue_usage * 100.0),
					 errhint("Find the listener with pg_stat_activity; the relay goes on when the queue drains.")));
		}
		else if (!was_paused)
			ereport(LOG, (errmsg("milestones relay paused again: the notification queue is %.1f%% full", usage * 100.0)));
		return true;
	}
	if (was_paused)
		ereport(LOG, (errmsg("milestones relay resumed: the notification queue is %.1f%% full", usage * 100.0)));
	return false;
}

/*
 * ExtensionSchema finds milestones in this database, at 1.1 or later (its
 * consumer functions exist): the schema's oid, or InvalidOid.  Catalog
 * lookups, no statement: it runs at every unit.  The schema found last
 * time is taken again while it still holds the extension's consumer and
 * events tables (cached catalog lookups; a DROP EXTENSION drops them, an
 * ALTER EXTENSION ... SET SCHEMA moves them).
 */
static Oid
ExtensionSchema(void)
{
	static Oid	last_nsp = InvalidOid;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			nsp = InvalidOid;
	CatCList   *procs;
	int			i;
	bool		found = false;

	if (OidIsValid(last_nsp) &&
		OidIsValid(get_relname_relid("consumers", last_nsp)) &&
		OidIsValid(get_relname_relid("events", last_nsp)))
		return last_nsp;
	last_nsp = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("milestones"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		nsp = ((Form_pg_extension) GETSTRUCT(tuple))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	if (!OidIsValid(nsp))
		return InvalidOid;

	procs = SearchSysCacheList1(PROCNAMEARGSNSP, CStringGetDatum("_next_batch"));
	for (i = 0; i < procs->n_members && !found; i++)
		found = ((Form_pg_proc) GETSTRUCT(&procs->members[i]->tuple))->pronamespace == nsp;
	ReleaseSysCacheList(procs);
	if (found)
		last_nsp = nsp;
	return last_nsp;
}

/*
 * RelayUnit is one unit of work, in its own transaction: find the
 * extension, take the relay's next batch, NOTIFY every event of it and
 * finish the batch, so that the notifications and the new position commit
 * together.  The common case runs in C (src/relay_batch.c); the rest
 * through the SQL functions (_has_pending, _relay_batch).  woken: a commit
 * that wrote events set the latch, so there is surely something to read
 * (no read-only look first).  Returns the
 * number of events sent, or -1 when there is nothing to do now (nothing
 * new, no extension, paused).
 */
static int
RelayUnit(bool woken)
{
	Datum		values[2];
	Oid			nsp;
	char	   *schema;
	bool		isnull;
	bool		fallback;
	int			sent = -1;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "milestones relay: SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "milestones relay: looking for committed events");

	/* The extension, and its schema. */
	nsp = ExtensionSchema();
	SpinLockAcquire(&relay->mutex);
	relay->extension_present = OidIsValid(nsp);
	SpinLockRelease(&relay->mutex);
	if (!OidIsValid(nsp))
		goto done;				/* not installed (or still at 1.0) */
	schema = (char *) quote_identifier(get_namespace_name(nsp));

	if (QueueTooFull())
		goto done;

	/* Once per worker start: the relay's consumer, at a sensible position. */
	if (!relay_start_done)
	{
		RunStmt(STMT_START, schema, NULL);
		relay_start_done = true;
	}

	/* The common case, in C. */
	sent = RelayBatchSend(nsp, schema, RELAY_CONSUMER, woken, relay_batch_size, &fallback);
	if (!fallback)
		goto done;

	/* Anything new since the relay's position?  A read-only look first. */
	values[0] = CStringGetTextDatum(RELAY_CONSUMER);
	RunStmt(STMT_PENDING, schema, values);
	if (SPI_processed != 1)
		elog(ERROR, "milestones relay: _has_pending returned no row");
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) || isnull)
		goto done;

	/*
	 * The next batch of the relay's consumer (_relay_start made sure it
	 * exists), its payloads, and the batch finished: the NOTIFYs queued here
	 * and the new position commit together.
	 */
	pgstat_report_activity(STATE_RUNNING, "milestones relay: sending a batch");
	values[0] = Int32GetDatum(relay_batch_size);
	RunStmt(STMT_BATCH, schema, values);
	if (SPI_processed > 0)
	{
		uint64		i;

		sent = (int) SPI_processed;
		for (i = 0; i < SPI_processed; i++)
		{
			char	   *payload = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

			if (payload != NULL)
				Async_Notify(EVENTS_CHANNEL, payload);
		}
	}

done:
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	RelayBatchCommitted();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	if (sent >= 0)
	{
		SpinLockAcquire(&relay->mutex);
		relay->batches++;
		relay->notifications += sent;
		relay->last_batch_size = sent;
		relay->last_batch_at = GetCurrentTimestamp();
		SpinLockRelease(&relay->mutex);
	}
	return sent;
}

/*
 * milestones_relay_main is the relay's background worker: connect to
 * milestones.database_name, publish itself in shared memory, then send
 * batches until nothing is new, wait for a commit's wake-up or the poll
 * interval, and again, until told to stop.  An error in a unit is logged
 * and the unit tried again after a pause.
 */
void
milestones_relay_main(Datum main_arg)
{
	MemoryContext loop_context;
	bool		woken = false;	/* the latch was set: commits wrote events */

	/*
	 * SIGTERM: die() (RelayDie), so that pg_terminate_backend() and DROP
	 * DATABASE ... WITH (FORCE) interrupt a statement or a lock wait too (a
	 * FATAL error at the next CHECK_FOR_INTERRUPTS); between units the
	 * main loop sees ProcDiePending first and chooses its exit code
	 * (RelayShutdown).
	 */
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, RelayDie);
	BackgroundWorkerUnblockSignals();

	/* Its database was dropped while it ran a statement: stop for good. */
	if (GaveUp())
		proc_exit(0);

	BackgroundWorkerInitializeConnection(relay_database_name, NULL, 0);
	pgstat_report_appname(RELAY_WORKER_NAME);

	/*
	 * The relay never makes another session fail.  A waiter's deadlock
	 * check runs once, deadlock_timeout after it began to wait, and the
	 * waiter whose check finds the cycle is the one that fails.  So the
	 * relay checks early (RELAY_DEADLOCK_TIMEOUT_MS): where a session
	 * waits for the relay's batch and the batch then waits for it (ALTER
	 * EXTENSION UPDATE's locks, sql/1.2/01_locks.sql), the batch fails.
	 * And it waits for no lock longer than RELAY_LOCK_TIMEOUT_MS: where the
	 * batch waited first and a session closes the cycle later, the batch
	 * has given up before the session's own check.  Either way the batch
	 * is tried again a second later.  (A shorter setting is kept.)
	 */
	if (DeadlockTimeout > RELAY_DEADLOCK_TIMEOUT_MS)
		SetConfigOption("deadlock_timeout", CppAsString2(RELAY_DEADLOCK_TIMEOUT_MS) "ms",
						PGC_SUSET, PGC_S_OVERRIDE);
	if (LockTimeout == 0 || LockTimeout > RELAY_LOCK_TIMEOUT_MS)
		SetConfigOption("lock_timeout", CppAsString2(RELAY_LOCK_TIMEOUT_MS) "ms",
						PGC_SUSET, PGC_S_OVERRIDE);

	before_shmem_exit(RelayBeforeShmemExit, (Datum) 0);
	SpinLockAcquire(&relay->mutex);
	relay->pid = MyProcPid;
	relay->latch = MyLatch;
	relay->started_at = GetCurrentTimestamp();
	relay->heartbeat = relay->started_at;
	relay->paused = false;
	relay->last_error[0] = '\0';
	SpinLockRelease(&relay->mutex);
	ereport(LOG, (errmsg("milestones relay started for database \"%s\"", relay_database_name)));

	loop_context = AllocSetContextCreate(TopMemoryContext, "milestones relay loop", ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		int			sent = -1;
		bool		failed = false;
		bool		was_woken = woken;
		TimestampTz unit_start;
		long		left;

		if (ProcDiePending)
			RelayShutdown();
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		SpinLockAcquire(&relay->mutex);
		relay->heartbeat = GetCurrentTimestamp();
		SpinLockRelease(&relay->mutex);

		MemoryContextSwitchTo(loop_context);
		unit_start = GetCurrentTimestamp();
		PG_TRY();
		{
			sent = RelayUnit(was_woken);
			if (sent >= 0)
			{
				SetNote(NULL);
				lock_reported = false;
			}
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(loop_context);
			edata = CopyErrorData();

			/*
			 * A lock it could not get in time is reported once, not at
			 * every retry while a session holds it; relay_status() shows
			 * it until a batch goes through.
			 */
			if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE || !lock_reported)
				EmitErrorReport();
			lock_reported = edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE;
			FlushErrorState();
			AbortCurrentTransaction();
			RelayBatchForget();
			SetNote(edata->message);
			FreeErrorData(edata);
			pgstat_report_activity(STATE_IDLE, NULL);
			failed = true;
		}
		PG_END_TRY();
		MemoryContextSwitchTo(loop_context);
		MemoryContextReset(loop_context);

		woken = true;
		if (sent > 0 && sent >= Min(RELAY_COALESCE_BELOW, relay_batch_size) && !ProcDiePending)
			continue;			/* a big batch: more are queued, take the next at once */

		/*
		 * After a small batch, let commits gather until RELAY_PERIOD_MS
		 * since it began; commits meanwhile set the latch, which the wait
		 * below then finds set.
		 */
		left = RELAY_PERIOD_MS -
			(long) ((GetCurrentTimestamp() - unit_start) / 1000);
		if (sent > 0 && !ProcDiePending && left > 0)
			(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, left, PG_WAIT_EXTENSION);

		woken = false;
		if (WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					  failed ? 1000L : (long) relay_poll_interval, PG_WAIT_EXTENSION) & WL_LATCH_SET)
			woken = !failed;
		ResetLatch(MyLatch);
	}
}

/*
 * milestones_relay_info is SQL milestones._relay_info(): what this backend
 * and the shared memory know about the relay, for relay_status().
 */
Datum
milestones_relay_info(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[13];
	bool		nulls[13];
	RelayShared snap;
	bool		have = relay_registered && relay != NULL;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);
	memset(nulls, 0, sizeof(nulls));
	memset(&snap, 0, sizeof(snap));
	if (relay != NULL)
	{
		SpinLockAcquire(&relay->mutex);
		memcpy(&snap, relay, sizeof(snap));
		SpinLockRelease(&relay->mutex);
	}
	values[0] = BoolGetDatum(relay != NULL);	/* preloaded */
	values[1] = BoolGetDatum(relay_registered);
	if (relay_database_name != NULL)
		values[2] = CStringGetTextDatum(relay_database_name);
	else
		nulls[2] = true;
	values[3] = BoolGetDatum(RelayServesThisDatabase());
	values[4] = Int32GetDatum((int32) snap.pid);
	nulls[4] = !have || snap.pid == 0;
	values[5] = TimestampTzGetDatum(snap.started_at);
	nulls[5] = !have || snap.started_at == 0;
	values[6] = TimestampTzGetDatum(snap.heartbeat);
	nulls[6] = !have || snap.heartbeat == 0;
	values[7] = BoolGetDatum(snap.paused);
	values[8] = BoolGetDatum(snap.gave_up);
	values[9] = Int64GetDatum(snap.notifications);
	values[10] = Int64GetDatum(snap.batches);
	values[11] = TimestampTzGetDatum(snap.last_batch_at);
	nulls[11] = !have || snap.last_batch_at == 0;
	if (snap.last_error[0] != '\0')
		values[12] = CStringGetTextDatum(snap.last_error);
	else
		nulls[12] = true;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* milestones_relay_serves is SQL milestones._relay_serves(). */
Datum
milestones_relay_serves(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(RelayServesThisDatabase());
}
