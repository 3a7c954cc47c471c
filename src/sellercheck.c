/*-------------------------------------------------------------------------
 *
 * src/sellercheck.c
 *		The seller-level commit check: seller balances, in proportion to
 *		the change.
 *
 * The guard trigger of the seller tables (milestones_guard_seller in
 * earnings.c) records every row write it allows as a fact of its seller
 * and currency: an account's balance change (old -> new, per column), a
 * journal leg, an earning credited or cleared, a withdrawal requested or
 * reported.  The earnings functions (earnings.c), which lock the
 * seller's account row before they write and compute every amount
 * themselves, declare the facts of the writes they make.  At commit (the
 * deferred constraint trigger milestones_check_seller, once per touched
 * seller and currency):
 *
 *	- observed facts == declared facts (as multisets), every journal
 *	  transaction among them balances, each balance column changed by
 *	  exactly what the journal legs on that account add up to, and the
 *	  guard saw every row this transaction wrote to the four tables (the
 *	  row balance of rowbalance.c, which the order check shares, is what
 *	  it was when the seller's facts started): the seller was written by
 *	  the earnings functions only, from a state that satisfied the
 *	  invariants (committed by a transaction that passed this check), so
 *	  its accounts still equal its journal and it passes without a query;
 *	- anything else (a hand-written statement, a write the guard saw
 *	  outside an earnings function, a restore's INSERTs, a subtransaction
 *	  rolled back, a write no guard saw: session_replication_role =
 *	  replica, a disabled guard, a BEFORE trigger that fires after the
 *	  guard and may rewrite the row) falls back to the full check of those
 *	  sellers: milestones._seller_problems(), the very rules
 *	  check_invariants() reports, in one query for all sellers that need
 *	  it; its problems are raised as one error (23514).  A write no guard
 *	  saw cannot be traced to its seller: every seller the transaction
 *	  touched gets the full check.
 *
 * A seller whose rows were only INSERTed in this transaction and who has
 * no journal yet is not checked: pg_restore loads seller_accounts and
 * seller_earnings, one table per transaction, before seller_ledger (file
 * order), so the accounts alone are not the finished picture; the
 * journal's load checks them all.  check_invariants() reports a seller
 * whose journal never comes.  A passed full check is a new baseline: the
 * seller's facts are forgotten, and later API writes in the same
 * transaction are judged against it.  A mismatch only ever costs a query;
 * it never lets a seller through.
 *
 * Under session_replication_role = replica no trigger fires: neither the
 * guard nor this check.  The earnings functions count their own writes as
 * seen, and before each write statement check the seller in full when a
 * write of this transaction went unseen since the seller's facts started
 * (SellerCheckWriting), as the engine does for orders.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "milestones.h"
#include "earnings.h"

PG_FUNCTION_INFO_V1(milestones_check_seller);

const char *const SellerAccountNames[] = {
	"pending", "available", "withdrawing", "withdrawn", "earnings", NULL
};
const char *const SellerKindNames[] = {
	"earning", "clearance", "withdrawal", "withdrawal_succeeded", "withdrawal_failed", NULL
};

/* A seller's balance in one currency: the unit the check judges. */
typedef struct SellerKey
{
	int64		seller_id;
	char		currency[8];	/* an ISO 4217 code, NUL-padded */
} SellerKey;

/*
 * Sellers touched by the current transaction.  Lives in
 * TopTransactionContext and is forgotten at transaction end.
 */
typedef struct DirtySeller
{
	SellerKey	key;			/* hash key */
	bool		checked;		/* checked since the last write */
	bool		updated;		/* a row was UPDATEd */
	bool		tainted;		/* a write no function declared, or a rollback */
	SubTransactionId subid;		/* the (sub)transaction that last changed its facts */
	int			nobserved;
	int			ndeclared;
	int			maxobserved;
	int			maxdeclared;
	SellerFact *observed;		/* what the guard trigger allowed */
	SellerFact *declared;		/* what the earnings functions say they wrote */
	RowBalance	base;			/* the row balance the facts start from */
	RowBalance	at_check;		/* the row balance when last checked */
	CommandId	check_cid;		/* the command in which it was last checked */
} DirtySeller;

static void ForgetFacts(DirtySeller *entry);
static void CheckBeforeReplicaWrite(DirtySeller *entry);

/*
 * The tables of the seller facts, by SellerRowTable: their row balance
 * (rowbalance.c) says whether the guard saw every row this transaction
 * wrote to them.  A database at 1.0 or 1.1 has none of them (and no
 * trigger that calls this file).
 */
