-- durable schema version 2: Durable Streams (durable serve, durable.streams).
-- A stream is an append-only byte log addressed by its URL path. Offsets are byte positions: a message
-- covers (end_pos - length, end_pos]; the stream's tail is the end_pos of its last message. Appends to a
-- stream serialize on its row lock and commit in offset order, so a reader never sees a gap.

create table streams (
  id              bigint generated always as identity primary key,
  path            text    not null unique,
  content_type    text    not null,
  ttl_seconds     bigint,                       -- sliding window, reset by reads and appends
  expires_at      text,                         -- absolute expiry as the client gave it (echoed back)
  expires_at_ts   timestamptz,
  tail            bigint  not null default 0,   -- end position of the last byte
  closed          boolean not null default false,
  closed_by       text,                         -- producer id of the closing request
  closed_epoch    bigint,
  closed_seq      bigint,
  last_stream_seq text,                         -- Stream-Seq of the last append (byte-wise compare)
  forked_from     bigint  references streams(id),
  fork_offset     bigint,                       -- inherited range: positions <= fork_offset
  fork_sub_offset bigint  not null default 0,
  forked_from_path text,                        -- the Stream-Forked-From value as given
  fork_offset_given boolean not null default false,
  ref_count       int     not null default 0,   -- forks that read through this stream
  soft_deleted    boolean not null default false,
  created_at      timestamptz not null default now(),
  accessed_at     timestamptz not null default now()
);
create index streams_forked_from on streams (forked_from) where forked_from is not null;

create table stream_messages (
  stream_id bigint not null references streams(id) on delete cascade,
  end_pos   bigint not null,
  data      bytea  not null,   -- bytes; for application/json the comma-joined values of one append
  primary key (stream_id, end_pos)
);

-- idempotent producers (Kafka-style): last accepted (epoch, seq) per producer per stream
create table stream_producers (
  stream_id   bigint not null references streams(id) on delete cascade,
  producer_id text   not null,
  epoch       bigint not null,
  last_seq    bigint not null,
  updated_at  timestamptz not null default now(),
  primary key (stream_id, producer_id)
);

-- One append (or close) in one statement, so an acknowledged append is one committed transaction and
-- costs one round trip. Locks the stream row, then checks in the protocol's order: missing, deleted,
-- expired, engine lease (p_lease_*), closed, content type, producer (epoch fencing, dedup, gaps),
-- Stream-Seq (byte-wise), JSON validity; then writes the message, the producer state and the tail and
-- notifies p_channel. p_data NULL = close only. The verdict says what happened:
--   accepted | duplicate | closed_duplicate | already_closed | not_found | gone | expired | fenced_lease
--   | closed | content_type | stale_epoch | new_epoch_seq | seq_gap | stream_seq | invalid_json | empty_json
create function ds_append(
  p_path text, p_data bytea, p_content_type text, p_close boolean,
  p_producer text, p_epoch bigint, p_seq bigint, p_spans_epochs boolean,
  p_stream_seq text, p_json_error text, p_channel text,
  p_lease_instance bigint, p_lease_token bigint
) returns table (verdict text, tail bigint, closed boolean, last_seq bigint, current_epoch bigint,
                 expected_seq bigint)
language plpgsql as $fn$
declare
  s streams%rowtype;
  st record;
  inst record;
  new_tail bigint;
  accepted_seq bigint;
