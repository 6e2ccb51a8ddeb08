-- Durable Streams: every statement of durable.streams (the store) and durable.serve (the HTTP server).
-- Tables: streams, stream_messages, stream_producers (migration 0002). Positions are byte offsets.

-- name: stream_get
-- The stream at path $1 (soft-deleted ones included) with `expired`: its TTL or absolute expiry passed.
select s.*, s.expires_at_ts is not null and now() >= s.expires_at_ts
            or s.ttl_seconds is not null and now() >= s.accessed_at + make_interval(secs => s.ttl_seconds)
            as expired
from streams s where s.path = $1;

-- name: stream_lock
-- Like stream_get, and lock the row for the rest of the transaction: appends, closes and deletes of
-- one stream serialize here, so offsets are assigned and committed in order.
select s.*, s.expires_at_ts is not null and now() >= s.expires_at_ts
            or s.ttl_seconds is not null and now() >= s.accessed_at + make_interval(secs => s.ttl_seconds)
            as expired
from streams s where s.path = $1
for update;

-- name: stream_lock_id
-- Lock stream $1 (by id) for the rest of the transaction; returns its row.
select * from streams where id = $1 for update;

-- name: stream_insert
-- Create the stream at path $1: content type $2, TTL $3 seconds, expiry text $4 and timestamp $5,
-- closed $6, fork source id $7, fork offset $8, sub-offset $9, source path as given $10, whether the
-- fork offset was given $11, initial tail $12. Returns the new id, nothing if the path is taken.
insert into streams (path, content_type, ttl_seconds, expires_at, expires_at_ts, closed, forked_from,
                     fork_offset, fork_sub_offset, forked_from_path, fork_offset_given, tail)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
on conflict (path) do nothing
returning id;

-- name: stream_append_txn
-- Inside the caller's transaction (the stream row locked): store message $3 (bytea, NULL = none)
-- ending at $2, move the tail to $2, close when $4 (recording producer $5, epoch $6, seq $7), keep
-- Stream-Seq $8 (NULL = unchanged), save producer $5's state (epoch $6, last seq $7) when $9, reset
-- the TTL window, and notify channel $10 with the stream id (delivered at commit).
with msg as (
  insert into stream_messages (stream_id, end_pos, data)
  select $1, $2, $3::bytea where $3::bytea is not null
),
producer as (
  insert into stream_producers (stream_id, producer_id, epoch, last_seq)
  select $1, $5, $6, $7 where $9::boolean
  on conflict (stream_id, producer_id)
  do update set epoch = excluded.epoch, last_seq = excluded.last_seq, updated_at = now()
),
moved as (
  update streams
  set tail = $2,
      closed = closed or $4::boolean,
      closed_by = case when $4::boolean and not closed then $5 else closed_by end,
      closed_epoch = case when $4::boolean and not closed then $6 else closed_epoch end,
      closed_seq = case when $4::boolean and not closed then $7 else closed_seq end,
      last_stream_seq = coalesce($8, last_stream_seq),
      accessed_at = now()
  where id = $1
  returning id
)
select pg_notify($10, id::text) from moved;

-- name: stream_chain
-- Stream $1 and its fork ancestors, nearest first: id, source id and fork offset of each.
with recursive chain(id, forked_from, fork_offset, depth) as (
  select id, forked_from, fork_offset, 0 from streams where id = $1
  union all
  select s.id, s.forked_from, s.fork_offset, c.depth + 1
  from streams s join chain c on s.id = c.forked_from
)
select id, forked_from, fork_offset from chain order by depth;

-- name: stream_read
-- Messages of the ranges (stream $1[i], positions in ($2[i], $3[i]]), in position order, at most $4
-- rows and about $5 bytes (a first message is returned whatever its size).
select end_pos, data from (
  select m.end_pos, m.data,
         sum(octet_length(m.data)) over (order by m.end_pos) - octet_length(m.data) as before
  from (
    select m.end_pos, m.data
    from unnest($1::bigint[], $2::bigint[], $3::bigint[]) as r(sid, lo, hi)
    join stream_messages m on m.stream_id = r.sid and m.end_pos > r.lo and m.end_pos <= r.hi
    order by m.end_pos
    limit $4
  ) m
) page
where before = 0 or before < $5
order by end_pos;