static const char *const SellerRelNames[SROW_NTABLES] = {
	"seller_accounts", "seller_ledger", "seller_earnings", "seller_withdrawals"
};
static RowSet SellerRows = ROWSET(SellerRelNames, SROW_NTABLES, SROW_NTABLES, 0);

static HTAB *dirty_sellers = NULL;
static SPIPlanPtr check_plan = NULL;
static int	writing = 0;		/* inside an earnings function's write statement */
static bool writing_replica = false;	/* it started under replica ... */
static RowBalance writing_before;	/* ... and the row balance was this */
static bool callbacks_registered = false;

/* SellerXactCallback forgets the touched sellers when the transaction ends. */
static void
SellerXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			dirty_sellers = NULL;
			writing = 0;
			break;
		default:
			break;
	}
}

/*
 * SellerSubXactCallback: when a subtransaction aborts, the rows it wrote
 * are gone but their facts are still listed, and a seller it checked
 * keeps "checked" although PostgreSQL un-fires the deferred events fired
 * inside it.  So every seller is unchecked (its events fire again at
 * commit), and a seller whose facts changed inside the aborted
 * subtransaction (or its children: their ids are larger) is tainted and
 * gets the full check; the others keep their facts, which describe rows
 * of the parent that are still there.  An earnings write it interrupted
 * is over.
 */
static void
SellerSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	HASH_SEQ_STATUS status;
	DirtySeller *entry;

	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	writing = 0;
	if (dirty_sellers == NULL)
		return;
	hash_seq_init(&status, dirty_sellers);
	while ((entry = (DirtySeller *) hash_seq_search(&status)) != NULL)
	{
		entry->checked = false;
		if (entry->subid >= mySubid)
		{
			entry->tainted = true;
			ForgetFacts(entry);
		}
	}
}

/*
 * RegisterCallbacks registers the transaction callbacks on the first use
 * of seller facts in this backend (a database at 1.0 or 1.1 never pays
 * for them).
 */
static void
RegisterCallbacks(void)
{
	if (callbacks_registered)
		return;
	RegisterXactCallback(SellerXactCallback, NULL);
	RegisterSubXactCallback(SellerSubXactCallback, NULL);
	callbacks_registered = true;
}

/* SellerFactMake builds a fact (see earnings.h for what each field holds). */
SellerFact
SellerFactMake(SellerFactTable table, bool insert, int from, int to, int kind, int account,
			   int64 id, int64 ref, int64 cents)
{
	SellerFact	f;

	memset(&f, 0, sizeof(f));
	f.table = (int8) table;
	f.insert = insert ? 1 : 0;
	f.from = (int8) from;
	f.to = (int8) to;
	f.kind = (int8) kind;
	f.account = (int8) account;
	f.id = id;
	f.ref = ref;
	f.cents = cents;
	return f;
}

/*
 * MakeKey builds the hash key of a seller and currency; false when the
 * currency cannot be a key (longer than an ISO code: the row's foreign
 * key refuses it anyway).
 */
static bool
MakeKey(SellerKey *key, int64 seller_id, const char *currency)
{
	memset(key, 0, sizeof(*key));
	key->seller_id = seller_id;
	if (currency == NULL || strlen(currency) >= sizeof(key->currency))
		return false;
	strlcpy(key->currency, currency, sizeof(key->currency));
	return true;
}

