/*-------------------------------------------------------------------------
 *
 * src/columns.c
 *		Finding a table's columns by name and its primary key: where the
 *		row rules (rowcheck.c), the direct reads (direct.c) and the relay's
 *		batch (relay_batch.c) read a row.
 *
 * Both read rows of the extension's tables by attribute number, which a
 * DBA's ALTER TABLE can move, rename, retype or drop.  A ColumnMap finds
 * each column by name once per backend, checks on every use that each is
 * still where it was (name, type, NOT NULL where asked), and finds them
 * again when not, so a row is never read as something else.
 *
 * The statements of the engine, payout() and the relay read their results
 * by position, and a kept plan is planned again after an ALTER TABLE: a
 * retyped column then arrives as its new type.  ColumnsCheckResult holds
 * such a result to the same ColumnSpecs before a value is read (a
 * comparison of type oids per column, and a null test per row where a
 * value is needed).
 *
 * Whoever cannot step aside refuses with ColumnRefuse's one error: 42703
 * for a column dropped or renamed, 42804 for another type (never a cast:
 * one could round money or cut an id), 22004 for a NULL where the engine
 * needs a value; the message names the table, the column and the type it
 * must have, the HINT how to restore it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/tupdesc.h"
#include "catalog/pg_am.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/rel.h"

#include "milestones.h"

/* ColumnFits says whether attribute att is column spec. */
static bool
ColumnFits(Form_pg_attribute att, const ColumnSpec *spec)
{
	return !att->attisdropped && att->atttypid == spec->type &&
		(!spec->notnull || att->attnotnull) &&
		strcmp(NameStr(att->attname), spec->name) == 0;
}

/*
 * ColumnMapFind makes map hold, for each of the ncolumns columns, its
 * 0-based attribute number in desc, the row type of key/keymod (a
 * relation's or a type's oid and typmod).  Returns -1 when every column is
 * there as specified, else the index of the first that is missing, of
 * another type, or nullable where it must be NOT NULL (map is then
 * invalid and found again next time).  An optional column that is missing
 * gets attnum -1 (the caller reads it as NULL); one that is there must fit.
 */
int
ColumnMapFind(ColumnMap *map, TupleDesc desc, Oid key, int32 keymod,
			  const ColumnSpec *columns, int ncolumns)
{
	int			c;

	Assert(ncolumns <= COLUMN_MAP_MAX);
	if (map->key == key && map->keymod == keymod && map->natts == desc->natts)
	{
		for (c = 0; c < ncolumns; c++)
			if (map->attnum[c] >= 0 &&
				!ColumnFits(TupleDescAttr(desc, map->attnum[c]), &columns[c]))
				break;
		if (c == ncolumns)
			return -1;
	}
	map->key = InvalidOid;
	for (c = 0; c < ncolumns; c++)
	{
		int			a;

		for (a = 0; a < desc->natts; a++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, a);

			if (!att->attisdropped && strcmp(NameStr(att->attname), columns[c].name) == 0)
				break;
		}
		if (a == desc->natts && columns[c].optional)
		{
			map->attnum[c] = -1;	/* absent: reads as NULL */
			continue;
		}
		if (a == desc->natts || !ColumnFits(TupleDescAttr(desc, a), &columns[c]))
			return c;
		map->attnum[c] = a;
	}
	map->key = key;
	map->keymod = keymod;
	map->natts = desc->natts;
	return -1;
}

/*
 * ColumnProblemOf says what is wrong, if anything, with column spec in
 * desc: missing (dropped or renamed), of another type, or nullable where
 * the spec needs NOT NULL.
 */
ColumnProblem
ColumnProblemOf(TupleDesc desc, const ColumnSpec *spec)
{
	int			a;

	for (a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);

		if (att->attisdropped || strcmp(NameStr(att->attname), spec->name) != 0)
			continue;
		if (att->atttypid != spec->type)
			return COLUMN_TYPE;
		if (spec->notnull && !att->attnotnull)
			return COLUMN_NULLABLE;
		return COLUMN_OK;
	}
	return COLUMN_MISSING;
}

/*
 * The declared types of the columns whose type has a modifier, for the
 * HINT that restores one (any other column's type is its type's name).
 */
static const struct
{
	const char *table;
	const char *column;
	const char *type;
}			declared_types[] =
{
	{"orders", "fee_rate", "numeric(6,5)"},
	{"order_milestones", "amount", "numeric(12,2)"},
	{"ledger_entries", "amount", "numeric(14,2)"},
	{"settings", "seller_fee_rate", "numeric(6,5)"},
	{"settings", "min_order_total", "numeric(12,2)"}
};

/* DeclaredType is the type spec's column has in the extension's script. */
static const char *
DeclaredType(const char *table, const ColumnSpec *spec)
{
	int			i;

	for (i = 0; i < (int) lengthof(declared_types); i++)
		if (strcmp(declared_types[i].table, table) == 0 &&
			strcmp(declared_types[i].column, spec->name) == 0)
			return declared_types[i].type;
	return format_type_be(spec->type);
}

/*
 * ColumnError raises the error of column spec of milestones.table:
 * problem says what is wrong; actual is the type it has (COLUMN_TYPE).
 */
