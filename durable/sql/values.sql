-- Named values (schema v10, durable/values.py): bytes a step stores under a name, apart from the instance's
-- state, read only when asked for. No engine statement (pick, heartbeat, complete, complete_simple) reads
-- instance_values: a claim costs the same whatever values its instance holds.
--
-- Fencing (deviation from FerricFlow's value_put, which writes by owner id alone): a put from a step is a
-- single statement that locks the instance row FOR SHARE only while it is `executing` under the step's lease
-- token, and writes in the same statement. FOR SHARE conflicts with the FOR NO KEY UPDATE of every statement
-- that ends or moves a claim (reap, release, complete, the pick's re-claim, cancel), so either the put commits
-- first (it was made under a live lease: the reaper waits for it) or the claim has already changed, the row no
-- longer matches (READ COMMITTED re-checks the locked row's newest version) and nothing is written: a zombie
-- step, whose lease was reaped or whose row was claimed again, cannot write or override a value. The put is not
-- staged until the step's outcome: like a stream append it is durable at once (a step's artifact survives
-- the step's crash, and the next attempt can read it), and a retried step sees what an earlier attempt put
-- (hence override=False accepts the same bytes again: a re-run of an idempotent put is no error).

-- name: value_put
-- Store value $3 (name) = $4 (bytes) for instance $1 under the step's lease token $2; $5 override (true:
-- replace an existing value of that name; false: keep it), $6 now (NULL = now()), $7 the most values one
-- instance may hold (a new name past it is refused; replacing an existing name is not). Fenced: only while the
-- instance is executing under token $2 (see the header). size and sha256 are computed here.
-- Returns one row: owned (false: fenced, nothing written), held (values the instance held before), and the
-- value stored under the name after the statement (size, sha256 hex; NULL when nothing was written), and the
-- sha256 of $4 (so a refused override=false tells an identical re-put from a different one).
with owner as (
  select g.id
  from instances g
  where g.id = $1::bigint and g.status = 'executing' and g.lease_token = $2::bigint
  for share of g
),
arg as (
  select o.id, $4::bytea as data, sha256($4::bytea) as digest,
         (select count(*) from instance_values v where v.instance_id = o.id) as held,
         exists (select 1 from instance_values v where v.instance_id = o.id and v.name = $3::text) as known
  from owner o
),
put as (
  insert into instance_values as v (instance_id, name, data, size, sha256, lease_token, written_at)
  select a.id, $3::text, a.data, octet_length(a.data), a.digest, $2::bigint, coalesce($6::timestamptz, now())
  from arg a
  where a.known or a.held < $7::int
  on conflict (instance_id, name) do update
    -- override=false keeps the stored value (the row is rewritten as it was: RETURNING then shows it)
    set data = case when $5::boolean then excluded.data else v.data end,
        size = case when $5::boolean then excluded.size else v.size end,
        sha256 = case when $5::boolean then excluded.sha256 else v.sha256 end,
        lease_token = case when $5::boolean then excluded.lease_token else v.lease_token end,
        written_at = case when $5::boolean then excluded.written_at else v.written_at end
  returning v.size, v.sha256
)
select exists (select 1 from owner) as owned, (select held from arg) as held,
       p.size, encode(p.sha256, 'hex') as sha256, encode(sha256($4::bytea), 'hex') as wanted
from (select 1) as one
left join put p on true;

-- name: value_get
-- The value named $2 of instance $1: its bytes, size and sha256 (hex); no row when there is none.
select data, size, encode(sha256, 'hex') as sha256
from instance_values
where instance_id = $1::bigint and name = $2::text;

-- name: value_mget
-- The values refs ($1 instance ids, $2 names, $3 sha256 hex) name, in the refs' order: one row per ref, data
-- NULL when the instance has no such value or its sha256 differs from the ref's (overridden since the ref
-- was taken, or the instance is gone).
select r.ord, v.data
from unnest($1::bigint[], $2::text[], $3::text[]) with ordinality as r(instance_id, name, sha256, ord)
left join instance_values v
  on v.instance_id = r.instance_id and v.name = r.name and v.sha256 = decode(r.sha256, 'hex')
order by r.ord;

-- name: value_list
-- The values of instance $1 without their bytes, by name: name, size, sha256 (hex), the lease token that
-- wrote it and when (durable show, the console, ctx.values.list()).
select name, size, encode(sha256, 'hex') as sha256, lease_token, written_at
from instance_values
where instance_id = $1::bigint
order by name;