/* GetEntry finds or makes the touched-seller entry of a seller and currency. */
static DirtySeller *
GetEntry(int64 seller_id, const char *currency)
{
	SellerKey	key;
	DirtySeller *entry;
	bool		found;
	bool		usable = MakeKey(&key, seller_id, currency);

	RegisterCallbacks();
	if (dirty_sellers == NULL)
	{
		HASHCTL		ctl;

		MemSet(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(SellerKey);
		ctl.entrysize = sizeof(DirtySeller);
		ctl.hcxt = TopTransactionContext;
		dirty_sellers = hash_create("milestones dirty sellers", 64, &ctl,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	entry = (DirtySeller *) hash_search(dirty_sellers, &key, HASH_ENTER, &found);
	if (!found)
	{
		entry->checked = false;
		entry->updated = false;
		entry->tainted = false;
		entry->nobserved = entry->ndeclared = 0;
		entry->maxobserved = entry->maxdeclared = 0;
		entry->observed = entry->declared = NULL;
		/* the facts start at the transaction's start, where all is seen */
		RowBalanceStart(&entry->base);
		entry->at_check = entry->base;
		entry->check_cid = InvalidCommandId;
	}
	if (!usable)
		entry->tainted = true;
	entry->subid = GetCurrentSubTransactionId();
	return entry;
}

/* AppendFact adds a fact to a growing array in TopTransactionContext. */
static void
AppendFact(SellerFact **array, int *n, int *max, const SellerFact *fact)
{
	if (*n >= *max)
	{
		int			newmax = *max > 0 ? *max * 2 : 8;

		if (*array == NULL)
			*array = MemoryContextAlloc(TopTransactionContext, newmax * sizeof(SellerFact));
		else
			*array = repalloc(*array, newmax * sizeof(SellerFact));
		*max = newmax;
	}
	(*array)[(*n)++] = *fact;
}

/* ForgetFacts drops a seller's facts (a tainted seller keeps none). */
static void
ForgetFacts(DirtySeller *entry)
{
	if (entry->observed != NULL)
		pfree(entry->observed);
	if (entry->declared != NULL)
		pfree(entry->declared);
	entry->observed = entry->declared = NULL;
	entry->nobserved = entry->ndeclared = 0;
	entry->maxobserved = entry->maxdeclared = 0;
}

/*
 * SellerCheckWriting marks the start (on) and end of an earnings
 * function's write statement for a seller and currency: only the facts the
 * guard observes inside one can match a declaration.  An error ends the
 * statement without the end mark; the (sub)transaction abort resets it.
 *
 * Under session_replication_role = replica no trigger fires, so there
 * will be no commit check: before the statement the seller is checked in
 * full when a write of this transaction went unseen since its facts
 * started, and the statement's own rows count as seen (the function made
 * them) and are no fact (a later commit check of the seller is full).
 */
void
SellerCheckWriting(bool on, int64 seller_id, const char *currency)
{
	RegisterCallbacks();
	if (on)
	{
		if (writing == 0)
		{
			writing_replica = (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA);
			if (writing_replica)
			{
				CheckBeforeReplicaWrite(GetEntry(seller_id, currency));
				RowBalanceNow(&SellerRows, &writing_before);
			}
		}
		writing++;
	}
	else if (writing > 0)
	{
		writing--;
		if (writing == 0 && writing_replica)
			RowSetSeeSince(&SellerRows, &writing_before);
	}
}

/*
 * SellerCheckSeen counts a row of table the guard allowed (milestones_guard_seller),
 * for the row balance.
 */
void
SellerCheckSeen(SellerRowTable table)
{
	RowSetSee(&SellerRows, table);
}

/*
 * SellerCheckObserve records a row write the guard trigger allowed, so
 * that the seller's deferred check runs (again) at commit.  fact NULL: the
 * write moved nothing (a zero-balance account opened, a row updated to
 * itself).  A fact observed outside an earnings function's write can
 * never be declared: the seller is tainted at once, and keeps no facts.
 */
void
SellerCheckObserve(int64 seller_id, const char *currency, const SellerFact *fact, bool updated)
{
	DirtySeller *entry = GetEntry(seller_id, currency);

	entry->checked = false;
	entry->updated = entry->updated || updated;
	if (fact == NULL)
		return;
	if (writing == 0 && !entry->tainted)
	{
		entry->tainted = true;
		ForgetFacts(entry);
	}
	if (!entry->tainted)
		AppendFact(&entry->observed, &entry->nobserved, &entry->maxobserved, fact);
}

/*
 * SellerCheckTaint records a write that no fact can describe (an amount
 * that is not whole cents: a column the DBA changed): the full check runs.
 */
void
SellerCheckTaint(int64 seller_id, const char *currency)
{
	DirtySeller *entry = GetEntry(seller_id, currency);

	entry->checked = false;
	entry->tainted = true;
	ForgetFacts(entry);
}

/*
 * SellerCheckDeclare records a row write an earnings function made.  Under
 * session_replication_role = replica no guard saw it: the seller's facts
 * can no longer match, and a later check of it in this transaction is the
 * full one.
 */
void
SellerCheckDeclare(int64 seller_id, const char *currency, const SellerFact *fact)
{
	DirtySeller *entry = GetEntry(seller_id, currency);

	if (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA && !entry->tainted)
	{
		entry->tainted = true;
		ForgetFacts(entry);
	}
	if (!entry->tainted)
		AppendFact(&entry->declared, &entry->ndeclared, &entry->maxdeclared, fact);
}

/* CompareFacts orders facts field by field (qsort comparator); legs of one txn sort together. */
static int
CompareFacts(const void *a, const void *b)
{
	const SellerFact *x = (const SellerFact *) a;
	const SellerFact *y = (const SellerFact *) b;

#define CMP_FIELD(f) if (x->f != y->f) return x->f < y->f ? -1 : 1
	CMP_FIELD(table);
	CMP_FIELD(id);
	CMP_FIELD(insert);
	CMP_FIELD(from);
	CMP_FIELD(to);
	CMP_FIELD(kind);
	CMP_FIELD(account);
	CMP_FIELD(ref);
	CMP_FIELD(cents);
#undef CMP_FIELD
	return 0;
}

/*
 * FactsVouch says whether the seller's writes in this transaction are
 * exactly the ones the earnings functions declared, every journal
 * transaction among them balances, and every balance column moved by what
 * the journal's legs on it add up to: then the accounts still equal the
 * journal and the invariants hold without reading the seller.
 */
static bool
FactsVouch(DirtySeller *entry)
{
	int64		legs[SACC_BALANCES + 1];
	int64		moved[SACC_BALANCES];
	int			i;
	int			j;

	if (entry->tainted || entry->nobserved != entry->ndeclared)
		return false;
	if (entry->nobserved == 0)
		return true;			/* nothing moved */
	qsort(entry->observed, entry->nobserved, sizeof(SellerFact), CompareFacts);
	qsort(entry->declared, entry->ndeclared, sizeof(SellerFact), CompareFacts);
	for (i = 0; i < entry->nobserved; i++)
		if (CompareFacts(&entry->observed[i], &entry->declared[i]) != 0)
			return false;

	memset(legs, 0, sizeof(legs));
	memset(moved, 0, sizeof(moved));
	for (i = 0; i < entry->nobserved; i = j)
	{
		SellerFact *f = &entry->observed[i];
		int64		sum = 0;

		for (j = i; j < entry->nobserved &&
			 entry->observed[j].table == f->table && entry->observed[j].id == f->id; j++)
		{
			SellerFact *g = &entry->observed[j];

			if (g->table == SFACT_LEG)
			{
				if (g->account < 0 || g->account > SACC_EARNINGS)
					return false;
				sum += g->cents;
				legs[g->account] += g->cents;
			}
			else if (g->table == SFACT_ACCOUNT)
			{
				if (g->account < 0 || g->account >= SACC_BALANCES)
					return false;
				moved[g->account] += g->cents;
			}
		}
		if (f->table == SFACT_LEG && sum != 0)
			return false;
	}
	for (i = 0; i < SACC_BALANCES; i++)
		if (legs[i] != moved[i])
			return false;
	return true;
}

/* A seller to check in full, and whether any of its rows was UPDATEd. */
typedef struct CheckSeller
{
	int64		seller_id;
	bool		updated;
} CheckSeller;

/* CompareCheckSellers orders by seller (qsort comparator). */
static int
CompareCheckSellers(const void *a, const void *b)
{
	int64		x = ((const CheckSeller *) a)->seller_id;
	int64		y = ((const CheckSeller *) b)->seller_id;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * FullCheck runs milestones._seller_problems() once for the given sellers
 * (a seller whose rows were only INSERTed and who has no journal yet is
 * left out, see the header) and raises their problems as one error.
 */
static void
FullCheck(CheckSeller *sellers, int n, Oid owner)
{
	Datum	   *ids;
	Datum	   *flags;
	Datum		values[2];
	int			ret;
	int			m = 0;
	int			i;
	Oid			save_userid;
	int			save_sec_context;

	qsort(sellers, n, sizeof(CheckSeller), CompareCheckSellers);
	ids = palloc(sizeof(Datum) * Max(n, 1));
	flags = palloc(sizeof(Datum) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		if (m > 0 && DatumGetInt64(ids[m - 1]) == sellers[i].seller_id)
		{
			flags[m - 1] = BoolGetDatum(DatumGetBool(flags[m - 1]) || sellers[i].updated);
			continue;
		}
		ids[m] = Int64GetDatum(sellers[i].seller_id);
		flags[m] = BoolGetDatum(sellers[i].updated);
		m++;
	}

	/*
	 * Run the check as the extension owner: it fires at COMMIT, outside the
	 * API's SECURITY DEFINER functions, as a role that may not read the
	 * tables (check.c does the same).  An error restores the user with the
	 * transaction abort.
	 */
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "milestones guard: SPI_connect failed");
	if (check_plan == NULL)
	{
		Oid			argtypes[2] = {INT8ARRAYOID, BOOLARRAYOID};
		SPIPlanPtr	plan;

		plan = SPI_prepare("SELECT p.seller_id, p.problem FROM milestones._seller_problems(ARRAY("
						   "SELECT u.s FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS u(s, upd)"
						   " WHERE u.upd OR EXISTS (SELECT FROM milestones.seller_ledger l"
						   " WHERE l.seller_id OPERATOR(pg_catalog.=) u.s))) p"
						   " ORDER BY p.seller_id, p.problem",
						   2, argtypes);
		if (plan == NULL)
			elog(ERROR, "milestones guard: SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "milestones guard: SPI_keepplan failed");
		check_plan = plan;
	}
	values[0] = PointerGetDatum(construct_array(ids, m, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
												TYPALIGN_DOUBLE));
	values[1] = PointerGetDatum(construct_array(flags, m, BOOLOID, sizeof(bool), true, TYPALIGN_CHAR));

	/*
	 * Not read-only: the check must see the rows written by the statement
	 * that fired it (see check.c's FullCheck).
	 */
	ret = SPI_execute_plan(check_plan, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "milestones guard: seller check failed: %s", SPI_result_code_string(ret));
	if (SPI_processed > 0)
	{
		StringInfoData detail;
		uint64		r;
		int64		first = 0;
		int64		previous = 0;
		int			nsellers = 0;

		initStringInfo(&detail);
		for (r = 0; r < SPI_processed; r++)
		{
			bool		isnull;
			int64		seller = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r],
															 SPI_tuptable->tupdesc, 1, &isnull));
			char	   *problem = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2);

			if (r == 0 || seller != previous)
				nsellers++;		/* the rows come ordered by seller */
			if (r == 0)
				first = seller;
			previous = seller;
			if (r > 0)
				appendStringInfoString(&detail, "; ");
			appendStringInfo(&detail, "seller " INT64_FORMAT ": %s", seller,
							 problem ? problem : "(unknown)");
		}
		if (nsellers == 1)
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("seller " INT64_FORMAT " would break the milestones invariants", first),
					 errdetail("%s.", detail.data),
					 errhint("Change seller balances through the milestones API functions; they keep these rules.")));
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("%d sellers would break the milestones invariants", nsellers),
				 errdetail("%s.", detail.data),
				 errhint("Change seller balances through the milestones API functions; they keep these rules.")));
	}
	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

