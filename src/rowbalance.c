/*-------------------------------------------------------------------------
 *
 * src/rowbalance.c
 *		The row balance of a set of guarded tables: did the guard trigger
 *		see every row this transaction wrote to them?
 *
 * A commit check that vouches for writes from the facts its guard recorded
 * (check.c for orders, sellercheck.c for seller balances) must know that
 * the guard saw every write: one it did not see (session_replication_role
 * = replica, a guard disabled with ALTER TABLE ... DISABLE TRIGGER, a row
 * a later trigger suppressed) leaves no fact.  The guard counts the rows it
 * allowed, per table of its set and per subtransaction (RowSetSee); the
 * statistics collector counts the rows this transaction inserted, updated
 * and deleted, per table and per subtransaction level (its pending
 * per-transaction entries).  Written minus seen, per table, is the set's
 * row balance (RowBalanceNow).  A check compares the balance when it would
 * vouch with the balance its facts started from: equal, nobody wrote a row
 * of the set unseen in between.
 *
 * A set names its tables in schema milestones (and may name a few more
 * relations, looked up with them and never balanced); their oids are
 * looked up once per backend and again after any relation or schema is
 * created, renamed, dropped or changed.  A table newer than the
 * database's schema (the set marks it optional: a 1.2 table in a database
 * at 1.0 or 1.1) has no writes.  Any other missing table, a table with
 * inheritance children, a TRUNCATE in the transaction or track_counts off
 * leaves the balance unknown, and an unknown balance equals none.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_inherits.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pgstat_internal.h"
#include "utils/syscache.h"

#include "milestones.h"

/*
 * The rows the guard saw, per table, of one subtransaction: a set's stack
 * holds the entries of a subtransaction and its children on top of those
 * of its parent, so that a subtransaction's rollback pops what it saw, as
 * the statistics collector forgets what it wrote.
 */
struct RowSetSeen
{
	SubTransactionId subid;
	int64		rows[ROWSET_MAX_RELS];
};

/* The sets in use in this backend (linked at their first use). */
static RowSet *row_sets = NULL;

/* RowSetLink makes a set known to the callbacks below, once. */
static inline void
RowSetLink(RowSet *set)
{
	if (set->linked)
		return;
	Assert(set->nrels <= ROWSET_MAX_RELS && set->ntables <= set->nrels);
	set->next = row_sets;
	row_sets = set;
	set->linked = true;
}

/* RowSetXactCallback forgets every set's seen rows when the transaction ends. */
static void
RowSetXactCallback(XactEvent event, void *arg)
{
	RowSet	   *set;

	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			for (set = row_sets; set != NULL; set = set->next)
			{
				set->seen = NULL;
				set->nseen = set->maxseen = 0;
			}
			break;
		default:
			break;
	}
}

/*
 * RowSetSeenEnd folds a set's counts of an ending subtransaction into its
 * parent's (commit), or drops them with its writes (abort).
 */
static void
RowSetSeenEnd(RowSet *set, SubTransactionId mySubid, SubTransactionId parentSubid, bool commit)
{
	int64		acc[ROWSET_MAX_RELS];
	bool		any = false;
	int			t;

	memset(acc, 0, sizeof(acc));
	while (set->nseen > 0 && set->seen[set->nseen - 1].subid >= mySubid)
	{
		for (t = 0; t < set->ntables; t++)
			acc[t] += set->seen[set->nseen - 1].rows[t];
		set->nseen--;
		any = true;
	}
	if (!commit || !any)
		return;
	if (set->nseen == 0 || set->seen[set->nseen - 1].subid != parentSubid)
	{
		/* there is room: an entry was just popped */
		set->seen[set->nseen].subid = parentSubid;
		memset(set->seen[set->nseen].rows, 0, sizeof(acc));
		set->nseen++;
	}
	for (t = 0; t < set->ntables; t++)
		set->seen[set->nseen - 1].rows[t] += acc[t];
}

/* RowSetSubXactCallback: every set's seen rows follow a subtransaction's end. */
static void
RowSetSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	RowSet	   *set;

	if (event != SUBXACT_EVENT_COMMIT_SUB && event != SUBXACT_EVENT_ABORT_SUB)
		return;
	for (set = row_sets; set != NULL; set = set->next)
		RowSetSeenEnd(set, mySubid, parentSubid, event == SUBXACT_EVENT_COMMIT_SUB);
}

/*
 * RowSetsInvalidate forgets every set's oids when a row of pg_class or
 * pg_namespace changes (a table created, renamed, dropped, or given
 * inheritance children; a schema renamed or dropped).
 */
static void
RowSetsInvalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	RowSet	   *set;

	for (set = row_sets; set != NULL; set = set->next)
		set->valid = false;
}

/* RowBalanceInit registers the callbacks of every set; called from _PG_init. */
void
RowBalanceInit(void)
{
	RegisterXactCallback(RowSetXactCallback, NULL);
	RegisterSubXactCallback(RowSetSubXactCallback, NULL);
	CacheRegisterSyscacheCallback(RELNAMENSP, RowSetsInvalidate, (Datum) 0);
	CacheRegisterSyscacheCallback(NAMESPACEOID, RowSetsInvalidate, (Datum) 0);
}

