-- The catalog reads behind gateway/store/schema.py: the schema the migrations make, in a
-- stable text that does not depend on the server's version or on pg_dump. Partitions are
-- left out (they are made as time passes); their parent tables are in.

-- name: schema_tables
SELECT c.oid, c.relname AS name, c.relkind = 'p' AS partitioned,
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partition_key
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND c.relname <> 'schema_migrations'
ORDER BY c.relname;

-- name: schema_columns
-- $1 table oid
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull AS not_null, pg_get_expr(d.adbin, d.adrelid) AS default_value,
       CASE a.attidentity WHEN 'a' THEN 'a' WHEN 'd' THEN 'd' END AS identity,
       a.attgenerated = 's' AS generated
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: schema_constraints
-- $1 table oid
SELECT conname AS name, pg_get_constraintdef(oid) AS definition
FROM pg_constraint WHERE conrelid = $1 AND contype <> 'n'
ORDER BY conname;

-- name: schema_indexes
-- $1 table oid: indexes that back no constraint
SELECT pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = $1
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid
                  AND k.conrelid = i.indrelid)
ORDER BY c.relname;

-- name: schema_functions
SELECT pg_get_functiondef(p.oid) AS definition
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = current_schema()
ORDER BY p.proname, pg_get_function_identity_arguments(p.oid);

-- name: schema_views
SELECT c.relname AS name, pg_get_viewdef(c.oid, true) AS definition
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind = 'v'
ORDER BY c.relname;