/* MarkChecked marks a seller checked as of now (row balance b). */
static void
MarkChecked(DirtySeller *entry, const RowBalance *b)
{
	entry->checked = true;
	entry->at_check = *b;
	entry->check_cid = GetCurrentCommandId(false);
}

/*
 * StillChecked says whether a seller is checked: since its last check the
 * guard saw no write of it (that unchecks it), and no write went unseen
 * (the row balance is as it was then).  Within one command nothing can be
 * written between two events, so the balance is only read (into now, once:
 * have_now) when the command changed.
 */
static bool
StillChecked(DirtySeller *entry, RowBalance *now, bool *have_now)
{
	if (!entry->checked)
		return false;
	if (entry->check_cid == GetCurrentCommandId(false))
		return true;
	if (!*have_now)
		RowBalanceNow(&SellerRows, now);
	*have_now = true;
	if (RowBalanceSame(now, &entry->at_check))
	{
		entry->check_cid = GetCurrentCommandId(false);
		return true;
	}
	entry->checked = false;
	return false;
}

/*
 * Vouched says whether the seller's facts vouch for it (FactsVouch) and the
 * guard saw every write since they started (the row balance is the one
 * they start from); reads the balance into now once (have_now).
 */
static bool
Vouched(DirtySeller *entry, RowBalance *now, bool *have_now)
{
	if (!FactsVouch(entry))
		return false;
	if (!*have_now)
		RowBalanceNow(&SellerRows, now);
	*have_now = true;
	return RowBalanceSame(now, &entry->base);
}

