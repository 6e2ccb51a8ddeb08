-- durable schema version 8: awaits with a timeout and with several names (issue 17, item 3).
--
-- `awaits` keeps the first awaited name (what ops, the console and the pick already read); `awaits_any`
-- holds every name when an await names several (NULL for one name), so nothing that reads `awaits` changes.
-- A parked await with a timeout carries its deadline in `timeout_at` and the step the timeout moves it to
-- in `timeout_step` (NULL: the step a signal would wake it at). The timer sweep (queries.sql
-- `fire_timeouts`, run by every runtime's reaper loop) moves a parked row whose deadline passed to
-- runnable and sets `timed_out` (ctx.timed_out for the step it runs); the step's outcome clears it.
-- The pick's index is untouched: the sweep reads instances_await_timeout, which holds only parked rows
-- with a deadline.
alter table instances add column awaits_any text[];
alter table instances add column timeout_at timestamptz;
alter table instances add column timeout_step text;
alter table instances add column timed_out boolean not null default false;
create index instances_await_timeout on instances (timeout_at)
  where status = 'awaiting_signal' and timeout_at is not null;
