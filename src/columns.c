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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/tupdesc.h"
#include "catalog/pg_am.h"
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
