-- The simulator's statements (sim/): its ledger, whole-schema reads for the invariant checks, and the
-- fault hooks' admin statements. They run in the simulated run's own schema (search_path).

-- name: sim_create_ledger
-- Create the bank workload's ledger in the current schema: one row per (instance, step) effect, so a
-- re-executed step writes nothing twice. No parameters.
create table if not exists sim_ledger (
  instance_id bigint not null,
  step        text   not null,
  account     int    not null,
  delta       bigint not null,
  lease_token bigint not null,
  primary key (instance_id, step)
);

-- name: sim_ledger_write
-- Record one effect idempotently: instance $1, step $2, account $3, delta $4, lease token $5.
-- Returns 1 when written, nothing when the effect was already there.
insert into sim_ledger (instance_id, step, account, delta, lease_token)
values ($1, $2, $3, $4, $5)
on conflict (instance_id, step) do nothing
returning 1;

-- name: sim_ledger_all
-- Every ledger row, by instance and step.
select instance_id, step, account, delta, lease_token from sim_ledger order by instance_id, step;

-- name: sim_freeze_tables
-- Turn autovacuum/autoanalyze off for the run's tables so plans and row order depend only on the run
-- (several statements: run without parameters, simple protocol).
alter table instances set (autovacuum_enabled = false);
alter table signals set (autovacuum_enabled = false);
alter table history set (autovacuum_enabled = false);

-- name: sim_instances_all
-- Every instance of the run with the columns the invariants read, by id.
select id, machine, step, status::text as status, state::text as state, result::text as result,
       attempt, last_error, parent_id, children_pending, partition_key, lease_token, worker_id, joined
from instances order by id;

-- name: sim_signals_all
-- Every signal still in an inbox, by id.
select id, target_id, name, dedup_key from signals order by id;

-- name: sim_history_all
-- The whole history in id order (calls are serialized by the simulator, so id order is commit order).
select id, instance_id, machine, event, step, attempt, status::text as status, worker_id, lease_token,
       detail::text as detail, at
from history order by id;

-- name: sim_block_instances
-- Inside an admin transaction: lock the instances table so the next engine statement blocks on it
-- (the connection-kill fault terminates it while it waits). No parameters.
lock table instances in access exclusive mode;

-- name: sim_block_workers
-- Inside an admin transaction: lock the workers table so a starting runtime's registration blocks on it
-- (the conn_register fault terminates it while it waits). No parameters.
lock table workers in access exclusive mode;

-- name: sim_blocked_backends
-- Backends of application $1 waiting on a lock (the statement the connection-kill fault targets).
select pid from pg_stat_activity
where application_name = $1 and wait_event_type = 'Lock' order by pid;

-- name: sim_terminate_backends
-- Terminate the backends $1 (pids) and wait until they have exited (their locks released, their sockets
-- closed), 60 s at most each; returns how many exited.
select count(*) filter (where pg_terminate_backend(p, 60000)) as killed from unnest($1::int[]) as t(p);

-- name: sim_drop_partition_index
-- Planted bug helper: drop the unique index that serializes partition keys. No parameters.
drop index if exists instances_partition_active;

-- name: sim_backends_of
-- Every backend of application $1 (a worker process's connections), by pid.
select pid from pg_stat_activity where application_name = $1 order by pid;

-- name: sim_listeners
-- Backends whose last statement was a LISTEN on channel $1 (a runtime's wake-up hint connection).
select pid from pg_stat_activity
where query ilike 'listen%' and position($1::text in query) > 0 order by pid;

-- name: sim_terminate_app
-- Terminate every backend of application $1 except the caller's own; returns how many were signalled.
select count(*) filter (where pg_terminate_backend(pid)) as killed
from pg_stat_activity where application_name = $1 and pid <> pg_backend_pid();

-- name: sim_due_waiting
-- The queue progress check's candidates: runnable rows due at $1 that a pick would take now (no other row
-- of their partition key executing, no unique key they would enter occupied), by id; of queue $2 only (the
-- runtimes' queue: the ops workload's explicit-pipeline rows wait on queues only its driver claims).
select g.id, g.machine, g.step from instances g
where g.status = 'runnable' and g.eligible_at <= $1 and g.queue = $2
  and (g.partition_key is null
       or not exists (select 1 from instances e where e.partition_key = g.partition_key and e.status = 'executing'))
  and (g.unique_key is null or g.unique_guard is not null or not 'executing' = any (g.unique_scope)
       or not exists (select 1 from instances u where u.unique_guard = g.unique_key))
order by g.id;

-- name: sim_forbid_poison
-- The hostile workload's poison: a state whose "t" is "poison" is refused by a CHECK constraint (SQLSTATE
-- 23514), so the outcome that writes it is refused by the database itself. No parameters.
alter table instances add constraint sim_no_poison check (state->>'t' is distinct from 'poison');

-- name: sim_blocked_by
-- Backends waiting on a lock held by one of the backends $1 (pids), with the one they wait on (the
-- signal_lock fault commits that transaction then).
select b.pid, h.blocker
from pg_stat_activity b, unnest(pg_blocking_pids(b.pid)) as h(blocker)
where h.blocker = any ($1::int[]);