/*
 * CheckBeforeReplicaWrite: under session_replication_role = replica, an
 * earnings function is about to write the seller and no check will fire
 * at commit.  When a write of this transaction went unseen since the
 * seller's facts started, the seller is checked in full now, as the
 * current user (the function's owner), before the write; that state is
 * its new start.
 */
static void
CheckBeforeReplicaWrite(DirtySeller *entry)
{
	RowBalance	now;
	CheckSeller one;

	RowBalanceNow(&SellerRows, &now);
	if (RowBalanceSame(&now, &entry->base))
		return;
	one.seller_id = entry->key.seller_id;
	one.updated = true;
	FullCheck(&one, 1, GetUserId());
	entry->base = now;
}

/*
 * SellerCheckFire is the body of the deferred constraint trigger for one
 * row event of a seller and currency: the first event since the seller's
 * last write decides, the others find it checked.  When a seller needs
 * the full check, every touched seller that needs it is checked in the
 * same query (a restore's journal touches a million at once).
 */
static void
SellerCheckFire(FunctionCallInfo fcinfo, int64 seller_id, const char *currency, bool is_update)
{
	SellerKey	key;
	DirtySeller *entry = NULL;
	HASH_SEQ_STATUS status;
	CheckSeller *sellers;
	RowBalance	now;
	bool		have_now = false;
	int			n = 0;
	DirtySeller *e;

	if (dirty_sellers != NULL && MakeKey(&key, seller_id, currency))
		entry = (DirtySeller *) hash_search(dirty_sellers, &key, HASH_FIND, NULL);
	if (entry != NULL && StillChecked(entry, &now, &have_now))
		return;					/* already checked since its last write */
	if (entry != NULL && Vouched(entry, &now, &have_now))
	{
		MarkChecked(entry, &now);
		return;
	}
	if (entry == NULL)
	{
		/* no guard saw the write: nothing of it can be vouched for */
		entry = GetEntry(seller_id, currency);
		entry->tainted = true;
		entry->updated = is_update;
	}

	sellers = palloc(sizeof(CheckSeller) * hash_get_num_entries(dirty_sellers));
	hash_seq_init(&status, dirty_sellers);
	while ((e = (DirtySeller *) hash_seq_search(&status)) != NULL)
	{
		if (StillChecked(e, &now, &have_now))
			continue;
		if (Vouched(e, &now, &have_now))
		{
			MarkChecked(e, &now);
			continue;
		}
		sellers[n].seller_id = e->key.seller_id;
		sellers[n].updated = e->updated;
		n++;
	}
	FullCheck(sellers, n, CheckFunctionOwner(fcinfo->flinfo->fn_oid));

	/* Sound sellers: later API writes in this transaction start here. */
	RowBalanceNow(&SellerRows, &now);
	hash_seq_init(&status, dirty_sellers);
	while ((e = (DirtySeller *) hash_seq_search(&status)) != NULL)
	{
		if (e->checked)
			continue;
		ForgetFacts(e);
		e->tainted = false;
		e->base = now;
		MarkChecked(e, &now);
		e->subid = GetCurrentSubTransactionId();
	}
	pfree(sellers);
}

