-- Operator statements: instance queries (durable ls, db.query, the console), queue counts, the
-- commit-ordered history tail, retention. Shared by durable.ops (trio) and the console (asyncio).
--
-- Timestamps that durable did not write (past year 9999, 'infinity', BC) are read clamped to Python's
-- datetime range, years 1..9999 (see get_instance in queries.sql): one such row must not break a listing.
--
-- Instance filters. Every query_instances* statement takes the same filter parameters; NULL = no filter,
-- all given filters are ANDed:
--   $1  ids              bigint[]     id = any($1)
--   $2  statuses         status[]     status = any($2) (values of the `status` enum; an unknown value is
--                                     an invalid_text_representation error: validate before). Typed
--                                     status[], not text[] cast in SQL: the planner can only match a
--                                     partial index's status predicate against constants of the enum
--   $3  machine          text         machine = $3
--   $4  machine prefix   text         starts_with(machine, $4) (a family: 'billing.')
--   $5  version          int          version = $5
--   $6  queue            text         queue = $6
--   $7  partition key    text         partition_key = $7
--   $8  unique key       text         unique_key = $8
--   $9  parent id        bigint       parent_id = $9
--   $10 inserted after   timestamptz  inserted_at >= $10
--   $11 inserted before  timestamptz  inserted_at < $11
--   $12 updated after    timestamptz  updated_at >= $12
--   $13 updated before   timestamptz  updated_at < $13
--   $14 state contains   text (json)  state @> $14::jsonb (GIN instances_state, jsonb_path_ops)
--   $15 attributes       text (json)  attributes @> $15::jsonb, a JSON object of the attributes the
--                                     instance must carry with these values (GIN instances_attributes)
--   $16 limit            int          page size
-- Keyset cursor (the sort key + id of the last row of the previous page; NULL = first page):
--   $17 cursor id        bigint
--   $18 cursor updated   timestamptz  (query_instances_updated* only)
-- One statement per sort order, because a keyset page is only fast when ORDER BY and the cursor
-- predicate match an index exactly:
--   query_instances               order by id            (primary key)
--   query_instances_desc          order by id desc       (primary key, backwards)
--   query_instances_updated       order by updated_at, id
--   query_instances_updated_desc  order by updated_at desc, id desc
--
-- Plans: the `($n is null or ...)` filters are only fast with custom plans, where the parameters are
-- constants and an absent filter folds to TRUE. A generic plan (PostgreSQL's default after five
-- executions of a prepared statement, when its estimate looks no worse) keeps every OR and cannot use
-- the GIN or the partial indexes. So run these statements in a transaction after `force_custom_plans`
-- (SET LOCAL plan_cache_mode = force_custom_plan): planning costs ~0.1 ms, a wrong plan seconds.
-- Measured on 1M instances: custom plans 0.2-1.2 ms per page for id sets, statuses, machine, prefix,
-- queue, parent, state containment; forced generic plans 160-500 ms for the same pages. The updated_at
-- orders have no index for all rows (140-460 ms); see docs/operations.md for the index that brings them to
-- ~0.5 ms. (Partition-key and unique-key filters have their indexes since schema v3.)
--
-- Executing rows: since schema v7 the (queue, status), (machine, version, status) and state indexes leave
-- out `executing` rows (a claim adds no entry to them; instances_lease indexes every executing row).
-- The planner uses a partial index only where the WHERE clause implies its predicate, so every
-- query_instances* statement carries the always-true `(status <> 'executing' or status = 'executing')`:
-- it lets the planner answer a filter as a BitmapOr of the partial index (first arm) and
-- instances_lease (second arm). `python -m durable.bench.ops_queries` times each filter on 1M rows.

-- fragment: instance_filters
-- The filters $1..$15 of the header, and the always-true executing arm (see the header: executing rows);
-- the WHERE clause of every query_instances* statement and of count_instances.
where ($1::bigint[] is null or id = any($1::bigint[]))
  and ($2::status[] is null or status = any($2::status[]))
  and ($3::text is null or machine = $3::text)
  and ($4::text is null or starts_with(machine, $4::text))
  and ($5::int is null or version = $5::int)
  and ($6::text is null or queue = $6::text)
  and ($7::text is null or partition_key = $7::text)
  and ($8::text is null or unique_key = $8::text)
  and ($9::bigint is null or parent_id = $9::bigint)
  and ($10::timestamptz is null or inserted_at >= $10::timestamptz)
  and ($11::timestamptz is null or inserted_at < $11::timestamptz)
  and ($12::timestamptz is null or updated_at >= $12::timestamptz)
  and ($13::timestamptz is null or updated_at < $13::timestamptz)
  and ($14::text is null or state @> $14::text::jsonb)
  and ($15::text is null or attributes @> $15::text::jsonb)
  and (status <> 'executing' or status = 'executing')  -- see the header: executing rows

-- name: force_custom_plans
-- Plan every statement of the current transaction for its actual parameters (SET LOCAL
-- plan_cache_mode = force_custom_plan). Run first in the transaction of a query_instances* statement.
select set_config('plan_cache_mode', 'force_custom_plan', true);

