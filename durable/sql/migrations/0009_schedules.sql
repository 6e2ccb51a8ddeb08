-- durable schema version 9: recurring schedules (issue 17, item 4; durable/schedules.py).
--
-- One row per schedule name, written by the runtimes that run it (Runtime(schedules=[...])). `last_tick` is
-- the latest tick handled (fired, or dropped by catch_up): the next scan fires only ticks after it, so a
-- tick is never fired twice and the ticks missed while no runtime ran are known. `last_run` and
-- `last_instance_id` are the latest tick that inserted an instance and that instance; `next_tick` the
-- next tick to handle (`durable schedules` lists them). Each tick's instance holds the unique key
-- `schedule:<name>:<tick>` in every status: two runtimes firing the same tick insert one instance.
create table schedules (
  name text primary key,
  cron text not null,
  tz text not null,
  machine text not null,
  catch_up text not null,
  last_tick timestamptz not null,
  next_tick timestamptz,
  last_run timestamptz,
  last_instance_id bigint,
  updated_at timestamptz not null
);