/*
 * milestones_check_seller is the deferred constraint trigger (AFTER ROW)
 * on seller_accounts, seller_ledger, seller_earnings and
 * seller_withdrawals: at commit it checks each touched seller and
 * currency once.
 */
Datum
milestones_check_seller(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata;
	HeapTuple	tuple;
	TupleDesc	desc;
	int			seller_col;
	int			currency_col;
	bool		isnull;
	Datum		d;
	int64		seller_id;
	char	   *currency;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"milestones_check_seller\" was not called by trigger manager")));
	trigdata = (TriggerData *) fcinfo->context;
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"milestones_check_seller\" must be fired AFTER ... FOR EACH ROW")));

	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;
	desc = RelationGetDescr(trigdata->tg_relation);
	seller_col = SPI_fnumber(desc, "seller_id");
	currency_col = SPI_fnumber(desc, "currency");
	if (seller_col <= 0 || currency_col <= 0 ||
		TupleDescAttr(desc, seller_col - 1)->atttypid != INT8OID ||
		TupleDescAttr(desc, currency_col - 1)->atttypid != TEXTOID)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"milestones_check_seller\" needs the columns seller_id bigint and currency text"),
				 errdetail("It was fired on table %s.", RelationGetRelationName(trigdata->tg_relation))));
	d = heap_getattr(tuple, seller_col, desc, &isnull);
	seller_id = isnull ? 0 : DatumGetInt64(d);
	d = heap_getattr(tuple, currency_col, desc, &isnull);
	currency = isnull ? NULL : TextDatumGetCString(d);
	SellerCheckFire(fcinfo, seller_id, currency, TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event));
	return PointerGetDatum(NULL);
}
