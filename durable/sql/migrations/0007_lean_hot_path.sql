-- durable schema version 7: fewer index entries per step.
--
-- Every status change is a non-HOT update, so it adds an entry to every index whose predicate the new
-- row satisfies. The operator indexes below now leave out `executing` rows: a claim (runnable ->
-- executing) adds 2 entries instead of 5 (the primary key and instances_lease). Executing rows are
-- few (at most every runtime's concurrency + prefetch) and instances_lease indexes all of them, so the
-- operator statements in ops.sql split their filters into an executing arm and a not-executing arm
-- (see the header of ops.sql) and stay index scans.
--
-- history: its primary key is (xid, id), the tail's order, instead of id alone plus a (xid, id) index:
-- one entry fewer per event. Nothing looks a history row up by id alone.

drop index instances_queue_status;
create index instances_queue_status on instances (queue, status) where status <> 'executing';
drop index instances_machine;
create index instances_machine on instances (machine, version, status) where status <> 'executing';
drop index instances_state;
create index instances_state on instances using gin (state jsonb_path_ops) where status <> 'executing';

alter table history drop constraint history_pkey;
drop index history_tail;
alter table history add constraint history_pkey primary key (xid, id);