-- name: query_instances
-- Instances matching the filters $1..$15 (see the header of ops.sql), ordered by id, at most $16,
-- after cursor id $17.
select id, machine, version, step, status::text as status, state::text as state, result::text as result,
       awaits, queue, priority, partition_key, unique_key, attempt, last_error, worker_id,
       case when lease_expires_at > '9999-12-31 23:59:59.999999+00' then '9999-12-31 23:59:59.999999+00'
            else lease_expires_at end as lease_expires_at,
       cancel_requested, parent_id, children_pending,
       least(greatest(eligible_at, '0001-01-01 00:00:00+00'), '9999-12-31 23:59:59.999999+00') as eligible_at,
       inserted_at, updated_at, attributes::text as attributes
from instances
-- include: instance_filters
  and ($17::bigint is null or id > $17::bigint)
order by id
limit $16;

-- name: query_instances_desc
-- Instances matching the filters $1..$15 (see the header of ops.sql), ordered by id descending, at
-- most $16, before cursor id $17.
select id, machine, version, step, status::text as status, state::text as state, result::text as result,
       awaits, queue, priority, partition_key, unique_key, attempt, last_error, worker_id,
       case when lease_expires_at > '9999-12-31 23:59:59.999999+00' then '9999-12-31 23:59:59.999999+00'
            else lease_expires_at end as lease_expires_at,
       cancel_requested, parent_id, children_pending,
       least(greatest(eligible_at, '0001-01-01 00:00:00+00'), '9999-12-31 23:59:59.999999+00') as eligible_at,
       inserted_at, updated_at, attributes::text as attributes
from instances
-- include: instance_filters
  and ($17::bigint is null or id < $17::bigint)
order by id desc
limit $16;

-- name: query_instances_updated
-- Instances matching the filters $1..$15 (see the header of ops.sql), ordered by (updated_at, id), at
-- most $16, after the cursor ($18 updated_at, $17 id).
select id, machine, version, step, status::text as status, state::text as state, result::text as result,
       awaits, queue, priority, partition_key, unique_key, attempt, last_error, worker_id,
       case when lease_expires_at > '9999-12-31 23:59:59.999999+00' then '9999-12-31 23:59:59.999999+00'
            else lease_expires_at end as lease_expires_at,
       cancel_requested, parent_id, children_pending,
       least(greatest(eligible_at, '0001-01-01 00:00:00+00'), '9999-12-31 23:59:59.999999+00') as eligible_at,
       inserted_at, updated_at, attributes::text as attributes
from instances
-- include: instance_filters
  and ($18::timestamptz is null or (updated_at, id) > ($18::timestamptz, $17::bigint))
order by updated_at, id
limit $16;

-- name: query_instances_updated_desc
-- Instances matching the filters $1..$15 (see the header of ops.sql), ordered by (updated_at, id)
-- descending, at most $16, before the cursor ($18 updated_at, $17 id).
select id, machine, version, step, status::text as status, state::text as state, result::text as result,
       awaits, queue, priority, partition_key, unique_key, attempt, last_error, worker_id,
       case when lease_expires_at > '9999-12-31 23:59:59.999999+00' then '9999-12-31 23:59:59.999999+00'
            else lease_expires_at end as lease_expires_at,
       cancel_requested, parent_id, children_pending,
       least(greatest(eligible_at, '0001-01-01 00:00:00+00'), '9999-12-31 23:59:59.999999+00') as eligible_at,
       inserted_at, updated_at, attributes::text as attributes
from instances
-- include: instance_filters
  and ($18::timestamptz is null or (updated_at, id) < ($18::timestamptz, $17::bigint))
order by updated_at desc, id desc
limit $16;

-- name: queue_counts
-- Instances per (queue, status) with the runnable ones split into 'due' (eligible_at <= now) and
-- 'scheduled' (later); $1 now (NULL = now()), $2 include the terminal statuses (done, failed,
-- cancelled: a scan of the whole (queue, status) index, skip it on a hot refresh path).
-- Returns queue, status (due|scheduled|executing|awaiting_signal|awaiting_children|done|failed|
-- cancelled), n, and oldest: the earliest eligible_at of due/scheduled rows (how long the oldest due
-- row has waited), NULL for the other statuses (so they are counted from the (queue, status) index
-- alone, without reading the table; executing rows, at most every runtime's concurrency + prefetch,
-- through instances_lease).
select queue, case when eligible_at <= coalesce($1::timestamptz, now()) then 'due' else 'scheduled' end
         as status,
       count(*) as n,
       least(greatest(min(eligible_at), '0001-01-01 00:00:00+00'), '9999-12-31 23:59:59.999999+00') as oldest
from instances
where status = 'runnable'
group by 1, 2
union all
-- executing rows through instances_lease (the (queue, status) index leaves them out: schema v7)
select queue, 'executing', count(*) as n, null::timestamptz as oldest
from instances
where status = 'executing'
group by 1
union all
select queue, status::text, count(*) as n, null::timestamptz as oldest
from instances
where status in ('awaiting_signal', 'awaiting_children')
   or ($2::boolean and status in ('done', 'failed', 'cancelled'))
