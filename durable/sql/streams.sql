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
