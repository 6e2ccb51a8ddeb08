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

-- name: console_schedules
-- The recurring schedules for the queues screen (as list_schedules), by name. Times outside years
-- 1..9999 (a row edited by hand, e.g. 'infinity': durable writes none) read as the nearest bound, as
-- get_instance's do: asyncpg cannot decode them, and one such row must not take the screen down.
select s.name, s.cron, s.tz, s.machine, s.catch_up,
       case when s.last_run > '9999-12-31 23:59:59.999999+00' then '9999-12-31 23:59:59.999999+00'
            when s.last_run < '0001-01-01 00:00:00+00' then '0001-01-01 00:00:00+00'
            else s.last_run end as last_run,
       s.last_instance_id,
       case when s.next_tick > '9999-12-31 23:59:59.999999+00' then '9999-12-31 23:59:59.999999+00'
            when s.next_tick < '0001-01-01 00:00:00+00' then '0001-01-01 00:00:00+00'
            else s.next_tick end as next_tick,
       i.status::text as last_status
from schedules s
left join instances i on i.id = s.last_instance_id
order by s.name;