static void pg_attribute_noreturn()
ColumnError(const char *table, const ColumnSpec *spec, ColumnProblem problem, Oid actual)
{
	const char *name = spec->name;
	const char *declared = DeclaredType(table, spec);

	switch (problem)
	{
		case COLUMN_MISSING:
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" of table milestones.%s does not exist", name, table),
					 errdetail("The milestones engine reads the column by its name, as type %s; it was dropped or renamed.",
							   declared),
					 errhint("Rename it back (ALTER TABLE milestones.%s RENAME COLUMN ... TO %s), or restore the table from a backup.",
							 table, quote_identifier(name))));
			break;
		case COLUMN_TYPE:
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column \"%s\" of table milestones.%s must have type %s", name, table, declared),
					 errdetail("It has type %s.  The milestones engine reads the column as %s and never converts it: a conversion could round money or cut an id.",
							   format_type_be(actual), declared),
					 errhint("Change it back: ALTER TABLE milestones.%s ALTER COLUMN %s TYPE %s USING %s::%s.",
							 table, quote_identifier(name), declared, quote_identifier(name), declared)));
			break;
		case COLUMN_NULLABLE:
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("column \"%s\" of table milestones.%s must be NOT NULL", name, table),
					 errdetail("The milestones engine reads the column without a null test."),
					 errhint("Restore the constraint: ALTER TABLE milestones.%s ALTER COLUMN %s SET NOT NULL.",
							 table, quote_identifier(name))));
			break;
		case COLUMN_NULL:
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("column \"%s\" of table milestones.%s holds a NULL", name, table),
					 errdetail("The milestones engine needs a value there; the column's NOT NULL constraint was dropped."),
					 errhint("Set the missing values, then restore the constraint: ALTER TABLE milestones.%s ALTER COLUMN %s SET NOT NULL.",
							 table, quote_identifier(name))));
			break;
		case COLUMN_OK:
			break;
	}
	elog(ERROR, "milestones: column \"%s\" of %s refused but as specified", name, table);
}

/*
 * ColumnRefuse refuses to read column spec of milestones.table, whose row
 * type desc does not have it as specified (missing, of another type, or
 * nullable where it must be NOT NULL).
 */
void
ColumnRefuse(const char *table, const ColumnSpec *spec, TupleDesc desc)
{
	ColumnProblem problem = ColumnProblemOf(desc, spec);
	Oid			actual = InvalidOid;
	int			a;

	for (a = 0; a < desc->natts; a++)
		if (!TupleDescAttr(desc, a)->attisdropped &&
			strcmp(NameStr(TupleDescAttr(desc, a)->attname), spec->name) == 0)
			actual = TupleDescAttr(desc, a)->atttypid;
	ColumnError(table, spec, problem, actual);
}

/*
 * ColumnMapRequire is ColumnMapFind for a reader that cannot step aside
 * (a trigger, a CHECK): a column that is not as specified is refused with
 * ColumnRefuse's error, naming milestones.table.
 */
void
ColumnMapRequire(ColumnMap *map, TupleDesc desc, Oid key, int32 keymod, const char *table,
				 const ColumnSpec *columns, int ncolumns)
{
	int			c = ColumnMapFind(map, desc, key, keymod, columns, ncolumns);

	if (c >= 0)
		ColumnRefuse(table, &columns[c], desc);
}

/*
 * ColumnsCheckResult checks the first nrows rows of a statement's result
 * before they are read: its columns first, first + 1, ... (1-based) read
 * columns[0], columns[1], ... of milestones.table, so each must have the
 * spec's type, and hold a value in every row where the spec says NOT
 * NULL.  A spec without a name (an expression) is not checked.
 */
void
ColumnsCheckResult(SPITupleTable *result, uint64 nrows, int first, const char *table,
				   const ColumnSpec *columns, int ncolumns)
{
	TupleDesc	desc = result->tupdesc;
	int			c;

	if (first < 1 || first - 1 + ncolumns > desc->natts)
		elog(ERROR, "milestones: a result of %d columns has no columns %d to %d",
			 desc->natts, first, first - 1 + ncolumns);
	for (c = 0; c < ncolumns; c++)
	{
		const ColumnSpec *spec = &columns[c];
		Oid			actual = TupleDescAttr(desc, first - 1 + c)->atttypid;
		uint64		r;

		if (spec->name == NULL)
			continue;
		if (actual != spec->type)
			ColumnError(table, spec, COLUMN_TYPE, actual);
		if (spec->notnull)
			for (r = 0; r < nrows; r++)
				if (heap_attisnull(result->vals[r], first + c, desc))
					ColumnError(table, spec, COLUMN_NULL, InvalidOid);
	}
}

/*
 * KeyIndexOpen opens rel's primary key (AccessShareLock) when its key
 * columns are exactly the given attributes (0-based) and it is a btree
 * whose first column has type keytype, so that a probe by key with that
 * type's equality finds what the statement would; NULL otherwise.
 */
Relation
KeyIndexOpen(Relation rel, int nkeys, const int *attnums, Oid keytype)
{
	Oid			indexoid = RelationGetPrimaryKeyIndex(rel);
	Relation	index;
	int			k;

	if (!OidIsValid(indexoid))
		return NULL;
	index = index_open(indexoid, AccessShareLock);
	if (index->rd_rel->relam != BTREE_AM_OID ||
		index->rd_index->indnkeyatts != nkeys ||
		TupleDescAttr(RelationGetDescr(index), 0)->atttypid != keytype)
	{
		index_close(index, AccessShareLock);
		return NULL;
	}
	for (k = 0; k < nkeys; k++)
		if (index->rd_index->indkey.values[k] != attnums[k] + 1)
		{
			index_close(index, AccessShareLock);
			return NULL;
		}
	return index;
}

/*
 * TableIsPlain says whether a statement would read just this table's rows,
 * as a direct read does: an ordinary table without row-level security and
 * without inheritance children.
 */
bool
TableIsPlain(Form_pg_class c)
{
	return c->relkind == RELKIND_RELATION && !c->relrowsecurity && !c->relhassubclass;
}
