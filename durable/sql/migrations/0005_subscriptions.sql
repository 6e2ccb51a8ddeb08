-- durable schema version 5: Durable Streams subscriptions (protocol sections 6 and 7): durable cursors
-- over sets of streams that wake a worker (webhook or pull-wake) when a linked stream has data past its
-- acked offset. Every state change of a subscription happens in a transaction holding its row lock.

create table ds_subscriptions (
  id               bigint generated always as identity primary key,
  root             text    not null,           -- stream root: the URL path before /__ds ('' = /)
  name             text    not null,           -- the client's subscription id
  type             text    not null check (type in ('webhook', 'pull-wake')),
  pattern          text,                       -- glob over root-relative paths
  pattern_regex    text,                       -- the glob as an anchored regex over full stream paths
  streams          text[]  not null default '{}',  -- normalized explicit streams of the PUT
  webhook_url      text,
  wake_stream      text,                       -- root-relative (pull-wake)
  wake_path        text,                       -- its full path; never linked to its own subscription
  lease_ttl_ms     integer not null,
  description      text,
  config_hash      text    not null,           -- sha256 of the normalized configuration
  origin           text    not null,           -- scheme://host the PUT came to (callback and JWKS URLs)
  created_at       timestamptz not null default now(),
  deleted_at       timestamptz,                -- tombstone
  generation       bigint  not null default 0, -- fencing counter: +1 per wake, never reset
  wake_id          text,                       -- the wake in flight (NULL = none)
  holder           text,                       -- pull-wake worker holding the lease
  lease_expires_at timestamptz,
  failed_attempts  integer not null default 0, -- consecutive failed webhook deliveries
  next_attempt_at  timestamptz,                -- no wake before this (webhook retry backoff)
  last_error       text,
  unique (root, name)
);
create index ds_subscriptions_leases on ds_subscriptions (lease_expires_at)
  where lease_expires_at is not null and deleted_at is null;

-- one cursor per (subscription, stream); a stream may be linked explicitly, by the glob, or both
create table ds_subscription_links (
  subscription bigint  not null references ds_subscriptions(id) on delete cascade,
  path         text    not null,               -- full stream path (the stream may not exist yet)
  explicit     boolean not null default false,
  glob         boolean not null default false,
  acked_pos    bigint  not null default 0,     -- last processed position, inclusive
  primary key (subscription, path)
);
create index ds_subscription_links_path on ds_subscription_links (path);

-- Ed25519 webhook signing keys (raw 32-byte private keys); published in the JWKS until retired
create table ds_signing_keys (
  kid         text primary key,                -- ds_ + RFC 7638 JWK thumbprint
  private_key bytea not null,
  x           text  not null,                  -- public key, base64url
  created_at  timestamptz not null default now(),
  retired_at  timestamptz
);

-- the HMAC key of callback and claim tokens (one row)
create table ds_token_keys (
  one    boolean primary key default true check (one),
  secret bytea not null
);

-- A new stream: reset the cursors already linked to its path (explicit links to a stream that did not
-- exist, or existed before a delete) to its start, and link it to every live subscription whose glob
-- matches, also at its start: the stream's first append is pending work.
create function ds_link_new_stream() returns trigger language plpgsql as $fn$
begin
  update ds_subscription_links set acked_pos = new.tail where path = new.path;
  insert into ds_subscription_links (subscription, path, glob, acked_pos)
  select s.id, new.path, true, new.tail
  from ds_subscriptions s
  where s.deleted_at is null and s.pattern_regex is not null and new.path ~ s.pattern_regex
    and new.path is distinct from s.wake_path
  on conflict (subscription, path) do update set glob = true;
  return null;
end
$fn$;
create trigger streams_link_subscriptions after insert on streams
  for each row execute function ds_link_new_stream();

-- A deleted stream: glob links go (a re-created stream is linked again), explicit ones stay.
create function ds_unlink_deleted_stream() returns trigger language plpgsql as $fn$
begin
  delete from ds_subscription_links where path = old.path and not explicit;
  update ds_subscription_links set glob = false where path = old.path;
  return null;
end
$fn$;
create trigger streams_unlink_subscriptions after delete on streams
  for each row execute function ds_unlink_deleted_stream();