-- name: stream_touch
-- Reset the sliding TTL window of stream $1 (reads and appends; HEAD does not).
update streams set accessed_at = now() where id = $1 and ttl_seconds is not null;

-- name: stream_close_txn
-- Inside the caller's transaction: close stream $1 (no data), recording producer $2, epoch $3 and seq
-- $4 (NULLs for a plain close), saving the producer's state when $5; notify channel $6.
with producer as (
  insert into stream_producers (stream_id, producer_id, epoch, last_seq)
  select $1, $2, $3, $4 where $5::boolean
  on conflict (stream_id, producer_id)
  do update set epoch = excluded.epoch, last_seq = excluded.last_seq, updated_at = now()
),
closed as (
  update streams
  set closed = true, closed_by = $2, closed_epoch = $3, closed_seq = $4, accessed_at = now()
  where id = $1 and not closed
  returning id
)
select pg_notify($6, $1::text);

-- name: stream_soft_delete
-- Mark stream $1 deleted while forks still read through it; notify channel $2.
with gone as (update streams set soft_deleted = true where id = $1 returning id)
select pg_notify($2, id::text) from gone;

-- name: stream_delete
-- Remove stream $1 with its messages and producers; returns its fork source (NULL if none).
-- Notifies channel $2 so live readers end.
with gone as (delete from streams where id = $1 returning id, forked_from)
select forked_from, pg_notify($2, id::text) as notified from gone;

-- name: stream_add_ref
-- One more fork reads through stream $1.
update streams set ref_count = ref_count + 1 where id = $1;

-- name: stream_drop_ref
-- One fork fewer reads through stream $1; returns its ref count, whether it is soft-deleted, its source.
update streams set ref_count = greatest(ref_count - 1, 0) where id = $1
returning ref_count, soft_deleted, forked_from;

-- name: history_instance_exists
-- Whether instance $1 exists or ever wrote history.
select exists (select 1 from instances where id = $1)
    or exists (select 1 from history where instance_id = $1);

-- name: history_stream_page
-- History rows of instance $1 after position ($2 xid as text, $3 id), in commit order (xid, id), at
-- most $4 rows. Only rows of transactions older than every running one are returned, so a row that
-- commits late is never skipped by a reader that already moved past it.
select h.xid::text as xid, h.id, h.instance_id, h.machine, h.event, h.step, h.attempt,
       h.status::text as status, h.worker_id, h.lease_token, h.detail::text as detail, h.at
from history h
where h.instance_id = $1
  and (h.xid, h.id) > ($2::text::xid8, $3::bigint)
  and h.xid < pg_snapshot_xmin(pg_current_snapshot())
order by h.xid, h.id
limit $4;

-- name: history_stream_tail
-- The position (xid as text, id) of instance $1's last history row safe to expose (see
-- history_stream_page); nothing when there is none.
select h.xid::text as xid, h.id
from history h
where h.instance_id = $1 and h.xid < pg_snapshot_xmin(pg_current_snapshot())
order by h.xid desc, h.id desc
limit 1;

-- name: stream_append
-- Append (or close, data $2 NULL) to the stream at path $1 in one statement: see ds_append in
-- migration 0002. $3 request content type, $4 close, $5 producer id, $6 epoch, $7 seq, $8 seq spans
-- epochs (engine producers), $9 Stream-Seq, $10 JSON error verdict (invalid_json|empty_json|NULL),
-- $11 notify channel, $12 instance id and $13 lease token to fence on (engine appends; else NULL).
-- Returns verdict, tail, closed, last_seq, current_epoch, expected_seq.
select * from ds_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13);

-- Subscriptions (protocol 6-7; tables of migration 0005). Every state change runs in a transaction that
-- holds the subscription's row lock (sub_lock / sub_lock_id), so the checks before it stay true.

-- name: sub_link_lock
-- Take this schema's link lock exclusively until the transaction ends (migration 0006): wait for every
-- stream creation and deletion in flight (their triggers hold the shared side from their lookup to their
-- commit) and keep new ones out, so the links written next see every committed stream and every stream
-- created later sees this subscription. Taken first, before any row lock, by every transaction that
-- writes links or changes which subscriptions are live.
select pg_advisory_xact_lock(ds_link_lock_key());

-- name: sub_get
-- Subscription $2 under stream root $1 (tombstoned ones included), with `lease_active`: its lease has
-- not expired.
select s.*, coalesce(s.lease_expires_at > now(), false) as lease_active
from ds_subscriptions s where s.root = $1 and s.name = $2;

