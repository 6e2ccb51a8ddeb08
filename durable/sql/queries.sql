-- The engine's statements. Spec §10 maps to them one to one:
--   Pick                      -> pick
--   Lease heartbeat           -> heartbeat        (batched: one statement for all of a runtime's claims)
--   Reaper                    -> reap
--   Step outcomes             -> complete         (group commit: one statement for a batch of outcomes of
--                                                  any kind; name-scoped consume, spawn, child->parent join)
--                                complete_simple  (the same for a batch of plain outcomes: a quarter of
--                                                  the parameters and no signal/child/parent work)
--   Signal delivery           -> deliver_signal
--   Batch insert, uniqueness  -> insert_instances (insert = a batch of one)
--                                insert_instance  (a batch of exactly one row, its parameters scalars:
--                                                  the same rows, history, hint and answer)
-- Deviations from the spec text, and why:
--   * Every claim carries a fresh lease_token; heartbeat and outcomes match id + status='executing' +
--     lease_token. A reaped worker's late outcome changes nothing and is logged as `fenced`.
--   * Partition keys are serialized by the unique partial index instances_partition_active, not by a
--     session advisory lock: the claim is the lock, no connection is pinned, a dead worker's keys are
--     freed by the reaper. The pick skips keys already executing and takes one row per key. Since schema
--     v13 the index's predicate reads `status between 'executing' and 'executing'` (the same rows), so
--     that the pick's probe, written alike, can be served by no other index (see pick).
--   * Unique scopes: a row whose scope names executing but not runnable waits in the pick while its key
--     is occupied (like a busy partition key) instead of failing the pick; an outcome into an occupied
--     scope goes to handle(); scopes the engine's own moves could collide with are refused at insert
--     (durable/uniqueness.py).
--   * No lost wake-up without a re-check transaction: delivery always locks and rewrites the target
--     row (signal_seq + 1); an await whose claim saw an older signal_seq parks as runnable. Row-lock
--     re-evaluation makes every deliver/park interleaving end runnable.
--   * Consumption is name-scoped and limited to the signals the step was shown: a progressing outcome
--     deletes the shown signals named like `awaits` and those the step read by name (ctx.signal(name)),
--     so a signal that arrived before the step ever parked does not linger to wake a later await. A
--     signal of that name that arrived during the step survives for the next await (no silent loss).
--   * retry keeps `awaits` and consumes nothing, so the retried step sees the same inbox (upstream 0.1.3).
--   * An await may name the step to run when woken (default: the same step), several signal names (any
--     wakes it) and a timeout. Timeouts are fired by a sweep (fire_timeouts, every runtime's timer loop),
--     not by the pick: the pick stays a scan of runnable rows. A next may sleep (delay or a time): the row
--     is runnable at its wake time, attempt 0.
--   * Cancel: terminal status `cancelled`; a claim with cancel_requested ends cancelled whatever the
--     step returned; a cancelled child releases its parent like a failed one. A cancel reaches the whole
--     tree (cancel_instance walks the descendants, bounded, and runs again when a spawn committed under
--     its walk), and the heartbeat tells a runtime which held claims have cancel_requested, so a running
--     step is cancelled within a heartbeat period (and Machine.on_cancel runs).
--   * Every time-dependent statement takes `now` (NULL = the database's now()) for the simulator.
--   * Every change writes its history row in the same statement.
--   * Handoff: an insert may claim its plain due rows for an idle runtime of the inserting process in
--     the insert itself (they are inserted `executing` with a lease token, exactly as a pick would leave
--     them), so no pick runs between the insert and the step. See insert_instances.
--   * Lost leases: the heartbeat also says which claims are gone (`lost`), and a runtime cancels those
--     steps and records `lease_lost` (a row still held only by the runtime's own count of the lease goes
--     back at once). A runtime starting on a host frees the claims of that host's dead runtimes (process
--     gone, or its own worker id) with release_dead_workers instead of waiting out their leases.

-- name: pick
-- Claim up to $2 runnable rows of queue $1 for worker $3 with a lease of $4 seconds; $5 now.
-- Order: priority, eligible_at, id. Locked rows are skipped; rows whose partition key is executing are
-- skipped before the LIMIT (a busy key never hides other keys' work; it costs an index probe per
-- skipped row), and only the first row of each key is taken. Likewise a row whose unique_scope names
-- `executing` but not `runnable` (the pick would move it into its scope) waits while its unique key is
-- occupied by another row (in that row's own scope), and only the first such row of a key is taken: the
-- pick never trips instances_unique, and the row is picked once the key is free. Both skips probe an
-- index per candidate (never the whole executing set). Each claim gets a fresh lease_token. The inbox
-- and the children ride along so the executor needs no further round trip. Rows come in pick order
-- (priority, eligible_at, id); the claim's fields are the leading columns, in order. The instance's
-- attributes (small: for the step's span) ride along; its named values (instance_values) are never read
-- here: a step reads them when it asks (value_get).
-- $6 machine, $7 step: only rows of that machine / at that step (NULL: any; the explicit pipeline's
-- db.claim(machine=, step=); the runtime passes NULL). A filter is applied to the queue's runnable rows in
-- pick order, so a filtered pick may read past other machines' rows.
-- plan: generic
with candidate as (
  select g.id, g.partition_key, g.priority, g.eligible_at,
         -- the unique key this claim would occupy (its scope names executing, not runnable), else NULL
         case when g.unique_guard is null and 'executing' = any (g.unique_scope) then g.unique_key end
           as entering
  from instances g
  where g.status = 'runnable' and g.queue = $1
    and g.eligible_at <= coalesce($5::timestamptz, now())
    and ($6::text is null or g.machine = $6::text) and ($7::text is null or g.step = $7::text)
    -- the busy-key skip, written so the planner estimates it from partition_key's null fraction (a
    -- lateral join's `busy is null` got the 0.5 % default selectivity: the LIMIT then looked like a
    -- scan of the whole backlog, and a plan that sorts the whole backlog could win). `offset 0` keeps
    -- the subquery a probe per candidate: without it a generic plan may hash the whole executing set
    -- once per pick (2,000 executing rows read to claim a few). The status is a range, the very clauses
    -- of instances_partition_active's predicate (schema v13), which do not imply instances_lease's
    -- `status = 'executing'`: only the partition index can serve the probe. Written as an equality,
    -- the probe let the planner weigh a scan of the whole lease index per candidate, and with statistics
    -- taken while nothing executed both indexes looked like one row, the tie settled by btree descent
    -- cost (the index's height and size): the partition index, bloated by claims nobody's probe marks
    -- dead, lost to a one-page lease index after a few hundred claims (on any backend that had not
    -- cached its metapage while it was one page: keeping connections in 797b003 only changed which
    -- backend planned). The key is a range too: in instances_partition_key (every keyed row) it is
    -- estimated at the 0.5 % default of the table, in the partition index at that of the executing rows
    and (g.partition_key is null
         or not exists (select 1 from instances e
                        where e.partition_key between g.partition_key and g.partition_key
                          and e.status between 'executing' and 'executing'
                        offset 0))
    -- the occupied-unique-key skip, the same shape (a probe of instances_unique per such candidate)
    and (g.unique_key is null or g.unique_guard is not null or not 'executing' = any (g.unique_scope)
         or not exists (select 1 from instances u where u.unique_guard = g.unique_key offset 0))
  order by g.priority, g.eligible_at, g.id
  limit $2
  for no key update of g skip locked
),
free as (
  -- every candidate without a key, and the first candidate of each partition key and of each unique key
  -- it would occupy
  select c.id, c.priority, c.eligible_at
  from candidate c where c.partition_key is null and c.entering is null
  union all
  select k.id, k.priority, k.eligible_at
  from (select c.id, c.priority, c.eligible_at, c.entering,
               case when c.partition_key is null then 1
                    else row_number() over (partition by c.partition_key
                                            order by c.priority, c.eligible_at, c.id) end as nth,
               row_number() over (partition by c.entering
                                  order by c.priority, c.eligible_at, c.id) as nth_entering
        from candidate c where c.partition_key is not null or c.entering is not null) k
  where k.nth = 1 and (k.entering is null or k.nth_entering = 1)
),
tokens as (
  -- fresh lease tokens in claim order: nextval runs as the sorted rows leave the subquery (offset 0 keeps
  -- it one). In the update it ran in the rows' physical order, so one seed's run could hand the same claims
  -- different tokens (the simulator's log differed between two runs of ops seed 2 with run-ahead). `free`
  -- carries the order's columns: a join back to `candidate` was planned, with statistics of an empty
  -- table, as a nested loop (1,000 claims: 1,000,000 row comparisons, 730 ms a pick)
  select o.id, nextval('lease_tokens') as token
  from (select f.id from free f order by f.priority, f.eligible_at, f.id offset 0) o
),
claimed as (
  update instances g
  set status = 'executing', worker_id = $3, lease_token = t.token,
      lease_expires_at = coalesce($5::timestamptz, now()) + make_interval(secs => $4::float8),
      updated_at = coalesce($5::timestamptz, now())
  from tokens t
  where g.id = t.id
  returning g.id, g.machine, g.version, g.step, g.state::text as state, g.attempt, g.queue, g.priority,
    g.partition_key, g.lease_token, g.signal_seq, g.awaits, g.parent_id, g.cancel_requested,
    g.traceparent, g.tracestate, g.eligible_at, g.awaits_any, g.timed_out, g.attributes::text as attributes
),
kids as (
  -- the children of every claimed row in one index scan (a subquery per row cost ~1.2 µs a row)
  select c.parent_id, json_agg(json_build_object('id', c.id, 'machine', c.machine, 'status', c.status,
           'step', c.step, 'state', c.state, 'result', c.result, 'last_error', c.last_error)
           order by c.id)::text as children
  from instances c
  where c.parent_id = any (array(select id from claimed))
  group by c.parent_id
)
select g.id, g.machine, g.version, g.step, g.state, g.attempt, g.queue, g.priority, g.partition_key,
  g.lease_token, g.signal_seq, g.awaits, g.parent_id, g.cancel_requested, g.traceparent, g.tracestate,
  -- signal_seq = 0: never signalled (every stored signal bumps it in the same statement), no lookup
  case when g.signal_seq = 0 then '[]' else
  (select coalesce(json_agg(json_build_object('id', s.id, 'name', s.name, 'payload', s.payload,
            'dedup_key', s.dedup_key, 'traceparent', s.traceparent) order by s.id), '[]')::text
     from signals s where s.target_id = g.id) end as signals,
  coalesce(k.children, '[]') as children, g.awaits_any, g.timed_out, g.attributes
from claimed g
left join kids k on k.parent_id = g.id
order by g.priority, g.eligible_at, g.id;

-- name: heartbeat
-- Extend the leases still held by this worker (fenced by token) and refresh its registry row.
-- $1 ids, $2 tokens, $3 lease seconds, $4 now, $5 worker id, $6 gauges (json text).
-- Rows are locked in id order and locked rows skipped (no deadlock with reaper or outcomes).
-- Returns the ids whose lease was extended and their tokens, and `lost`: the tokens of the claims that are
-- no longer held (reaped, fenced, re-claimed; a row skipped because it was locked is neither). A claim is
-- its token: one runtime may hold a lost claim and the live one of the same instance for a moment.
-- `cancel`: the tokens of extended claims whose instance has cancel_requested (db.cancel while its step
-- runs): the runtime cancels those steps and commits a `cancel` outcome.
with held as (
  select g.id
  from instances g
  join unnest($1::bigint[], $2::bigint[]) as h(id, token) on g.id = h.id and g.lease_token = h.token
  where g.status = 'executing'
  order by g.id
  for no key update of g skip locked
),
extended as (
  update instances g
  set lease_expires_at = coalesce($4::timestamptz, now()) + make_interval(secs => $3::float8)
  from held where g.id = held.id
  returning g.id, g.lease_token, g.cancel_requested
),
seen as (
  update workers set seen_at = coalesce($4::timestamptz, now()), gauges = $6::text::jsonb
  where id = $5
  returning 1
)
select coalesce(array_agg(extended.id), '{}') as extended, (select count(*) from seen) as registered,
       coalesce(array_agg(extended.lease_token), '{}') as tokens,
       coalesce(array_agg(extended.lease_token) filter (where extended.cancel_requested), '{}') as cancel,
       array(select h.token from unnest($1::bigint[], $2::bigint[]) as h(id, token)
             where not exists (select 1 from instances g
                               where g.id = h.id and g.lease_token = h.token and g.status = 'executing')) as lost
from extended;

-- name: reap
-- Return up to $2 executing rows whose lease expired before $1 (now) to runnable with attempt + 1:
-- the crash path, handle() is not called. Ordered SKIP LOCKED claim, then update. eligible_at is kept
-- (it is already due), so a re-run keeps its place ahead of later rows of its partition key.
-- Returns the reaped rows.
with expired as (
  select id, worker_id, lease_token, attempt
  from instances
  where status = 'executing' and lease_expires_at < coalesce($1::timestamptz, now())
  order by id
  limit $2
  for no key update skip locked
),
reaped as (
  update instances g
  set status = 'runnable', worker_id = null, lease_token = null, lease_expires_at = null,
      attempt = g.attempt + 1, updated_at = coalesce($1::timestamptz, now())
  from expired e
  where g.id = e.id
  returning g.id, g.machine, g.step, g.attempt, g.queue, e.worker_id, e.lease_token, e.attempt as old_attempt
),
logged as (
  insert into history (instance_id, machine, event, step, attempt, status, worker_id, lease_token, at)
  select id, machine, 'reaped', step, old_attempt, 'runnable', worker_id, lease_token,
         coalesce($1::timestamptz, now())
  from reaped
)
select id, queue, worker_id, lease_token from reaped;

-- fragment: release_held
-- Claims given back by a worker that still holds them: the rows of CTE `claim` (id, token, bump) that are
-- executing under that lease token, locked in id order, back to runnable (worker and lease cleared,
-- attempt + bump, place in line kept: eligible_at unchanged) at {now}. Defines the CTEs `held` (id, bump)
-- and `released` (id, machine, step, attempt, queue, bump), and ends with a comma: the statement goes on
-- with its history rows. Shared by release (a drain) and lease_lost (a step cancelled for its lease).
held as (
  select g.id, r.bump
  from instances g
  join claim r
    on g.id = r.id and g.lease_token = r.token
  where g.status = 'executing'
  order by g.id
  for no key update of g
),
released as (
  update instances g
  set status = 'runnable', worker_id = null, lease_token = null, lease_expires_at = null,
      attempt = g.attempt + h.bump, updated_at = coalesce({now}::timestamptz, now())
  from held h
  where g.id = h.id
  returning g.id, g.machine, g.step, g.attempt, g.queue, h.bump
),

-- name: release
-- Give claims back without running them (drain): to runnable, place in line kept, attempt + $3[i]
-- (0 for a buffered claim, 1 for a step interrupted mid-flight). Fenced by token. $4 worker, $5 now.
with claim as (
  select * from unnest($1::bigint[], $2::bigint[], $3::int[]) as c(id, token, bump)
),
-- include: release_held now=$5
logged as (
  insert into history (instance_id, machine, event, step, attempt, status, worker_id, detail, at)
  select id, machine, 'released', step, attempt, 'runnable', $4,
         jsonb_build_object('interrupted', bump > 0), coalesce($5::timestamptz, now())
  from released
)
select id, queue from released;

-- name: release_orphans
-- After a pick whose answer was lost (the connection dropped mid-statement, so the claim may have
-- committed): rows of queue $2 that worker $1 claimed but does not hold ($3 = the ids it holds) go back
-- to runnable at once, attempt unchanged, instead of waiting for their lease to expire. $4 now.
with orphan as (
  select id, lease_token from instances
  where status = 'executing' and worker_id = $1 and queue = $2 and id <> all($3::bigint[])
  order by id
  for no key update skip locked
),
released as (
  update instances g
  set status = 'runnable', worker_id = null, lease_token = null, lease_expires_at = null,
      updated_at = coalesce($4::timestamptz, now())
  from orphan o
  where g.id = o.id
  returning g.id, g.machine, g.step, g.attempt, o.lease_token
),
logged as (
  insert into history (instance_id, machine, event, step, attempt, status, worker_id, lease_token, detail, at)
  select id, machine, 'released', step, attempt, 'runnable', $1, lease_token,
         jsonb_build_object('orphan', true), coalesce($4::timestamptz, now())
  from released
)
select id from released;

-- name: complete
-- Commit a batch of step outcomes (group commit) in one statement. Per outcome i:
--   $1 id, $2 lease_token, $3 kind (next|retry|await|spawn|done|stop|cancel), $4 step (next: the next
--   step; await: step to run when woken, NULL = same; spawn: step after the join), $5 state json (NULL =
--   unchanged), $6 retry delay seconds, $7 awaited signal name, $8 done result json, $9 error text,
--   $10 signal_seq seen at pick, $11 history detail json.
-- Signals shown to the step: $12 outcome ordinals (1-based positions in $1), $13 signal ids (flattened
-- pairs); signals to consume when the outcome progresses: $30 outcome ordinals, $31 signal ids (the engine
-- picks them by name).
-- Children to spawn: $14 the parent's outcome ordinal, $15 machine, $16 version, $17 step, $18 state json,
--   $19 queue, $20 priority, $21 partition key, $22 unique key, $23 unique scope (status[] literal),
--   $24 eligible_at (NULL = now), $25 traceparent, $26 tracestate, $29 delay seconds.
-- $27 worker id, $28 now. The caller sorts the batch by id (lock order), as complete_simple's.
-- Run-ahead: $32 hold (per outcome): a `next` outcome keeps the claim (status stays executing, a fresh
-- lease_token, lease of $33 seconds) so the same worker runs the next step without a pick; the
-- 'outcome' row then carries the new claim (token, state, inbox, children).
-- Trace context: $34 traceparent, $35 tracestate (per outcome) become the instance's when it has none
-- (an instance inserted without trace context adopts its first step's span as its trace).
-- Timers (per outcome): $36 every awaited name when an await names several (a text[] literal, NULL for
-- one name: $7 is the first), $37 an await's timeout in seconds (NULL = none), $38 the step its timeout
-- runs (NULL = the step a signal would wake), $39 a next's wake time (Next(at=...); Next(delay=...) is
-- $6). A delayed next is runnable at its wake time (attempt 0, as any next; history detail `wake_at`); an
-- await that parks with a timeout gets `timeout_at` (history detail `timeout_at`), which the timer sweep
-- (fire_timeouts) acts on. `timed_out` is kept by retry and cleared by every other outcome.
-- Only rows still held (executing, same lease_token) change; the others are logged as fenced. Fencing is
-- per outcome (id and token), never per instance id: a batch may hold a zombie's outcome and the live
-- claim's outcome of one instance, and only the live one may change the row, consume, spawn or be
-- handed a run-ahead claim; when one claim appears twice only its first outcome counts. Signals,
-- children and results are tied to outcomes by ordinal for the same reason.
-- A progressing outcome (not await/retry) deletes the signals listed to consume and clears `awaits`.
-- A terminal outcome decrements its parent's barrier in the same statement, once per child (the child's
-- `joined` flag: a retried child that ends again leaves its parent alone); the decrement that reaches
-- zero releases the parent. Returns one 'outcome' row per input (id, new status, queue, fenced, ...,
-- claim_token: the input's token), then one 'joined' row per parent decremented and one 'child' row per
-- child inserted (for local wake-ups).
-- Why 39 parameters of typed arrays and not one jsonb batch (as complete_simple takes): complete_simple is
-- the statement of plain batches (next/retry/done/stop/cancel with no inbox, parent or children), the
-- drain's hot path, and there one jsonb text was ~10x cheaper for the driver to encode than 14 arrays.
-- complete runs only for batches holding an await, a spawn, an inbox, a parent or a run-ahead claim; its
-- outcomes, shown signals, signals to consume and children are four differently shaped lists tied by
-- ordinal, which typed arrays keep checked by PostgreSQL's types. Moving it to jsonb would change the most
-- intricate statement for a gain on the slower path only: not done (issue 16 item 4), not measured. The
-- arrays are built in one place, Flusher._execute_full (durable/runtime/flusher.py).
with o as (
  select *
  from unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::float8[], $7::text[],
              $8::text[], $9::text[], $10::bigint[], $11::text[], $32::bool[], $34::text[], $35::text[],
              $36::text[], $37::float8[], $38::text[], $39::timestamptz[])
       with ordinality
       as o(id, token, kind, step, state, delay, awaits, result, error, seq, detail, hold, tp, ts, names,
            timeout, timeout_step, wake_at, ord)
),
held as (
  select g.id, g.machine, g.step as old_step, g.attempt as old_attempt,
         g.signal_seq, g.cancel_requested, g.joined, o.ord
  from instances g
  join o on g.id = o.id and g.lease_token = o.token
  where g.status = 'executing'
  order by g.id
  for no key update of g
),
live as (
  -- the one outcome per held row that may change it: the first of its claim in the batch
  select distinct on (h.id) h.* from held h order by h.id, h.ord
),
fenced as (
  -- outcomes whose claim is gone (reaped, re-claimed) or repeated: they change nothing, only logged
  select o.id, o.token, o.kind from o where o.ord not in (select l.ord from live l)
),
shown as (
  select p.ord, p.sid from unnest($12::bigint[], $13::bigint[]) as p(ord, sid)
),
kids as (
  insert into instances (machine, version, step, state, queue, priority, partition_key, unique_key,
                         unique_scope, eligible_at, parent_id, traceparent, tracestate, inserted_at,
                         updated_at)
  select c.machine, c.version, c.step, c.state::jsonb, c.queue, c.priority, c.partition_key,
         c.unique_key, c.scope::status[],
         coalesce(c.eligible_at, $28::timestamptz, now()) + make_interval(secs => coalesce(c.delay, 0)),
         l.id,
         c.traceparent, c.tracestate, coalesce($28::timestamptz, now()), coalesce($28::timestamptz, now())
  from unnest($14::bigint[], $15::text[], $16::int[], $17::text[], $18::text[], $19::text[],
              $20::int[], $21::text[], $22::text[], $23::text[], $24::timestamptz[], $25::text[],
              $26::text[], $29::float8[])
       as c(parent, machine, version, step, state, queue, priority, partition_key, unique_key, scope,
            eligible_at, traceparent, tracestate, delay)
  join live l on l.ord = c.parent and not l.cancel_requested
  order by c.unique_key nulls last
  on conflict (unique_guard) where unique_guard is not null do nothing
  returning id, parent_id, machine, step, queue
),
decided as (
  select o.id, o.ord, o.token, o.kind, o.step, o.state, o.delay, o.awaits, o.result, o.error, o.detail,
         o.hold, o.tp, o.ts, o.names, o.timeout, o.timeout_step, o.wake_at,
         h.machine, h.old_step, h.old_attempt, h.joined,
         (select count(*) from kids k where k.parent_id = o.id)::int as spawned,
         (case
            when h.cancel_requested or o.kind = 'cancel' then 'cancelled'
            when o.kind = 'next' and o.hold then 'executing'
            when o.kind in ('next', 'retry') then 'runnable'
            when o.kind = 'await' then
              case when h.signal_seq <> o.seq
                     or exists (select 1 from signals s
                                where s.target_id = o.id and (s.name = o.awaits or s.name = any (o.names::text[]))
                                  and not exists (select 1 from shown w where w.ord = o.ord and w.sid = s.id))
                   then 'runnable' else 'awaiting_signal' end
            when o.kind = 'spawn' then
              case when exists (select 1 from kids k where k.parent_id = o.id)
                   then 'awaiting_children' else 'runnable' end
            when o.kind = 'done' then 'done'
            when o.kind = 'stop' then 'failed'
          end)::status as new_status
  from o join live h on h.ord = o.ord
),
consumed as (
  delete from signals s
  using decided d, unnest($30::bigint[], $31::bigint[]) as e(ord, sid)
  where d.kind not in ('await', 'retry') and e.ord = d.ord and s.id = e.sid and s.target_id = d.id
  returning s.target_id, s.id as sid
),
consumed_ids as (
  select sid from consumed
),
upd as (
  update instances g
  set status = d.new_status,
      step = case when d.kind in ('next', 'spawn') then d.step
                  when d.kind = 'await' and d.step is not null then d.step
                  else g.step end,
      state = coalesce(d.state::jsonb, g.state),
      traceparent = coalesce(g.traceparent, d.tp),
      tracestate = case when g.traceparent is null then d.ts else g.tracestate end,
      result = case when d.new_status = 'done' then d.result::jsonb else g.result end,
      last_error = case when d.kind in ('retry', 'stop', 'cancel') and d.error is not null then d.error
                        when d.new_status = 'cancelled' then coalesce(d.error, 'cancelled')
                        else g.last_error end,
      attempt = case when d.kind = 'retry' then g.attempt + 1
                     when d.kind in ('next', 'spawn') then 0
                     when d.kind = 'await' and d.step is not null and d.step <> g.step then 0
                     else g.attempt end,
      eligible_at = case when d.new_status not in ('runnable', 'executing') then g.eligible_at
                         when d.kind in ('retry', 'next') and d.delay > 0
                           then coalesce($28::timestamptz, now()) + make_interval(secs => d.delay)
                         when d.kind = 'next' and d.wake_at is not null
                           then greatest(d.wake_at, coalesce($28::timestamptz, now()))
                         else coalesce($28::timestamptz, now()) end,
      awaits = case when d.kind = 'await' then d.awaits when d.kind = 'retry' then g.awaits end,
      awaits_any = case when d.kind = 'await' then d.names::text[] when d.kind = 'retry' then g.awaits_any end,
      timeout_at = case when d.kind = 'await' and d.new_status = 'awaiting_signal' and d.timeout is not null
                        then coalesce($28::timestamptz, now()) + make_interval(secs => d.timeout) end,
      timeout_step = case when d.kind = 'await' and d.new_status = 'awaiting_signal' and d.timeout is not null
                          then d.timeout_step end,
      timed_out = d.kind = 'retry' and g.timed_out,
      children_pending = case when d.kind = 'spawn' then d.spawned else g.children_pending end,
      worker_id = case when d.new_status = 'executing' then $27 end,
      lease_token = case when d.new_status = 'executing' then nextval('lease_tokens') end,
      lease_expires_at = case when d.new_status = 'executing'
                              then coalesce($28::timestamptz, now()) + make_interval(secs => $33::float8) end,
      cancel_requested = false,
      joined = g.joined or (d.new_status in ('done', 'failed', 'cancelled') and g.parent_id is not null),
      updated_at = coalesce($28::timestamptz, now())
  from decided d
  where g.id = d.id
  returning g.id, g.status, g.parent_id, g.step, g.attempt, g.queue, g.lease_token, g.signal_seq,
            g.state, d.joined as joined_before, d.machine, d.kind, d.old_step, d.old_attempt, d.token,
            d.detail, d.ord, g.timeout_at,
            case when d.kind = 'next' and g.status = 'runnable' and (d.delay > 0 or d.wake_at is not null)
                 then g.eligible_at end as wake_at
),
joins as (
  select parent_id, count(*)::int as n
  from upd
  where status in ('done', 'failed', 'cancelled') and parent_id is not null and not joined_before
  group by parent_id
),
joined as (
  update instances p
  set children_pending = p.children_pending - j.n,
      status = case when p.children_pending - j.n <= 0 and p.status = 'awaiting_children'
                    then 'runnable'::status else p.status end,
      eligible_at = case when p.children_pending - j.n <= 0 and p.status = 'awaiting_children'
                         then coalesce($28::timestamptz, now()) else p.eligible_at end,
      updated_at = coalesce($28::timestamptz, now())
  from joins j
  where p.id = j.parent_id
  returning p.id, p.machine, p.step, p.attempt, p.status, p.queue, j.n
),
logged as (
  insert into history (instance_id, machine, event, step, attempt, status, worker_id, lease_token,
                       detail, at)
  select u.id, u.machine, u.kind, u.old_step, u.old_attempt, u.status, $27, u.token,
         case when u.wake_at is not null then u.detail::jsonb || jsonb_build_object('wake_at', u.wake_at)
              when u.timeout_at is not null then u.detail::jsonb || jsonb_build_object('timeout_at', u.timeout_at)
              else u.detail::jsonb end,
         coalesce($28::timestamptz, now())
  from upd u
  union all
  select f.id, coalesce(g.machine, '?'), 'fenced', g.step, g.attempt, g.status, $27, f.token,
         jsonb_build_object('kind', f.kind), coalesce($28::timestamptz, now())
  from fenced f
  left join lateral (select machine, step, attempt, status from instances where id = f.id) g on true
  union all
  select k.id, k.machine, 'inserted', k.step, 0, 'runnable', $27, null,
         jsonb_build_object('parent_id', k.parent_id), coalesce($28::timestamptz, now())
  from kids k
  union all
  select j.id, j.machine, 'joined', j.step, j.attempt, j.status, $27, null,
         jsonb_build_object('children', j.n), coalesce($28::timestamptz, now())
  from joined j
)
select 'outcome' as kind, o.id, u.status::text as status, u.queue, (u.id is null) as fenced,
       u.lease_token, u.signal_seq, u.step, u.attempt,
       case when u.status = 'executing' then u.state::text end as state,
       case when u.status = 'executing' then
         (select coalesce(json_agg(json_build_object('id', s.id, 'name', s.name, 'payload', s.payload,
                   'dedup_key', s.dedup_key, 'traceparent', s.traceparent) order by s.id), '[]')::text
            from signals s where s.target_id = u.id and s.id not in (select c.sid from consumed_ids c))
       end as signals,
       case when u.status = 'executing' then
         (select coalesce(json_agg(json_build_object('id', c.id, 'machine', c.machine, 'status', c.status,
                   'step', c.step, 'state', c.state, 'result', c.result, 'last_error', c.last_error)
                   order by c.id), '[]')::text
            from instances c where c.parent_id = u.id)
       end as children,
       o.token as claim_token
from o left join upd u on u.ord = o.ord
union all
select 'joined', j.id, j.status::text, j.queue, false, null, null, null, null, null, null, null, null
from joined j
union all
select 'child', k.id, 'runnable', k.queue, false, null, null, null, null, null, null, null, null from kids k;

-- name: complete_simple
-- `complete` for a batch whose every outcome is plain: next (not held), retry, done, stop or cancel, of an
-- instance without a parent whose step was shown no signal. Same fencing, same row changes, same history,
-- same 'outcome' rows; nothing to join, spawn or consume. $1 is a JSON array with one array per outcome:
-- [id, lease_token, kind, next step, state json text (null = unchanged), retry delay seconds, done result
-- json text, error, history detail (an object), machine, step and attempt at pick (the held row's own: a
-- row whose token still matches has not changed since), traceparent, tracestate (adopted when the
-- instance has none), a next's wake time (Next(at=...), null = none; Next(delay=...) is the delay)]. One
-- JSON parameter rather than 15 arrays: the driver encodes it ~10x cheaper. A delayed next is runnable at
-- its wake time (history detail `wake_at`); `timed_out` and `awaits_any` are kept by retry, like `awaits`.
-- $2 worker id, $3 now. The caller sorts the batch by id (lock order). Fenced per outcome (id and token),
-- as `complete`: of two outcomes of one instance only the live claim's may change the row, and a claim
-- repeated in the batch counts once; the 'outcome' rows carry the input's token (claim_token).
-- plan: generic
with o as (
  select (e->>0)::bigint as id, (e->>1)::bigint as token, e->>2 as kind, e->>3 as step, e->>4 as state,
         (e->>5)::float8 as delay, e->>6 as result, e->>7 as error, e->8 as detail,
         e->>9 as machine, e->>10 as old_step, (e->>11)::int as old_attempt, e->>12 as tp, e->>13 as ts,
         (e->>14)::timestamptz as wake_at, t.ord
  -- jsonb, not json: `->>` on a json value re-parses its text for every field (14 per outcome: ~8 µs
  -- per outcome for 500), on jsonb it is a lookup in the parsed array (~0.6 µs)
  from jsonb_array_elements($1::jsonb) with ordinality as t(e, ord)
),
once as (
  -- each claim's first outcome in the batch (a repeated claim must not be two sources for one row)
  select distinct on (o.id, o.token) o.* from o order by o.id, o.token, o.ord
),
upd as (
  update instances g
  set status = (case
                  when g.cancel_requested or o.kind = 'cancel' then 'cancelled'
                  when o.kind in ('next', 'retry') then 'runnable'
                  when o.kind = 'done' then 'done'
                  else 'failed'
                end)::status,
      step = case when o.kind = 'next' then o.step else g.step end,
      state = coalesce(o.state::jsonb, g.state),
      traceparent = coalesce(g.traceparent, o.tp),
      tracestate = case when g.traceparent is null then o.ts else g.tracestate end,
      result = case when o.kind = 'done' and not g.cancel_requested then o.result::jsonb else g.result end,
      last_error = case when g.cancel_requested or o.kind = 'cancel' then coalesce(o.error, 'cancelled')
                        when o.kind in ('retry', 'stop') and o.error is not null then o.error
                        else g.last_error end,
      attempt = case when o.kind = 'retry' then g.attempt + 1 when o.kind = 'next' then 0 else g.attempt end,
      eligible_at = case when g.cancel_requested or o.kind not in ('next', 'retry') then g.eligible_at
                         when o.delay > 0
                           then coalesce($3::timestamptz, now()) + make_interval(secs => o.delay)
                         when o.wake_at is not null then greatest(o.wake_at, coalesce($3::timestamptz, now()))
                         else coalesce($3::timestamptz, now()) end,
      awaits = case when o.kind = 'retry' then g.awaits end,
      awaits_any = case when o.kind = 'retry' then g.awaits_any end,
      timed_out = o.kind = 'retry' and g.timed_out,
      worker_id = null, lease_token = null, lease_expires_at = null, cancel_requested = false,
      updated_at = coalesce($3::timestamptz, now())
  from once o
  where g.id = o.id and g.lease_token = o.token and g.status = 'executing'
  returning g.id, g.status, g.queue, o.machine, o.kind, o.old_step, o.old_attempt, o.token, o.detail, o.ord,
            case when o.kind = 'next' and g.status = 'runnable' and (o.delay > 0 or o.wake_at is not null)
                 then g.eligible_at end as wake_at
),
logged as (
  insert into history (instance_id, machine, event, step, attempt, status, worker_id, lease_token,
                       detail, at)
  select u.id, u.machine, u.kind, u.old_step, u.old_attempt, u.status, $2, u.token,
         case when u.wake_at is null then u.detail else u.detail || jsonb_build_object('wake_at', u.wake_at) end,
         coalesce($3::timestamptz, now())
  from upd u
  union all
  select f.id, coalesce(g.machine, '?'), 'fenced', g.step, g.attempt, g.status, $2, f.token,
         jsonb_build_object('kind', f.kind), coalesce($3::timestamptz, now())
  from o f
  left join lateral (select machine, step, attempt, status from instances where id = f.id) g on true
  where f.ord not in (select u.ord from upd u)
)
select 'outcome' as kind, o.id, u.status::text as status, u.queue, (u.id is null) as fenced,
       o.token as claim_token
from o left join upd u on u.ord = o.ord;

-- name: insert_instances
-- Insert a batch of instances in one statement; a row whose unique key is occupied (by an existing row
-- or an earlier row of the batch) is skipped. Rows are inserted in unique-key order (no deadlock
-- between concurrent batches). $1 machine, $2 version, $3 step, $4 state json, $5 queue, $6 priority,
-- $7 partition key, $8 unique key, $9 unique scope (status[] literal), $10 eligible_at (NULL = now),
-- $11 traceparent, $12 tracestate, $13 parent id, $15 delay seconds added to eligible_at; $14 now;
-- $16 notify channel (NULL = none): one pg_notify per distinct queue with a runnable row, delivered at
-- commit, its payload '<$17>|<queue>' ($17 the inserting Database's token: its own runtimes, woken
-- locally, ignore it).
-- Handoff (beyond the spec's insert): $18 a queue (NULL = none) whose idle runtime in the inserting
-- process takes up to $21 of the new rows at once, as if it had picked them: the first $21 rows of
-- queue $18 that are due now and have no partition key, unique key or parent are inserted `executing`,
-- claimed by worker $19 for $20 seconds with a fresh lease token. It saves the pick's round trip and
-- commit between an insert and its step; the rows are the same a pick would leave (the pick writes no
-- history either), their `inserted` history row says `executing`.
-- $22 the rows' attributes (a JSON object each, NULL = none; schema v11).
-- Returns one row per input, in input order: ord, the id it was given and its lease token when it was
-- handed off (else NULL) with its state as the database stores it (jsonb text, as a pick returns it); the
-- first row also carries `inserted`, the ids actually inserted (an id missing there was skipped as a
-- duplicate). No join or lookup per row between the batch and the inserted rows: a cached plan that
-- assumes a small batch stays linear for a large one.
-- plan: generic
with arg as (
  select s.*,
         -- a handoff candidate: the handoff queue, due now, nothing that a pick would have to check
         ($18::text is not null and s.queue = $18::text and s.partition_key is null and s.unique_key is null
          and s.parent_id is null and s.eligible_at is null and coalesce(s.delay, 0) = 0) as candidate
  from unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[],
              $8::text[], $9::text[], $10::timestamptz[], $11::text[], $12::text[], $13::bigint[],
              $15::float8[], $22::text[])
       with ordinality as s(machine, version, step, state, queue, priority, partition_key, unique_key,
                            scope, eligible_at, traceparent, tracestate, parent_id, delay, attributes, ord)
),
src as (
  select a.ord, nextval('instances_id_seq') as id, a.machine, a.version, a.step, a.state, a.queue,
         a.priority, a.partition_key, a.unique_key, a.scope, a.eligible_at, a.traceparent, a.tracestate,
         a.parent_id, a.delay, a.attributes,
         case when a.candidate and a.nth <= $21::int then nextval('lease_tokens') end as token
  from (select arg.*, count(*) filter (where arg.candidate) over (order by arg.ord) as nth from arg) a
),
ins as (
  insert into instances (id, machine, version, step, status, state, queue, priority, partition_key,
                         unique_key, unique_scope, eligible_at, worker_id, lease_token, lease_expires_at,
                         traceparent, tracestate, parent_id, inserted_at, updated_at, attributes)
  select id, machine, version, step, (case when token is null then 'runnable' else 'executing' end)::status,
         state::jsonb, queue, priority, partition_key, unique_key, scope::status[],
         coalesce(eligible_at, $14::timestamptz, now()) + make_interval(secs => coalesce(delay, 0)),
         case when token is not null then $19::text end, token,
         case when token is not null
              then coalesce($14::timestamptz, now()) + make_interval(secs => $20::float8) end,
         traceparent, tracestate, parent_id, coalesce($14::timestamptz, now()), coalesce($14::timestamptz, now()),
         attributes::jsonb
  from src
  order by unique_key nulls last, ord
  on conflict (unique_guard) where unique_guard is not null do nothing
  returning id, machine, step, queue, eligible_at, status
),
logged as (
  insert into history (instance_id, machine, event, step, attempt, status, worker_id, detail, at)
  select id, machine, 'inserted', step, 0, status, case when status = 'executing' then $19::text end,
         jsonb_build_object('queue', queue, 'eligible_at', eligible_at), coalesce($14::timestamptz, now())
  from ins
),
notified as (
  -- a wake-up hint for runtimes in other processes (LISTEN on channel $16); NULL = no notify
  select pg_notify($16::text, $17::text || '|' || d.queue)
  from (select distinct queue from ins where status = 'runnable') d
  where $16::text is not null
)
select s.ord, s.id, s.token as lease_token,
       case when s.token is not null then s.state::jsonb::text end as state,
       case when s.ord = 1 then (select coalesce(array_agg(i.id), '{}') from ins i) end as inserted,
       case when s.ord = 1 then (select count(*) from notified) end as notified
from src s order by s.ord;

-- name: insert_instance
-- insert_instances for a batch of exactly one row (db.insert, insert_many of one spec), with the same
-- parameter numbers as scalars instead of one-element arrays: $1 machine, $2 version, $3 step, $4 state
-- json, $5 queue, $6 priority, $7 partition key, $8 unique key, $9 unique scope (status[] literal), $10
-- eligible_at (NULL = now), $11 traceparent, $12 tracestate, $13 parent id, $14 now, $15 delay seconds,
-- $16 notify channel (NULL = none), $17 the inserting Database's token, $18-$21 handoff (queue, worker,
-- lease seconds, how many rows it takes), $22 attributes (a JSON object, NULL = none). The same row,
-- history row, NOTIFY hint and answer as insert_instances gives for that batch of one
-- (tests/test_insert_one.py compares the two column by column). It exists for the latency of a lone
-- insert: no unnest of 15 arrays, window, sort or join of the batch; backend CPU per single-row insert
-- (synchronous_commit off, back to back, load 9): 110-130 us against 160-200 us for insert_instances.
-- plan: generic
with src as (
  select nextval('instances_id_seq') as id,
         -- a handoff candidate (as insert_instances): the handoff queue, due now, nothing a pick would check
         case when $18::text is not null and $21::int >= 1 and $5::text = $18::text and $7::text is null
                   and $8::text is null and $13::bigint is null and $10::timestamptz is null
                   and coalesce($15::float8, 0) = 0
              then nextval('lease_tokens') end as token
),
ins as (
  insert into instances (id, machine, version, step, status, state, queue, priority, partition_key,
                         unique_key, unique_scope, eligible_at, worker_id, lease_token, lease_expires_at,
                         traceparent, tracestate, parent_id, inserted_at, updated_at, attributes)
  select id, $1::text, $2::int, $3::text, (case when token is null then 'runnable' else 'executing' end)::status,
         $4::text::jsonb, $5::text, $6::int, $7::text, $8::text, $9::text::status[],
         coalesce($10::timestamptz, $14::timestamptz, now()) + make_interval(secs => coalesce($15::float8, 0)),
         case when token is not null then $19::text end, token,
         case when token is not null
              then coalesce($14::timestamptz, now()) + make_interval(secs => $20::float8) end,
         $11::text, $12::text, $13::bigint, coalesce($14::timestamptz, now()), coalesce($14::timestamptz, now()),
         $22::text::jsonb
  from src
  on conflict (unique_guard) where unique_guard is not null do nothing
  returning id, machine, step, queue, eligible_at, status
),
logged as (
  insert into history (instance_id, machine, event, step, attempt, status, worker_id, detail, at)
  select id, machine, 'inserted', step, 0, status, case when status = 'executing' then $19::text end,
         jsonb_build_object('queue', queue, 'eligible_at', eligible_at), coalesce($14::timestamptz, now())
  from ins
),
notified as (
  -- a wake-up hint for runtimes in other processes (LISTEN on channel $16); NULL = no notify
  select pg_notify($16::text, $17::text || '|' || queue)
  from ins
  where status = 'runnable' and $16::text is not null
)
select 1::bigint as ord, s.id, s.token as lease_token,
       case when s.token is not null then $4::text::jsonb::text end as state,
       (select coalesce(array_agg(i.id), '{}') from ins i) as inserted,
       (select count(*) from notified) as notified
from src s;

-- name: deliver_signal
-- Deliver signal $2 with payload $3 (json) and dedup key $4 to instance $1; $5 sender traceparent,
-- $6 now. The target row is locked first, the signal inserted (unless the dedup key was seen or the
-- target is terminal), then the target rewritten: signal_seq + 1 always, and runnable when it awaits
-- this name (any of an await's names, `awaits_any`). `awaits` is kept: the woken step consumes on its
-- outcome; an await's timeout (`timeout_at`) is dropped. A wake NOTIFYs the queue on the
-- schema's channel (durable_<schema>) so runtimes in other processes pick it up at once.
-- Returns nothing for a missing target, else the target's status before, the new signal id (NULL for a
-- duplicate or a terminal target) and the status after.
with target as (
  select id, status, machine, step, attempt from instances where id = $1 for no key update
),
stored as (
  insert into signals (target_id, name, payload, dedup_key, traceparent, inserted_at)
  select t.id, $2, $3::text::jsonb, $4, $5, coalesce($6::timestamptz, now())
  from target t
  where t.status not in ('done', 'failed', 'cancelled')
  on conflict (target_id, dedup_key) do nothing
  returning id
),
woken as (
  update instances g
  set signal_seq = g.signal_seq + 1,
      status = case when g.status = 'awaiting_signal' and (g.awaits = $2 or $2 = any (g.awaits_any))
                    then 'runnable'::status else g.status end,
      eligible_at = case when g.status = 'awaiting_signal' and (g.awaits = $2 or $2 = any (g.awaits_any))
                         then coalesce($6::timestamptz, now()) else g.eligible_at end,
      timeout_at = case when g.status = 'awaiting_signal' and (g.awaits = $2 or $2 = any (g.awaits_any))
                        then null else g.timeout_at end,
      updated_at = coalesce($6::timestamptz, now())
  where g.id = $1 and exists (select 1 from stored)
  returning g.status, g.queue
),
notified as (
  -- a wake-up hint to other processes' runtimes (the channel of the schema in search_path)
  select pg_notify(left('durable_' || current_schema(), 63), '|' || w.queue)  -- '<sender>|<queue>', no sender
  from woken w where w.status = 'runnable'
),
logged as (
  insert into history (instance_id, machine, event, step, attempt, status, detail, at)
  select t.id, t.machine, 'signal', t.step, t.attempt, w.status,
         jsonb_build_object('name', $2::text, 'signal_id', s.id, 'dedup_key', $4::text),
         coalesce($6::timestamptz, now())
  from target t, stored s, woken w
)
select t.status::text as before, (select id from stored) as signal_id,
       (select status::text from woken) as after, (select queue from woken) as queue,
       (select count(*) from notified) as notified
from target t;

-- name: cancel_instance
-- Cancel the instances $1 (ids: the roots) and every descendant of theirs that is not terminal, reason $2;
-- $3 now; $4 the most instances one call may walk (the roots' trees together; more: nothing changes and
-- `too_many` is true); $5 who cancelled the roots (history detail `by`, e.g. 'operator'; a descendant's
-- `by` is its root's id). The walk descends through live and cancelled instances (not below done or failed
-- ones: their children, if any live, were retried on their own). Per walked instance: an idle one
-- (runnable or awaiting) ends cancelled at once; an executing one is marked cancel_requested (its runtime
-- cancels the step at its next heartbeat, and its outcome, whatever it is, ends it cancelled); a terminal
-- one is left alone. Every idle child that ends cancelled decrements its parent's barrier once (its
-- `joined` flag, as in `complete`), counted per parent in one update; the decrement that reaches zero
-- releases a parent that is not itself cancelled. Rows are locked children first (id descending: a child's
-- id is above its parent's), the order `complete` takes them in. `raced` is true when a walked row
-- changed between the walk's snapshot and its lock (e.g. a spawn committed children the walk could not
-- see): run the statement again to reach them. Returns one row per root found: its status before and
-- after, whether a cancel was requested, and per call: cancelled, requested (counts), woken (queues of
-- parents released), too_many, raced, ended (the ids cancelled now, for result() waiters), locked (every id
-- this call locked: the simulator's cancel_lock hold knows which rows it holds, executing ones included).
with recursive tree(id, root, status, is_root) as (
  -- union, not union all: a row seen twice ends the walk there (a parent_id cycle, written by hand, cannot
  -- loop it)
  select g.id, g.id, g.status, true from instances g where g.id = any($1::bigint[])
  union
  select c.id, t.root, c.status, false
  from tree t join instances c on c.parent_id = t.id
  where t.status not in ('done', 'failed')
),
walked as (
  -- bounded: the walk stops one row past the limit
  select * from tree limit $4::int + 1
),
nodes as (
  -- an instance under two roots of one call counts once, as a root if it is one
  select distinct on (w.id) w.id, w.root, w.status, w.is_root
  from walked w
  where (select count(*) from walked) <= $4::int
  order by w.id, w.is_root desc
),
target as (
  select g.id, g.status, g.parent_id, g.joined, g.cancel_requested, n.root, n.is_root, n.status as seen
  from instances g join nodes n on n.id = g.id
  order by g.id desc
  for no key update of g
),
decrements as (
  -- per parent: its idle children this call cancels that were not joined yet
  select t.parent_id as id, count(*)::int as n
  from target t
  where t.status in ('runnable', 'awaiting_signal', 'awaiting_children') and t.parent_id is not null and not t.joined
  group by t.parent_id
),
touched as (
  select coalesce(t.id, d.id) as id, t.status as locked, coalesce(d.n, 0) as n, t.root, t.is_root,
         coalesce(t.status in ('runnable', 'awaiting_signal', 'awaiting_children'), false) as idle,
         coalesce(t.status = 'executing' and not t.cancel_requested, false) as request
  from target t full join decrements d on d.id = t.id
),
upd as (
  -- one update per row (a row written twice in one statement keeps one of the writes)
  update instances g
  set status = case when x.idle then 'cancelled'::status
                    when x.n > 0 and g.status = 'awaiting_children' and g.children_pending - x.n <= 0
                      then 'runnable'::status
                    else g.status end,
      children_pending = greatest(g.children_pending - x.n, 0),  -- (never below 0, even on rows written by hand)
      cancel_requested = g.cancel_requested or x.request,
      last_error = case when x.idle then $2 else g.last_error end,
      worker_id = case when x.idle then null else g.worker_id end,
      lease_token = case when x.idle then null else g.lease_token end,
      lease_expires_at = case when x.idle then null else g.lease_expires_at end,
      joined = case when x.idle then g.parent_id is not null else g.joined end,
      eligible_at = case when not x.idle and x.n > 0 and g.status = 'awaiting_children'
                          and g.children_pending - x.n <= 0
                         then coalesce($3::timestamptz, now()) else g.eligible_at end,
      updated_at = coalesce($3::timestamptz, now())
  from touched x
  where g.id = x.id and (x.idle or x.request or x.n > 0)
  returning g.id, g.machine, g.step, g.attempt, g.status, g.queue, x.idle, x.request, x.n, x.root, x.is_root
),
logged as (
  insert into history (instance_id, machine, event, step, attempt, status, detail, at)
  select u.id, u.machine, 'cancelled', u.step, u.attempt, u.status,
         jsonb_build_object('reason', $2::text, 'requested', u.request,
                            'by', case when u.is_root then to_jsonb($5::text) else to_jsonb(u.root) end),
         coalesce($3::timestamptz, now())
  from upd u
  where u.idle or u.request
  union all
  select u.id, u.machine, 'joined', u.step, u.attempt, u.status, jsonb_build_object('children', u.n),
         coalesce($3::timestamptz, now())
  from upd u
  where u.n > 0
)
select r.id, coalesce(t.status, r.status)::text as before,
       coalesce(u.status, t.status, r.status)::text as after,
       coalesce(t.status = 'executing', false) as requested,
       (select count(*) from upd where idle)::int as cancelled,
       (select count(*) from upd where request)::int as requested_count,
       array(select distinct queue from upd where not idle and status = 'runnable') as woken,
       (select count(*) from walked) > $4::int as too_many,
       exists (select 1 from target t2 where t2.status <> t2.seen) as raced,
       array(select id from upd where idle order by id) as ended,
       array(select id from target order by id) as locked
from instances r
left join target t on t.id = r.id
left join upd u on u.id = r.id
where r.id = any($1::bigint[])
order by r.id;

-- name: retry_instance
-- Put failed (or cancelled) instance $1 back to runnable at the step where it ended, attempt reset,
-- eligible now; recorded in history. $2 now. Returns the status before and after.
with target as (
  select id, status, machine, step, attempt from instances where id = $1 for no key update
),
revived as (
  update instances g
  set status = 'runnable', attempt = 0, eligible_at = coalesce($2::timestamptz, now()),
      cancel_requested = false, result = null, updated_at = coalesce($2::timestamptz, now())
  from target t
  where g.id = t.id and t.status in ('failed', 'cancelled')
  returning g.id, g.queue
),
logged as (
  insert into history (instance_id, machine, event, step, attempt, status, detail, at)
  select t.id, t.machine, 'retried', t.step, t.attempt, 'runnable',
         jsonb_build_object('from', t.status::text), coalesce($2::timestamptz, now())
  from target t join revived r on r.id = t.id
)
select t.status::text as before,
       case when exists (select 1 from revived) then 'runnable' else t.status::text end as after,
       (select queue from revived) as queue
from target t;

-- name: get_instance
-- One instance by id $1, every column, state/result as json text. eligible_at (and lease_expires_at past
-- year 9999) are clamped to Python's datetime range, years 1..9999 ('infinity' reads as 9999-12-31
-- 23:59:59.999999 UTC; least/greatest would turn a NULL lease_expires_at into a bound, hence its case):
-- durable writes no such value (delays are at most durable.MAX_DELAY), but a row written otherwise must
-- stay readable (asyncpg raises OverflowError past year 9999 and returns a naive datetime for infinity).
-- An await's names (awaits_any), timeout (timeout_at, clamped like lease_expires_at) and timeout step, and
-- whether the step about to run follows a timeout (timed_out), for db.get, durable show and the console.
select id, machine, version, step, status::text as status, state::text as state, result::text as result,
       awaits, queue, priority, partition_key,
       least(greatest(eligible_at, '0001-01-01 00:00:00+00'), '9999-12-31 23:59:59.999999+00') as eligible_at,
       attempt, last_error, worker_id, lease_token,
       case when lease_expires_at > '9999-12-31 23:59:59.999999+00' then '9999-12-31 23:59:59.999999+00'
            else lease_expires_at end as lease_expires_at,
       signal_seq, cancel_requested, parent_id, children_pending, unique_key,
       unique_scope::text[] as unique_scope, traceparent, tracestate, inserted_at, updated_at,
       awaits_any, timeout_step, timed_out,
       case when timeout_at > '9999-12-31 23:59:59.999999+00' then '9999-12-31 23:59:59.999999+00'
            else timeout_at end as timeout_at,
       attributes::text as attributes
from instances where id = $1;

-- name: get_inbox
-- The pending signals of instance $1, oldest first.
select id, name, payload::text as payload, dedup_key, traceparent, inserted_at
from signals where target_id = $1 order by id;

-- name: get_children
-- The children of instance $1 with their status, oldest first.
select id, machine, version, step, status::text as status, state::text as state, result::text as result,
       last_error, attempt
from instances where parent_id = $1 order by id;

-- name: get_history
-- The history of instance $1 in event order.
select id, xid::text as xid, instance_id, machine, event, step, attempt, status::text as status,
       worker_id, lease_token, detail::text as detail, at
from history where instance_id = $1 order by id;

-- name: register_worker
-- Register (or re-register) runtime $1 on host $2, pid $3, serving queues $4; $5 gauges json, $6 now.
insert into workers (id, host, pid, queues, gauges, started_at, seen_at, stopped_at)
values ($1, $2, $3, $4, $5::text::jsonb, coalesce($6::timestamptz, now()), coalesce($6::timestamptz, now()),
        null)
on conflict (id) do update
set host = excluded.host, pid = excluded.pid, queues = excluded.queues, gauges = excluded.gauges,
    started_at = excluded.started_at, seen_at = excluded.seen_at, stopped_at = null;

-- name: stop_worker
-- Mark runtime $1 stopped (graceful shutdown) with its final gauges $2; $3 now.
update workers set stopped_at = coalesce($3::timestamptz, now()), seen_at = coalesce($3::timestamptz, now()),
       gauges = $2::text::jsonb
where id = $1;

-- name: migrated_version
-- The highest applied schema version (0 when none).
select coalesce(max(version), 0) from schema_migrations;

-- name: lease_lost
-- Runtime $7 lost claims while their steps ran (a heartbeat could not extend them: reaped, fenced,
-- re-claimed; or their lease passed by the runtime's own count, its event loop blocked or its heartbeats
-- failing): the steps were cancelled and their outcomes are never committed. Per claim: $1 id, $2 token,
-- $3 attempt bump (1: the step had started, 0: it had not), $4 why (text), $5 its step, $6 its attempt;
-- $8 now. A claim still held (executing, same token: only the runtime's count had passed) goes back to
-- runnable at once, attempt + $3, as the reaper would return it; a claim already gone leaves its row alone
-- (it may be someone else's now). Either way one 'lease_lost' history row per claim, with the step and
-- attempt that lost it and the row's status after. Returns the ids released (with their queue, for
-- wake-ups).
with claim as (
  select * from unnest($1::bigint[], $2::bigint[], $3::int[], $4::text[], $5::text[], $6::int[])
       as c(id, token, bump, why, step, attempt)
),
-- include: release_held now=$8
logged as (
  insert into history (instance_id, machine, event, step, attempt, status, worker_id, lease_token, detail, at)
  select a.id, g.machine, 'lease_lost', a.step, a.attempt,
         case when r.id is not null then 'runnable'::status else g.status end, $7, a.token,
         jsonb_build_object('reason', a.why, 'released', r.id is not null, 'started', a.bump > 0),
         coalesce($8::timestamptz, now())
  from claim a
  join instances g on g.id = a.id
  left join released r on r.id = a.id
)
select id, queue from released;

-- name: workers_on_host
-- The registry rows of host $1 not marked stopped: runtimes that may still hold claims (the caller checks
-- whether their processes are alive).
select id, pid, seen_at from workers where host = $1 and stopped_at is null order by id;

-- name: release_dead_workers
-- At a runtime's start: the claims of runtimes known to be dead ($1 worker ids: registry rows of this
-- host whose process is gone, or a dead predecessor with the starting runtime's own id) go back to
-- runnable at once, attempt + 1, exactly as the reaper returns an expired lease, instead of waiting out
-- their leases. $2 why, per id (text), $3 the starting runtime, $4 now. History 'reaped' with a detail
-- naming the dead worker and why. The dead workers' registry rows are marked stopped (their claims are
-- gone). Returns the released rows (id, queue).
with dead as (
  select * from unnest($1::text[], $2::text[]) as d(worker_id, why)
),
claimed as (
  select g.id, g.worker_id, g.lease_token, d.why
  from instances g
  join dead d on g.worker_id = d.worker_id
  where g.status = 'executing'
  order by g.id
  for no key update of g skip locked
),
released as (
  update instances g
  set status = 'runnable', worker_id = null, lease_token = null, lease_expires_at = null,
      attempt = g.attempt + 1, updated_at = coalesce($4::timestamptz, now())
  from claimed c
  where g.id = c.id
  returning g.id, g.machine, g.step, g.attempt, g.queue, c.worker_id, c.lease_token, c.why
),
logged as (
  insert into history (instance_id, machine, event, step, attempt, status, worker_id, lease_token, detail, at)
  select id, machine, 'reaped', step, attempt - 1, 'runnable', worker_id, lease_token,
         jsonb_build_object('dead_worker', worker_id, 'reason', why, 'by', $3::text),
         coalesce($4::timestamptz, now())
  from released
),
stopped as (
  update workers w set stopped_at = coalesce($4::timestamptz, now())
  from dead d
  where w.id = d.worker_id and w.stopped_at is null
  returning w.id
)
select id, queue from released;

-- name: fire_timeouts
-- The timer sweep (every runtime's reaper loop runs it): up to $2 awaits whose timeout passed before $1
-- (now) become runnable at their timeout_step (NULL: the step a signal would have woken, kept as the row's
-- step), attempt 0 when the step changes, with `timed_out` set (ctx.timed_out) and `awaits`/`awaits_any`
-- cleared, so the timed-out step consumes no awaited signal it did not read by name. Rows are locked in
-- deadline order, locked ones skipped. No lost wake-up: deliver_signal locks the row too, so a signal either
-- wakes the row first (it is no longer awaiting and this statement's re-check skips it) or comes after the
-- timeout fired and stays in the inbox, shown to the timed-out step. History 'timed_out' (detail: the
-- deadline, the awaited names, the step it runs), under the step and attempt that awaited (as every event
-- row: the new attempt beside the old step read as an attempt going backwards). NOTIFYs each woken queue on the schema's channel.
-- Returns the fired rows (id, queue) and, on every row, `next_in`: seconds until the next deadline still
-- pending (NULL: none), for the sweep's next run.
with due as (
  select id, step, attempt, awaits, awaits_any, timeout_at
  from instances
  where status = 'awaiting_signal' and timeout_at <= coalesce($1::timestamptz, now())
  order by timeout_at
  limit $2
  for no key update skip locked
),
fired as (
  update instances g
  set status = 'runnable', step = coalesce(g.timeout_step, g.step),
      attempt = case when g.timeout_step is not null and g.timeout_step <> g.step then 0 else g.attempt end,
      eligible_at = coalesce($1::timestamptz, now()), timed_out = true, awaits = null, awaits_any = null,
      timeout_at = null, timeout_step = null, updated_at = coalesce($1::timestamptz, now())
  from due d
  where g.id = d.id and g.status = 'awaiting_signal'
  returning g.id, g.machine, g.step, g.attempt, g.queue, d.step as old_step, d.attempt as old_attempt,
            d.awaits, d.awaits_any, d.timeout_at
),
logged as (
  insert into history (instance_id, machine, event, step, attempt, status, detail, at)
  select f.id, f.machine, 'timed_out', f.old_step, f.old_attempt, 'runnable',
         jsonb_build_object('timeout_at', f.timeout_at, 'signal', coalesce(to_jsonb(f.awaits_any), to_jsonb(f.awaits)),
                            'next', f.step),
         coalesce($1::timestamptz, now())
  from fired f
),
notified as (
  select pg_notify(left('durable_' || current_schema(), 63), '|' || q.queue)  -- '<sender>|<queue>', no sender
  from (select distinct queue from fired) q
)
select f.id, f.queue, (select count(*) from notified) as notified,
       (select extract(epoch from min(p.timeout_at) - coalesce($1::timestamptz, now()))::float8
          from instances p
          where p.status = 'awaiting_signal' and p.timeout_at > coalesce($1::timestamptz, now())) as next_in
from fired f
union all
select null, null, (select count(*) from notified),
       (select extract(epoch from min(p.timeout_at) - coalesce($1::timestamptz, now()))::float8
          from instances p
          where p.status = 'awaiting_signal' and p.timeout_at > coalesce($1::timestamptz, now()))
where not exists (select 1 from fired);

-- name: instance_outcome
-- What Database.result reads of instance $1: its status, result (json text) and last error; nothing for
-- a missing id.
select status::text as status, result::text as result, last_error from instances where id = $1;

-- name: instance_by_key
-- The instance unique key $1 addresses (db.get/signal/result(key=...)): the one that holds the key in its
-- unique_scope now, else the most recent (highest id) inserted with it; nothing when none ever had it.
-- `id + 0`: a generic plan would otherwise walk the primary key backwards filtering on the key, past
-- every newer row; this way it reads the key's rows from instances_unique_key and sorts them.
(select id, true as holds from instances where unique_guard = $1)
union all
(select id, false from instances where unique_key = $1 order by id + 0 desc limit 1)
limit 1;

-- name: key_holder
-- The instance that holds unique key $1 in its unique_scope now (insert's on_conflict); nothing if none.
select id from instances where unique_guard = $1;

-- name: announce_ended
-- A hint to other processes' Database.result waiters that instances ended: one pg_notify on channel $1
-- per payload of $2 ('<sender token>|<id>,<id>,...' or '<token>|*'), delivered when this commits. A
-- statement of its own, sent after the commits it announces (durable/results.py says why).
select count(pg_notify($1::text, p)) from unnest($2::text[]) as p;
