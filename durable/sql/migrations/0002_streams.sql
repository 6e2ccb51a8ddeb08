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
