/*
 * ddl_objects.c
 *		The tables a DDL command touched, read by the guard event trigger
 *		from PostgreSQL's own lists of the command's objects, in C.
 *
 * The event trigger runs after every CREATE, ALTER and DROP of the
 * database.  Asking these questions in SQL cost a planned query with four
 * unions per command (a fifth of the time of DDL on tables no rule
 * concerns); here they are a few catalog index probes.  The answers are the
 * same: the tables named by the command, by a policy, trigger or rewrite
 * rule it created or changed, and their inheritance parents and children.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/objectaddress.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_policy.h"
#include "catalog/pg_rewrite.h"
#include "catalog/pg_trigger.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/tuplestore.h"

#include "crmguard.h"

/* Columns of pg_event_trigger_ddl_commands() and pg_event_trigger_dropped_objects() */
#define DDL_COMMANDS_CLASSID		1
#define DDL_COMMANDS_OBJID			2
#define DROPPED_OBJID				2
#define DROPPED_OBJECT_TYPE			7
#define DROPPED_ADDRESS_NAMES		11

/*
 * Call one of the event trigger's set-returning functions (they answer
 * only inside an event trigger) and return its rows, materialised.
 */
static Tuplestorestate *
event_trigger_rows(Oid fn, TupleDesc *desc)
{
	FmgrInfo	flinfo;
	LOCAL_FCINFO(fcinfo, 0);
	ReturnSetInfo rsinfo;
	ExprContext *econtext = CreateStandaloneExprContext();

	fmgr_info(fn, &flinfo);
	memset(&rsinfo, 0, sizeof(rsinfo));
	rsinfo.type = T_ReturnSetInfo;
	rsinfo.econtext = econtext;
	rsinfo.allowedModes = SFRM_Materialize;
	rsinfo.returnMode = SFRM_ValuePerCall;
	InitFunctionCallInfoData(*fcinfo, &flinfo, 0, InvalidOid, NULL, (Node *) &rsinfo);
	(void) FunctionCallInvoke(fcinfo);
	if (rsinfo.returnMode != SFRM_Materialize || rsinfo.setResult == NULL)
		elog(ERROR, "could not read the objects of the DDL command");
	FreeExprContext(econtext, true);
	*desc = rsinfo.setDesc;
	return rsinfo.setResult;
}

/* The table of a policy, trigger or rewrite rule, or InvalidOid if it is gone */
static Oid
table_of(Oid catalog, AttrNumber oidcol, AttrNumber relcol, Oid objid)
{
	Relation	rel = table_open(catalog, AccessShareLock);
	HeapTuple	tup = get_catalog_object_by_oid(rel, oidcol, objid);
	Oid			relid = InvalidOid;

	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, relcol, RelationGetDescr(rel), &isnull);

		if (!isnull)
			relid = DatumGetObjectId(d);
	}
	table_close(rel, AccessShareLock);
	return relid;
}

