-- The benchmark's own statements (the engine's live in durable/sql). Loaded by bench/sql.py.

-- name: database_exists
-- Whether database $1 exists.
select exists (select 1 from pg_database where datname = $1);

-- name: create_database_ddl
-- The DDL creating database $1 (identifier quoted by the server).
select format('create database %I', $1::text);

-- name: drop_database_ddl
-- The DDL dropping database $1 and its sessions.
select format('drop database if exists %I with (force)', $1::text);

-- name: server_version
-- The server's version string.
select version();

-- name: server_settings
-- The settings that decide commit and pick costs, as name and human-readable value (unit is '').
select name, current_setting(name) as setting, '' as unit
from pg_settings
where name = any ('{shared_buffers,synchronous_commit,fsync,wal_level,wal_sync_method,full_page_writes,
                   commit_delay,max_wal_size,work_mem,effective_cache_size,max_connections,jit,
                   random_page_cost,autovacuum,checkpoint_timeout}'::text[])
order by name;

-- name: counter_table
-- One row per client for the commit-limit probe (run in the bench database).
create table if not exists bench_counter (id int primary key, n bigint not null default 0);

-- name: counter_seed
-- Rows 1..$1 of the counter table.
insert into bench_counter (id) select g from generate_series(1, $1::int) g on conflict (id) do nothing;

-- name: counter_bump
-- The PostgreSQL-limit statement: a single-row UPDATE, its own transaction. $1 row id.
update bench_counter set n = n + 1 where id = $1;

-- name: seed_runnable
-- Add $1 runnable one-step rows of machine $2 (step $3) to queue $4, eligible an hour ago, in
-- durable's instances table (search_path = the durable schema). For the picker-cost probe only:
-- no history rows. Returns how many were added.
with ins as (
  insert into instances (machine, version, step, state, queue, eligible_at)
  select $2, 1, $3, '{}'::jsonb, $4, now() - interval '1 hour'
  from generate_series(1, $1::int)
  returning 1
)
select count(*) from ins;

-- name: vacuum_instances
-- Refresh statistics and the visibility map of instances after a bulk load.
vacuum (analyze) instances;

-- name: count_status
-- Rows of queue $1 by status.
select status::text as status, count(*) as n from instances where queue = $1 group by status;

-- name: count_unfinished
-- Rows of queue $1 not yet terminal.
select count(*) from instances where queue = $1 and status not in ('done', 'failed', 'cancelled');

-- name: drop_index_ddl
-- The DDL dropping index $1 of the current schema (ablation experiments only).
select format('drop index %I', $1::text);

-- name: wal_lsn
-- The server's current WAL insert position (text).
select pg_current_wal_insert_lsn()::text;

-- name: wal_since
-- WAL bytes written since position $1.
select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::text::pg_lsn)::bigint;

-- name: data_directory
-- The server's data directory (to find its postmaster when it is local).
select current_setting('data_directory');

-- name: checkpoint
-- Flush dirty buffers now, so a bulk load's checkpoint does not land inside a timed loop.
checkpoint;

-- name: seed_ops_dataset
-- $1 instances for the operator-query probe (bench.ops_queries), in durable's instances table: 8
-- machines in 4 families, 4 queues, versions 1-2; 80 % done, 10 % runnable, 5 % failed, 4.9 %
-- awaiting_signal, 0.1 % executing (with leases); state {"order": i, "customer": i % 5000}; updated
-- at spread over the last 10 days. No history rows. Returns how many were added.
with ins as (
  insert into instances (machine, version, step, status, state, queue, eligible_at, worker_id,
                         lease_token, lease_expires_at, inserted_at, updated_at)
  select (array['billing.charge', 'billing.refund', 'billing.invoice', 'mail.send', 'mail.bounce',
                'etl.load', 'etl.transform', 'report.daily'])[1 + i % 8],
         1 + (i % 7 = 0)::int, 'work',
         (case when i % 1000 = 0 then 'executing' when i % 100 < 80 then 'done'
               when i % 100 < 90 then 'runnable' when i % 100 < 95 then 'failed'
               else 'awaiting_signal' end)::status,
         jsonb_build_object('order', i, 'customer', i % 5000),
         'q' || (i % 4), now() - interval '1 hour',
         case when i % 1000 = 0 then 'bench-ops' end,
         case when i % 1000 = 0 then i end,
         case when i % 1000 = 0 then now() + interval '1 hour' end,
         now() - make_interval(secs => (($1::int - i) * 864000.0 / $1::int)),
         now() - make_interval(secs => (($1::int - i) * 864000.0 / $1::int))
  from generate_series(1, $1::int) i
  returning 1
)
select count(*)::int from ins;

