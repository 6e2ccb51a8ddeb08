-- Recurring schedules (durable/schedules.py; table: migration 0009). A runtime with schedules registers
-- them at start, then each scan reads every schedule's last tick, inserts the due ticks' instances through
-- insert_instances (each with the unique key `schedule:<name>:<tick>`, occupied in every status) and then
-- advances the rows. Insert first, advance second: a crash between the two re-fires the same ticks at the
-- next scan, and their keys are taken, so no tick ever gets two instances.

-- name: register_schedules
-- Create or update the rows of a runtime's schedules: $1 names, $2 cron expressions, $3 time zones,
-- $4 machines, $5 catch_up policies, $6 each schedule's next tick after now (for display), $7 now
-- (NULL: the database's now()). A new row starts at last_tick = now (earlier ticks are not missed: the
-- schedule did not exist); an existing row keeps its last tick, so a redeploy catches up from there.
-- Returns the rows with the time used.
insert into schedules (name, cron, tz, machine, catch_up, last_tick, next_tick, updated_at)
select t.name, t.cron, t.tz, t.machine, t.catch_up, coalesce($7::timestamptz, now()), t.next_tick,
       coalesce($7::timestamptz, now())
from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
  as t(name, cron, tz, machine, catch_up, next_tick)
on conflict (name) do update
  set cron = excluded.cron, tz = excluded.tz, machine = excluded.machine, catch_up = excluded.catch_up,
      updated_at = excluded.updated_at
returning name, last_tick, coalesce($7::timestamptz, now()) as now;

-- name: schedule_scan
-- The last tick of each schedule named in $1 and the time to compute due ticks against: $2 (NULL: the
-- database's now(), one clock for every runtime of the fleet).
select s.name, s.last_tick, coalesce($2::timestamptz, now()) as now
from schedules s
where s.name = any($1::text[]);

-- name: advance_schedules
-- After a scan's insert: per schedule $1, the tick $2 handled last (fired or dropped), the instance $3 it
-- inserted (NULL: none, because the key was taken by a racing runtime or the tick was dropped), $4 the
-- tick after it, $5 now (NULL: now()). last_tick only moves forward (greatest), so runtimes that fired the
-- same ticks in any order leave the newest; last_run / last_instance_id name the newest tick that
-- inserted an instance; next_tick is written by whoever handled the newest tick.
update schedules s
set last_instance_id = case when t.instance_id is not null and (s.last_run is null or t.tick >= s.last_run)
                            then t.instance_id else s.last_instance_id end,
    last_run = case when t.instance_id is not null then greatest(s.last_run, t.tick) else s.last_run end,
    next_tick = case when t.tick >= s.last_tick then t.next_tick else s.next_tick end,
    last_tick = greatest(s.last_tick, t.tick),
    updated_at = coalesce($5::timestamptz, now())
from unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::timestamptz[]) as t(name, tick, instance_id, next_tick)
where s.name = t.name;

-- name: list_schedules
-- Every schedule row for `durable schedules` and the console's queues screen, by name, with the status of
-- its last instance (NULL when none or garbage-collected). Times outside years 1..9999 (a row edited by hand, e.g. 'infinity': durable
-- writes none) read as the nearest bound (NULL stays NULL): asyncpg cannot decode them, and one such row must not fail the
-- command.
select s.name, s.cron, s.tz, s.machine, s.catch_up,
       case when s.last_tick > '9999-12-31 23:59:59.999999+00' then '9999-12-31 23:59:59.999999+00'
            when s.last_tick < '0001-01-01 00:00:00+00' then '0001-01-01 00:00:00+00' else s.last_tick end as last_tick,
       case when s.last_run > '9999-12-31 23:59:59.999999+00' then '9999-12-31 23:59:59.999999+00'
            when s.last_run < '0001-01-01 00:00:00+00' then '0001-01-01 00:00:00+00' else s.last_run end as last_run,
       s.last_instance_id,
       case when s.next_tick > '9999-12-31 23:59:59.999999+00' then '9999-12-31 23:59:59.999999+00'
            when s.next_tick < '0001-01-01 00:00:00+00' then '0001-01-01 00:00:00+00' else s.next_tick end as next_tick,
       case when s.updated_at > '9999-12-31 23:59:59.999999+00' then '9999-12-31 23:59:59.999999+00'
            when s.updated_at < '0001-01-01 00:00:00+00' then '0001-01-01 00:00:00+00' else s.updated_at end as updated_at,
       i.status::text as last_status
from schedules s
left join instances i on i.id = s.last_instance_id
order by s.name;