/* RowSetLookup looks up the oids of a set's relations, when they are stale. */
static inline void
RowSetLookup(RowSet *set)
{
	Oid			nsp;
	int			i;

	RowSetLink(set);
	if (set->valid)
		return;
	/* an invalidation during the lookups makes the next call look again */
	set->valid = true;
	nsp = get_namespace_oid("milestones", true);
	for (i = 0; i < set->nrels; i++)
	{
		set->oids[i] = OidIsValid(nsp) ? get_relname_relid(set->names[i], nsp) : InvalidOid;
		set->children[i] = OidIsValid(set->oids[i]) && has_subclass(set->oids[i]);
	}
}

/*
 * RowSetRelid returns the oid of relation which (an index into the set's
 * names) in schema milestones, InvalidOid when there is none, and whether
 * it has inheritance children (children: may be NULL).
 */
Oid
RowSetRelid(RowSet *set, int which, bool *children)
{
	RowSetLookup(set);
	if (children != NULL)
		*children = set->children[which];
	return set->oids[which];
}

/*
 * SeenTop returns the set's entry of the current subtransaction, pushed
 * on its stack when it has none yet.
 */
static inline RowSetSeen *
SeenTop(RowSet *set)
{
	SubTransactionId subid = GetCurrentSubTransactionId();

	if (set->nseen == 0 || set->seen[set->nseen - 1].subid != subid)
	{
		RowSetLink(set);
		if (set->nseen >= set->maxseen)
		{
			int			newmax = set->maxseen > 0 ? set->maxseen * 2 : 8;

			if (set->seen == NULL)
				set->seen = MemoryContextAlloc(TopTransactionContext, newmax * sizeof(RowSetSeen));
			else
				set->seen = repalloc(set->seen, newmax * sizeof(RowSetSeen));
			set->maxseen = newmax;
		}
		set->seen[set->nseen].subid = subid;
		memset(set->seen[set->nseen].rows, 0, sizeof(set->seen[set->nseen].rows));
		set->nseen++;
	}
	return &set->seen[set->nseen - 1];
}

/*
 * RowSetSee counts one row of table (an index into the set's tables) that
 * the guard allowed, in the current subtransaction.
 */
void
RowSetSee(RowSet *set, int table)
{
	SeenTop(set)->rows[table]++;
}

/*
 * RowBalanceNow computes the set's row balance: the statistics collector's
 * counts of this transaction's inserted, updated and deleted rows of each
 * table, over every open subtransaction level, minus the rows the guard
 * saw.
 */
void
RowBalanceNow(RowSet *set, RowBalance *b)
{
	int			t;
	int			i;

	memset(b, 0, sizeof(RowBalance));
	if (!pgstat_track_counts)
		return;
	RowSetLookup(set);
	for (t = 0; t < set->ntables; t++)
	{
		Oid			relid = set->oids[t];
		PgStat_EntryRef *entry_ref;
		PgStat_TableStatus *tabstat;
		PgStat_TableXactStatus *trans;
		int64		written = 0;

		/* a table newer than the database's schema: no writes */
		if (!OidIsValid(relid) && t >= set->first_optional)
			continue;
		/* a child table's writes are counted under the child */
		if (!OidIsValid(relid) || set->children[t])
			return;

		/*
		 * find_tabstat_entry() without its second lookup (of a shared
		 * catalog, which these tables are not): that one misses the
		 * backend's cache and takes a lock of the shared statistics.
		 */
		entry_ref = pgstat_fetch_pending_entry(PGSTAT_KIND_RELATION, MyDatabaseId, relid);
		tabstat = entry_ref ? (PgStat_TableStatus *) entry_ref->pending : NULL;
		for (trans = tabstat ? tabstat->trans : NULL; trans != NULL; trans = trans->upper)
		{
			if (trans->truncdropped)
				return;
			written += trans->tuples_inserted + trans->tuples_updated + trans->tuples_deleted;
		}
		for (i = 0; i < set->nseen; i++)
			written -= set->seen[i].rows[t];
		b->diff[t] = written;
	}
	b->known = true;
}

/* RowBalanceStart sets a balance to the transaction's start: known, all seen. */
void
RowBalanceStart(RowBalance *b)
{
	memset(b, 0, sizeof(RowBalance));
	b->known = true;
}

/* RowBalanceSame says whether two known balances are equal. */
bool
RowBalanceSame(const RowBalance *a, const RowBalance *b)
{
	return a->known && b->known && memcmp(a->diff, b->diff, sizeof(a->diff)) == 0;
}

/*
 * RowSetSeeSince counts as seen every row of the set written since the
 * balance before was taken: the writes of an engine's own statement under
 * session_replication_role = replica, which no guard sees but the engine
 * made itself.  Nothing when either balance is unknown (it stays so).
 */
void
RowSetSeeSince(RowSet *set, const RowBalance *before)
{
	RowBalance	now;
	int			t;

	RowBalanceNow(set, &now);
	if (!now.known || !before->known)
		return;
	for (t = 0; t < set->ntables; t++)
		if (now.diff[t] > before->diff[t])
			SeenTop(set)->rows[t] += now.diff[t] - before->diff[t];
}