group by 1, 2
order by 1, 2;

-- name: list_workers
-- Registered runtimes, most recently seen first, with their age in seconds at $1 (NULL = now()).
-- gauges: {queue: {concurrency, prefetch, in_flight, buffered, steps, done, failed, fenced, picks}}.
select id, host, pid, queues, gauges::text as gauges, started_at, seen_at, stopped_at,
       extract(epoch from coalesce($1::timestamptz, now()) - seen_at)::float8 as seen_ago
from workers
order by stopped_at is not null, seen_at desc, id;

-- name: tail_history
-- History events after offset ($1 xid, $2 id), in (xid, id) order, at most $5; $3 instance id, $4
-- machine and $6 attributes (a JSON object the event's instance's attributes must contain: a probe of the
-- instance by primary key per event; events of deleted instances do not match) filter (NULL = all). Only rows of transactions older than every transaction still running
-- (xid < pg_snapshot_xmin) are returned: a transaction that started earlier but commits later can no
-- longer add a row behind a returned offset, so a reader resuming from its last offset loses nothing
-- and reads nothing twice. A long transaction delays the tail; it never makes it skip.
-- (ORDER BY names h.xid: a bare `xid` would sort by the text output column, where '10' < '9'.)
select h.id, h.xid::text as xid, h.instance_id, h.machine, h.event, h.step, h.attempt,
       h.status::text as status, h.worker_id, h.lease_token, h.detail::text as detail, h.at
from history h
where (h.xid, h.id) > ($1::text::xid8, $2::bigint)
  and h.xid < pg_snapshot_xmin(pg_current_snapshot())
  and ($3::bigint is null or h.instance_id = $3::bigint)
  and ($4::text is null or h.machine = $4::text)
  and ($6::text is null or exists (select 1 from instances i
                                   where i.id = h.instance_id and i.attributes @> $6::text::jsonb))
order by h.xid, h.id
limit $5;

-- name: tail_frontier
-- The tail's current end: the xmin of a fresh snapshot. Every row a tail can still return has an xid
-- at or above it (the offset `now` is (frontier, 0)).
select pg_snapshot_xmin(pg_current_snapshot())::text;

-- name: gc_batch
-- Delete up to $2 terminal instances (done, failed, cancelled) last updated more than $3 seconds
-- before $1 (now; NULL = now()) with their signals and history, oldest first. A child whose parent is still live (not terminal) is kept:
-- the parent may read its result. Rows locked by someone else (a concurrent retry) are skipped, and
-- the terminal check is made on the locked row, so a revived instance is never deleted.
-- Their named values (instance_values) go with them: the table's foreign key cascades the delete.
-- Returns the number of instances deleted.
with doomed as (
  select g.id
  from instances g
  where g.status in ('done', 'failed', 'cancelled') and g.updated_at < coalesce($1::timestamptz, now()) - make_interval(secs => $3::float8)
    and not exists (select 1 from instances p
                    where p.id = g.parent_id and p.status not in ('done', 'failed', 'cancelled'))
  order by g.updated_at, g.id
  limit $2
  for update of g skip locked
),
gone_signals as (
  delete from signals s using doomed d where s.target_id = d.id
),
gone_history as (
  delete from history h where h.instance_id = any (array(select id from doomed))
),
gone as (
  delete from instances g using doomed d where g.id = d.id returning g.id
)
select count(*)::int from gone;

-- name: count_instances
-- How many instances match the filters $1..$15 (see the header of ops.sql): what a bulk cancel or retry
-- would touch (durable cancel/retry --status ...).
select count(*)::bigint
from instances
-- include: instance_filters
;

-- name: retry_instances
-- retry_instance (queries.sql) for a batch: the failed or cancelled instances among ids $1 back to runnable
-- at the step where each ended, attempt reset, eligible now; the others are left alone. $2 now. Recorded
-- in history. An instance whose unique key another holds in runnable's scope trips instances_unique and the
-- whole batch changes nothing (the caller then retries the batch one instance at a time). Returns the
-- revived ids and their queues.
with target as (
  select id, status, machine, step, attempt
  from instances
  where id = any($1::bigint[]) and status in ('failed', 'cancelled')
  order by id
  for no key update
),
revived as (
  update instances g
  set status = 'runnable', attempt = 0, eligible_at = coalesce($2::timestamptz, now()),
      cancel_requested = false, result = null, updated_at = coalesce($2::timestamptz, now())
  from target t
  where g.id = t.id
  returning g.id, g.queue
),
logged as (
  insert into history (instance_id, machine, event, step, attempt, status, detail, at)
  select t.id, t.machine, 'retried', t.step, t.attempt, 'runnable',
         jsonb_build_object('from', t.status::text), coalesce($2::timestamptz, now())
  from target t join revived r on r.id = t.id
)
select id, queue from revived order by id;