-- name: sub_lock
-- Like sub_get, and lock the row for the rest of the transaction.
select s.*, coalesce(s.lease_expires_at > now(), false) as lease_active
from ds_subscriptions s where s.root = $1 and s.name = $2
for update;

-- name: sub_lock_id
-- Subscription $1 by row id, locked, with `lease_active` and `due` (no retry backoff pending).
select s.*, coalesce(s.lease_expires_at > now(), false) as lease_active,
       s.next_attempt_at is null or s.next_attempt_at <= now() as due
from ds_subscriptions s where s.id = $1
for update;

-- name: sub_insert
-- A new subscription: root $1, id $2, type $3, pattern $4 and its regex $5, explicit streams $6,
-- webhook URL $7, wake stream $8 (relative) and $9 (full path), lease TTL $10 ms, description $11,
-- config hash $12, origin $13. Returns the row id, nothing when (root, id) is taken.
insert into ds_subscriptions (root, name, type, pattern, pattern_regex, streams, webhook_url, wake_stream,
                              wake_path, lease_ttl_ms, description, config_hash, origin)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
on conflict (root, name) do nothing
returning id;

-- name: sub_revive
-- Give tombstoned subscription $1 a new configuration (parameters $3-$13 as in sub_insert): live again,
-- idle, its generation kept so tokens of its former life stay fenced.
update ds_subscriptions
set type = $3, pattern = $4, pattern_regex = $5, streams = $6, webhook_url = $7, wake_stream = $8,
    wake_path = $9, lease_ttl_ms = $10, description = $11, config_hash = $12, origin = $13,
    created_at = now(), deleted_at = null, wake_id = null, holder = null, lease_expires_at = null,
    failed_attempts = 0, next_attempt_at = null, last_error = null
where id = $1 and name = $2;

-- name: sub_link_glob
-- Backfill: link subscription $1 to every live stream whose path matches regex $2 (except its wake
-- stream $3) at the stream's current tail; an existing link just gains the glob flag.
insert into ds_subscription_links (subscription, path, glob, acked_pos)
select $1, s.path, true, s.tail
from streams s
where s.path ~ $2 and s.path is distinct from $3 and not s.soft_deleted
on conflict (subscription, path) do update set glob = true;

-- name: sub_link_explicit
-- Link subscription $1 explicitly to the full paths $2, each at its stream's current tail (0 for a
-- stream that does not exist yet: it is reset to its start when created); idempotent.
insert into ds_subscription_links (subscription, path, explicit, acked_pos)
select $1, p, true, coalesce((select s.tail from streams s where s.path = p and not s.soft_deleted), 0)
from unnest($2::text[]) as p
on conflict (subscription, path) do update set explicit = true;

-- name: sub_unlink_explicit
-- Remove subscription $1's explicit link to path $2: the link goes unless the glob also links it.
with dropped as (
  delete from ds_subscription_links where subscription = $1 and path = $2 and not glob
)
update ds_subscription_links set explicit = false where subscription = $1 and path = $2 and glob;

-- name: sub_links
-- The links of subscription $1 by path: flags, acked position and the stream's tail (NULL when the
-- stream does not exist or is deleted).
select l.path, l.explicit, l.glob, l.acked_pos, s.tail
from ds_subscription_links l
left join streams s on s.path = l.path and not s.soft_deleted
where l.subscription = $1
order by l.path;

-- name: sub_tombstone
-- Delete subscription $1: tombstone it, drop its wake, lease and retry schedule, and its links.
with dropped as (delete from ds_subscription_links where subscription = $1)
update ds_subscriptions
set deleted_at = now(), wake_id = null, holder = null, lease_expires_at = null, next_attempt_at = null
where id = $1;

-- name: sub_set_wake
-- Set subscription $1's wake: generation $2, wake id $3 (NULL = none in flight), lease holder $4, and a
-- lease of lease_ttl_ms from now when $5 (else none).
update ds_subscriptions
set generation = $2, wake_id = $3, holder = $4,
    lease_expires_at = case when $5::boolean then now() + lease_ttl_ms * interval '1 millisecond' end
where id = $1;

-- name: sub_extend_lease
-- Renew subscription $1's lease: lease_ttl_ms from now.
update ds_subscriptions set lease_expires_at = now() + lease_ttl_ms * interval '1 millisecond'
where id = $1;