-- name: seed_runnable_keyed
-- Add $1 runnable one-step rows of machine $2 (step $3) to queue $4, each with a partition key of its own
-- ('$5-<n>'), eligible an hour ago. For the picker's executing-set probe only: no history rows.
with ins as (
  insert into instances (machine, version, step, state, queue, partition_key, eligible_at)
  select $2, 1, $3, '{}'::jsonb, $4, $5 || '-' || nextval('instances_id_seq'), now() - interval '1 hour'
  from generate_series(1, $1::int)
  returning 1
)
select count(*) from ins;

-- name: seed_executing
-- Add $1 executing rows of machine $2 (step $3) to queue $4, each with a partition key of its own and a
-- lease an hour long, held by a worker that does not exist (nothing reaps or completes them): the
-- executing set of other workers' claims. Returns how many were added.
with ins as (
  insert into instances (machine, version, step, status, state, queue, partition_key, worker_id, lease_token,
                         lease_expires_at, eligible_at)
  select $2, 1, $3, 'executing', '{}'::jsonb, $4, 'busy-' || g, 'bench-elsewhere', nextval('lease_tokens'),
         now() + interval '1 hour', now() - interval '1 hour'
  from generate_series(1, $1::int) g
  returning 1
)
select count(*) from ins;

-- name: finish_rows
-- Mark rows $1 (picked by the probe) done, so the executing set stays what the probe set up.
update instances set status = 'done', worker_id = null, lease_token = null, lease_expires_at = null
where id = any($1::bigint[]);

-- name: drop_executing
-- Delete the executing rows seed_executing added.
delete from instances where worker_id = 'bench-elsewhere';

-- name: table_stats
-- What the sustained run watches on durable's two growing tables in schema $1: live and dead row versions,
-- updates (and how many were HOT), vacuums, and the heap and index sizes in bytes.
select relname::text as table, n_live_tup as live, n_dead_tup as dead, n_tup_upd as updates,
       n_tup_hot_upd as hot_updates, autovacuum_count as autovacuums, vacuum_count as vacuums,
       autoanalyze_count as autoanalyzes, pg_relation_size(relid) as heap_bytes,
       pg_indexes_size(relid) as index_bytes
from pg_stat_user_tables where schemaname = $1::text and relname in ('instances', 'history') order by relname;

-- name: index_sizes
-- The size in bytes of every index of schema $1's instances and history tables.
select indexrelname::text as index, pg_relation_size(indexrelid) as bytes
from pg_stat_user_indexes where schemaname = $1::text and relname in ('instances', 'history') order by 1;

-- name: reloptions
-- The storage parameters (fillfactor, autovacuum_*) of schema $1's instances and history tables.
select c.relname::text as table, coalesce(c.reloptions, '{}') as options
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = $1::text and c.relname in ('instances', 'history') order by 1;

-- name: server_wal_checkpoints
-- The server's WAL records, full-page images and bytes since its statistics reset, and its checkpoints
-- (timed and requested).
select w.wal_records, w.wal_fpi, w.wal_bytes::bigint as wal_bytes, c.num_timed + c.num_requested as checkpoints,
       c.num_requested as checkpoints_requested
from pg_stat_wal w, pg_stat_checkpointer c;

-- name: set_storage_ddl
-- The DDL setting storage parameters $2 (e.g. 'fillfactor = 80, autovacuum_vacuum_cost_delay = 0') on table $1
-- of the current schema (the sustained run's variants only).
select format('alter table %I set (%s)', $1::text, $2::text);

-- name: reset_storage_ddl
-- The DDL resetting storage parameters $2 (names, comma-separated) on table $1 of the current schema.
select format('alter table %I reset (%s)', $1::text, $2::text);

-- name: attach_values
-- Give every instance of queue $1 a named value 'blob' of bytes $2 (instance_values, schema v10), as a step's
-- ctx.values.put would. For the picker's named-values probe only. Returns how many were attached.
with ins as (
  insert into instance_values (instance_id, name, data, size, sha256, written_at)
  select g.id, 'blob', $2::bytea, octet_length($2::bytea), sha256($2::bytea), now()
  from instances g where g.queue = $1::text
  returning 1
)
select count(*) from ins;

-- name: unclaim_rows
-- Put rows $1 (claimed by the probe) back to runnable as they were before the pick, so the backlog (and the
-- values it carries) stays the same from pick to pick.
update instances set status = 'runnable', worker_id = null, lease_token = null, lease_expires_at = null
where id = any($1::bigint[]);