begin
  select * into s from streams where path = p_path for update;
  if not found then
    return query select 'not_found', null::bigint, false, null::bigint, null::bigint, null::bigint; return;
  end if;
  if s.soft_deleted then
    return query select 'gone', s.tail, s.closed, null::bigint, null::bigint, null::bigint; return;
  end if;
  if s.expires_at_ts is not null and now() >= s.expires_at_ts
     or s.ttl_seconds is not null and now() >= s.accessed_at + make_interval(secs => s.ttl_seconds) then
    return query select 'expired', s.tail, s.closed, null::bigint, null::bigint, null::bigint; return;
  end if;
  if p_lease_instance is not null then
    select i.status::text as status, i.lease_token into inst from instances i where i.id = p_lease_instance;
    if not found or inst.status <> 'executing' or inst.lease_token is distinct from p_lease_token then
      return query select 'fenced_lease', s.tail, s.closed, null::bigint,
                          coalesce(inst.lease_token, p_lease_token), null::bigint;
      return;
    end if;
  end if;
  if s.closed then
    if p_producer is not null and s.closed_by = p_producer
       and (s.closed_epoch = p_epoch and s.closed_seq = p_seq or p_spans_epochs and p_seq <= s.closed_seq) then
      return query select 'closed_duplicate', s.tail, true, p_seq, null::bigint, null::bigint; return;
    end if;
    if p_data is null and p_producer is null then
      return query select 'already_closed', s.tail, true, null::bigint, null::bigint, null::bigint; return;
    end if;
    return query select 'closed', s.tail, true, null::bigint, null::bigint, null::bigint; return;
  end if;
  if p_data is not null or p_json_error is not null then
    if lower(trim(split_part(coalesce(p_content_type, ''), ';', 1)))
       <> lower(trim(split_part(s.content_type, ';', 1))) then
      return query select 'content_type', s.tail, false, null::bigint, null::bigint, null::bigint; return;
    end if;
  end if;
  if p_producer is not null then
    select sp.epoch, sp.last_seq into st from stream_producers sp
    where sp.stream_id = s.id and sp.producer_id = p_producer;
    if not found then
      if p_seq <> 0 then
        return query select 'seq_gap', s.tail, false, null::bigint, null::bigint, 0::bigint; return;
      end if;
    elsif p_epoch < st.epoch then
      return query select 'stale_epoch', s.tail, false, null::bigint, st.epoch, null::bigint; return;
    elsif p_epoch > st.epoch and not p_spans_epochs then
      if p_seq <> 0 then
        return query select 'new_epoch_seq', s.tail, false, null::bigint, st.epoch, null::bigint; return;
      end if;
    elsif p_seq <= st.last_seq then
      return query select 'duplicate', s.tail, false, st.last_seq, st.epoch, null::bigint; return;
    elsif p_seq <> st.last_seq + 1 then
      return query select 'seq_gap', s.tail, false, null::bigint, null::bigint, st.last_seq + 1; return;
    end if;
    accepted_seq := p_seq;
  end if;
  if p_data is not null and p_stream_seq is not null and s.last_stream_seq is not null
     and p_stream_seq collate "C" <= s.last_stream_seq collate "C" then
    return query select 'stream_seq', s.tail, false, null::bigint, null::bigint, null::bigint; return;
  end if;
  if p_json_error is not null then
    return query select p_json_error, s.tail, false, null::bigint, null::bigint, null::bigint; return;
  end if;
  new_tail := s.tail + coalesce(octet_length(p_data), 0);
  if p_data is not null then
    insert into stream_messages (stream_id, end_pos, data) values (s.id, new_tail, p_data);
  end if;
  if p_producer is not null then
    insert into stream_producers (stream_id, producer_id, epoch, last_seq)
    values (s.id, p_producer, p_epoch, p_seq)
    on conflict (stream_id, producer_id)
    do update set epoch = excluded.epoch, last_seq = excluded.last_seq, updated_at = now();
  end if;
  update streams
  set tail = new_tail,
      closed = p_close,
      closed_by = case when p_close then p_producer end,
      closed_epoch = case when p_close then p_epoch end,
      closed_seq = case when p_close then p_seq end,
      last_stream_seq = case when p_data is not null then coalesce(p_stream_seq, s.last_stream_seq)
                             else s.last_stream_seq end,
      accessed_at = now()
  where id = s.id;
  perform pg_notify(p_channel, s.id::text);
  return query select 'accepted', new_tail, p_close, accepted_seq, p_epoch, null::bigint;
end
$fn$;