-- name: sub_apply_acks
-- Move subscription $1's cursors forward: path $2[i] to position $3[i] (never backwards).
update ds_subscription_links l
set acked_pos = greatest(l.acked_pos, a.pos)
from unnest($2::text[], $3::bigint[]) as a(path, pos)
where l.subscription = $1 and l.path = a.path;

-- name: sub_expire_leases
-- Clear every expired lease (holder, wake, token scope); returns the subscriptions concerned.
update ds_subscriptions
set wake_id = null, holder = null, lease_expires_at = null
where lease_expires_at <= now() and deleted_at is null
returning id;

-- name: sub_wakeable
-- Live subscriptions with no wake in flight, past any retry backoff, that have a linked stream whose
-- tail is past its cursor; only those linked to the stream ids $1 unless $1 is NULL.
select distinct s.id
from ds_subscriptions s
join ds_subscription_links l on l.subscription = s.id
join streams t on t.path = l.path
where s.deleted_at is null and s.wake_id is null
  and (s.next_attempt_at is null or s.next_attempt_at <= now())
  and t.tail > l.acked_pos and not t.soft_deleted
  and ($1::bigint[] is null or t.id = any($1::bigint[]));

-- name: sub_delivered
-- Webhook delivery of generation $2 to subscription $1 succeeded: no longer failing.
update ds_subscriptions set failed_attempts = 0, last_error = null
where id = $1 and generation = $2;

-- name: sub_delivery_failed
-- Webhook delivery of wake $3 (generation $2) to subscription $1 failed with error $5: the wake is
-- dropped and the next one waits $4 milliseconds (backoff). Nothing if the wake is no longer current.
update ds_subscriptions
set wake_id = null, holder = null, lease_expires_at = null, failed_attempts = failed_attempts + 1,
    next_attempt_at = now() + $4::bigint * interval '1 millisecond', last_error = $5
where id = $1 and generation = $2 and wake_id = $3 and deleted_at is null;

-- name: signing_keys
-- Webhook signing keys not retired, oldest first.
select kid, private_key, x, created_at from ds_signing_keys where retired_at is null order by created_at, kid;

-- name: signing_key_insert
-- Store signing key $1 (private key $2, public x $3) unless one exists already (concurrent servers).
insert into ds_signing_keys (kid, private_key, x)
select $1, $2, $3 where not exists (select 1 from ds_signing_keys where retired_at is null);

-- name: token_key
-- The HMAC key of callback and claim tokens, created as $1 on first use.
with made as (
  insert into ds_token_keys (one, secret) values (true, $1) on conflict (one) do nothing returning secret
)
select secret from made union all select secret from ds_token_keys limit 1;

-- name: sub_note_error
-- Record why subscription $1 could not be woken ($2, e.g. its wake stream is missing).
update ds_subscriptions set last_error = $2 where id = $1;

-- name: sub_any_live
-- Whether the schema has any live subscription (the dispatcher skips its lookups while none exists).
select exists (select 1 from ds_subscriptions where deleted_at is null);

-- name: stream_append_many
-- Group commit (durable.streams.store.GroupCommit): the appends of a batch in one statement, one commit. Each
-- element i of the arrays is one stream_append's parameters ($1-$10, $12, $13 as there, $11 the notify
-- channel), run through ds_append in arrival order (the lateral call is a nested loop over the unnest,
-- which yields the elements in order), so each append is locked, validated, fenced and sequenced exactly
-- as alone, and sees the batch's earlier appends. Returns `ord` (1-based element) with ds_append's row.
-- A failure of any element rolls back the whole statement: the caller then writes the batch one by one.
select b.ord::int as ord, a.*
from unnest($1::text[], $2::bytea[], $3::text[], $4::boolean[], $5::text[], $6::bigint[], $7::bigint[],
            $8::boolean[], $9::text[], $10::text[], $12::bigint[], $13::bigint[])
     with ordinality as b(path, data, content_type, close, producer, epoch, seq, spans, stream_seq, json_error,
                          lease_instance, lease_token, ord)
cross join lateral ds_append(b.path, b.data, b.content_type, b.close, b.producer, b.epoch, b.seq, b.spans,
                             b.stream_seq, b.json_error, $11, b.lease_instance, b.lease_token) a;
