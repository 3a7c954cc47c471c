-- test/upgrade/catalog.sql - every member object of the milestones extension,
-- as sorted text lines "object | aspect | value", for comparing an upgraded
-- database with a fresh install (pg_dump writes only CREATE EXTENSION for an
-- extension's members, so it cannot show this).
--
-- Covered: functions and procedures (full definition: language, volatility,
-- SECURITY DEFINER, proconfig, body), owners, privileges as sorted
-- aclexplode() rows (grant order differs between an upgrade and a fresh
-- install), comments; tables' columns, defaults, constraints, indexes,
-- triggers, privileges; views' definitions; sequences' parameters; types;
-- the extension's schema; pg_extension_config_dump registrations; and any
-- other member kind through pg_identify_object.
-- Usage: psql -XAt -v ext=milestones -f catalog.sql
\set ON_ERROR_STOP 1
\pset footer off
WITH ext AS (
    SELECT e.oid, e.extname, e.extnamespace, e.extconfig, e.extcondition
      FROM pg_catalog.pg_extension e WHERE e.extname = :'ext'
), members AS (
    SELECT d.classid, d.objid
      FROM pg_catalog.pg_depend d, ext
     WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass
       AND d.refobjid = ext.oid AND d.deptype = 'e'
), acl_rows AS (
    -- privileges of any object with an ACL, one row per (grantee, privilege)
    SELECT objkind, objname, pg_catalog.string_agg(line, E'\n' ORDER BY line) AS acl
      FROM (
        SELECT 'acl' AS objkind, x.objname,
               pg_catalog.format('%s %s%s (by %s)',
                   CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
                   a.privilege_type, CASE WHEN a.is_grantable THEN ' WITH GRANT' ELSE '' END,
                   a.grantor::regrole::text) AS line
          FROM (
            SELECT p.oid::regprocedure::text AS objname, p.proacl AS acl, p.proowner AS owner
              FROM pg_catalog.pg_proc p JOIN members m ON m.classid = 'pg_catalog.pg_proc'::regclass AND m.objid = p.oid
            UNION ALL
            SELECT c.oid::regclass::text, c.relacl, c.relowner
              FROM pg_catalog.pg_class c JOIN members m ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
            UNION ALL
            SELECT 'schema ' || n.nspname, n.nspacl, n.nspowner
              FROM pg_catalog.pg_namespace n JOIN ext ON n.oid = ext.extnamespace
          ) x
          CROSS JOIN LATERAL pg_catalog.aclexplode(COALESCE(x.acl, pg_catalog.acldefault('f', x.owner))) a
      ) y GROUP BY objkind, objname
)
SELECT line FROM (
    -- functions and procedures
    SELECT pg_catalog.format('function %s | definition | %s', p.oid::regprocedure,
                             pg_catalog.pg_get_functiondef(p.oid)) AS line
      FROM pg_catalog.pg_proc p JOIN members m ON m.classid = 'pg_catalog.pg_proc'::regclass AND m.objid = p.oid
    UNION ALL
    SELECT pg_catalog.format('function %s | owner %s, kind %s, strict %s, parallel %s, cost %s, rows %s, returns %s, args %s',
                             p.oid::regprocedure, p.proowner::regrole, p.prokind, p.proisstrict, p.proparallel,
                             p.procost, p.prorows, pg_catalog.format_type(p.prorettype, NULL),
                             pg_catalog.pg_get_function_arguments(p.oid))
      FROM pg_catalog.pg_proc p JOIN members m ON m.classid = 'pg_catalog.pg_proc'::regclass AND m.objid = p.oid
    UNION ALL
    SELECT pg_catalog.format('function %s | comment | %s', p.oid::regprocedure,
                             pg_catalog.obj_description(p.oid, 'pg_proc'))
      FROM pg_catalog.pg_proc p JOIN members m ON m.classid = 'pg_catalog.pg_proc'::regclass AND m.objid = p.oid
    UNION ALL
    -- relations: kind, owner, options, comment
    SELECT pg_catalog.format('relation %s | kind %s, owner %s, persistence %s, options %s, rls %s | %s',
                             c.oid::regclass, c.relkind, c.relowner::regrole, c.relpersistence, c.reloptions,
                             c.relrowsecurity, pg_catalog.obj_description(c.oid, 'pg_class'))
      FROM pg_catalog.pg_class c JOIN members m ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
    UNION ALL
    -- columns in order, with type, NOT NULL, default, comment
    SELECT pg_catalog.format('relation %s | column %s | %s %s%s%s | %s', c.oid::regclass,
                             pg_catalog.row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), a.attname,
                             pg_catalog.format_type(a.atttypid, a.atttypmod),
                             CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
                             COALESCE(' DEFAULT ' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), ''),
                             pg_catalog.col_description(c.oid, a.attnum))
      FROM pg_catalog.pg_class c JOIN members m ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
      JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
    UNION ALL
    SELECT pg_catalog.format('relation %s | constraint %s | %s | deferrable %s, deferred %s, validated %s | comment %s',
                             c.oid::regclass, k.conname, pg_catalog.pg_get_constraintdef(k.oid),
                             k.condeferrable, k.condeferred, k.convalidated,
                             pg_catalog.obj_description(k.oid, 'pg_constraint'))
      FROM pg_catalog.pg_class c JOIN members m ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
      JOIN pg_catalog.pg_constraint k ON k.conrelid = c.oid
    UNION ALL
    SELECT pg_catalog.format('relation %s | index | %s', c.oid::regclass, pg_catalog.pg_get_indexdef(i.indexrelid))
      FROM pg_catalog.pg_class c JOIN members m ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
      JOIN pg_catalog.pg_index i ON i.indrelid = c.oid
    UNION ALL
    SELECT pg_catalog.format('relation %s | trigger | %s | enabled %s', c.oid::regclass,
                             pg_catalog.pg_get_triggerdef(t.oid), t.tgenabled)
      FROM pg_catalog.pg_class c JOIN members m ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
      JOIN pg_catalog.pg_trigger t ON t.tgrelid = c.oid AND NOT t.tgisinternal
    UNION ALL
    SELECT pg_catalog.format('relation %s | view | %s', c.oid::regclass, pg_catalog.pg_get_viewdef(c.oid))
      FROM pg_catalog.pg_class c JOIN members m ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
     WHERE c.relkind IN ('v', 'm')
    UNION ALL
    SELECT pg_catalog.format('relation %s | sequence | %s start %s inc %s min %s max %s cache %s cycle %s',
                             c.oid::regclass, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
                             s.seqcache, s.seqcycle)
      FROM pg_catalog.pg_class c JOIN members m ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
      JOIN pg_catalog.pg_sequence s ON s.seqrelid = c.oid
    UNION ALL
    SELECT pg_catalog.format('relation %s | policy %s | %s %s', c.oid::regclass, pol.polname, pol.polcmd,
                             pg_catalog.pg_get_expr(pol.polqual, pol.polrelid))
      FROM pg_catalog.pg_class c JOIN members m ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
      JOIN pg_catalog.pg_policy pol ON pol.polrelid = c.oid
    UNION ALL
    -- types created on their own (composite, enum, domain)
    SELECT pg_catalog.format('type %s | %s, owner %s | %s', t.oid::regtype, t.typtype, t.typowner::regrole,
                             (SELECT pg_catalog.string_agg(a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
                                FROM pg_catalog.pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped))
      FROM pg_catalog.pg_type t JOIN members m ON m.classid = 'pg_catalog.pg_type'::regclass AND m.objid = t.oid
    UNION ALL
    -- anything else (casts, operators, event triggers, ...): its identity
    SELECT pg_catalog.format('object %s | %s', i.type, i.identity)
      FROM members m CROSS JOIN LATERAL pg_catalog.pg_identify_object(m.classid, m.objid, 0) i
     WHERE m.classid NOT IN ('pg_catalog.pg_proc'::regclass, 'pg_catalog.pg_class'::regclass, 'pg_catalog.pg_type'::regclass)
    UNION ALL
    -- privileges, sorted within each object
    SELECT pg_catalog.format('privileges %s | %s', r.objname, r.acl) FROM acl_rows r
    UNION ALL
    -- the schema and the pg_dump registrations
    SELECT pg_catalog.format('schema %s | owner %s | %s', n.nspname, n.nspowner::regrole,
                             pg_catalog.obj_description(n.oid, 'pg_namespace'))
      FROM pg_catalog.pg_namespace n JOIN ext ON n.oid = ext.extnamespace
    UNION ALL
    SELECT pg_catalog.format('config_dump %s | condition %s', c.cfg::regclass, pg_catalog.quote_literal(c.cond))
      FROM ext CROSS JOIN LATERAL ROWS FROM (pg_catalog.unnest(ext.extconfig), pg_catalog.unnest(ext.extcondition)) AS c(cfg, cond)
) all_lines
ORDER BY line COLLATE "C";