/* relid's inheritance parents (up) or children (down), one level, from pg_inherits */
static List *
add_inheritance(List *relids, Oid relid, bool up)
{
	Relation	inherits = table_open(InheritsRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	ScanKeyInit(&key, up ? Anum_pg_inherits_inhrelid : Anum_pg_inherits_inhparent,
				BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(inherits, up ? InheritsRelidSeqnoIndexId : InheritsParentIndexId,
							  true, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_inherits inh = (Form_pg_inherits) GETSTRUCT(tup);

		relids = list_append_unique_oid(relids, up ? inh->inhparent : inh->inhrelid);
	}
	systable_endscan(scan);
	table_close(inherits, AccessShareLock);
	return relids;
}

/* named, with each one's inheritance parents and children added */
static List *
with_inheritance(List *named)
{
	List	   *relids = list_copy(named);
	ListCell   *lc;

	foreach(lc, named)
	{
		relids = add_inheritance(relids, lfirst_oid(lc), true);
		relids = add_inheritance(relids, lfirst_oid(lc), false);
	}
	return relids;
}

/*
 * At ddl_command_end: the relations the command created or changed, those
 * whose policy, trigger or rewrite rule it created or changed, and the
 * inheritance parents and children of all these, as the catalogs are after
 * the command.
 */
List *
cg_ddl_touched_relations(void)
{
	TupleDesc	desc;
	Tuplestorestate *rows;
	TupleTableSlot *slot;
	List	   *named = NIL;

	/* the command's own catalog changes are visible: PostgreSQL made them so before the trigger */
	rows = event_trigger_rows(F_PG_EVENT_TRIGGER_DDL_COMMANDS, &desc);
	slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	while (tuplestore_gettupleslot(rows, true, false, slot))
	{
		bool		isnull;
		Oid			classid = DatumGetObjectId(slot_getattr(slot, DDL_COMMANDS_CLASSID, &isnull));
		Oid			objid = DatumGetObjectId(slot_getattr(slot, DDL_COMMANDS_OBJID, &isnull));
		Oid			relid = InvalidOid;

		if (isnull)
			continue;
		if (classid == RelationRelationId)
			relid = objid;
		else if (classid == PolicyRelationId)
			relid = table_of(PolicyRelationId, Anum_pg_policy_oid, Anum_pg_policy_polrelid, objid);
		else if (classid == TriggerRelationId)
			relid = table_of(TriggerRelationId, Anum_pg_trigger_oid, Anum_pg_trigger_tgrelid, objid);
		else if (classid == RewriteRelationId)
			relid = table_of(RewriteRelationId, Anum_pg_rewrite_oid, Anum_pg_rewrite_ev_class, objid);
		if (OidIsValid(relid))
			named = list_append_unique_oid(named, relid);
	}
	ExecDropSingleTupleTableSlot(slot);
	tuplestore_end(rows);
	return with_inheritance(named);
}

/*
 * At sql_drop: the tables the command dropped (*dropped_tables), and the
 * tables that lost a trigger, a policy or a column and still exist
 * (returned).
 */
List *
cg_drop_touched_relations(List **dropped_tables)
{
	TupleDesc	desc;
	Tuplestorestate *rows;
	TupleTableSlot *slot;
	List	   *touched = NIL;

	*dropped_tables = NIL;
	rows = event_trigger_rows(F_PG_EVENT_TRIGGER_DROPPED_OBJECTS, &desc);
	slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	while (tuplestore_gettupleslot(rows, true, false, slot))
	{
		bool		isnull;
		Datum		type_datum = slot_getattr(slot, DROPPED_OBJECT_TYPE, &isnull);
		char	   *type = isnull ? "" : TextDatumGetCString(type_datum);

		if (strcmp(type, "table") == 0)
		{
			Datum		objid = slot_getattr(slot, DROPPED_OBJID, &isnull);

			if (!isnull)
				*dropped_tables = lappend_oid(*dropped_tables, DatumGetObjectId(objid));
		}
		else if (strcmp(type, "trigger") == 0 || strcmp(type, "policy") == 0 ||
				 strcmp(type, "table column") == 0)
		{
			/* address_names: {schema, table, the object's own name} */
			Datum		names = slot_getattr(slot, DROPPED_ADDRESS_NAMES, &isnull);
			Datum	   *elems;
			bool	   *elem_nulls;
			int			n;
			Oid			nsp;
			Oid			relid;

			if (isnull)
				continue;
			deconstruct_array(DatumGetArrayTypeP(names), TEXTOID, -1, false, TYPALIGN_INT,
							  &elems, &elem_nulls, &n);
			if (n < 2 || elem_nulls[0] || elem_nulls[1])
				continue;
			/* the session's own temporary schema is named "pg_temp" there */
			nsp = LookupNamespaceNoError(TextDatumGetCString(elems[0]));
			relid = OidIsValid(nsp) ? get_relname_relid(TextDatumGetCString(elems[1]), nsp) : InvalidOid;
			if (OidIsValid(relid))
				touched = list_append_unique_oid(touched, relid);
		}
	}
	ExecDropSingleTupleTableSlot(slot);
	tuplestore_end(rows);
	return touched;
}
