-- Statements only the console (`durable console`) runs. Read-only; the console's actions go through the
-- engine's own statements (deliver_signal, retry_instance, cancel_instance).

-- name: console_now
-- The clock every console figure is measured against: $1 now (NULL = the database's now()).
select coalesce($1::timestamptz, now()) as now;

-- name: console_throughput
-- Step outcomes per queue and whole second in [$1, $2) (timestamps), read from history through the
-- history_at index and joined to each event's instance for its queue (an instance deleted by gc no
-- longer counts). Outcome events only: next, retry, await, spawn, done, stop, cancel.
select i.queue, floor(extract(epoch from h.at))::bigint as second, count(*)::int as steps
from history h
join instances i on i.id = h.instance_id
where h.at >= $1::timestamptz and h.at < $2::timestamptz
  and h.event in ('next', 'retry', 'await', 'spawn', 'done', 'stop', 'cancel')
group by 1, 2
order by 1, 2;

-- name: console_schema_ready
-- Whether schema $1 holds durable's instances table (the console explains a missing migration).
select exists (
  select 1 from pg_catalog.pg_tables where schemaname = $1 and tablename = 'instances'
) as ready;
