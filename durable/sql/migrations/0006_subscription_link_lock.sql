-- durable schema version 6: linking streams to subscriptions serializes on one advisory lock per schema.
--
-- A subscription links the matching streams that exist (sub_link_glob) and the streams trigger links a
-- new stream to the subscriptions that exist (ds_link_new_stream). In READ COMMITTED neither sees the
-- other's uncommitted row, so a stream created while a subscription was being created could end up
-- linked by neither. Now the triggers take the shared side of the lock below before their lookups and
-- hold it to their commit, and a subscription transaction that writes links or changes which
-- subscriptions are live takes the exclusive side (sub_link_lock) before anything else:
--   * stream first: the subscription waits for the creation to commit; its linking statements, run
--     after the lock is granted, take a fresh snapshot that sees the stream;
--   * subscription first: the trigger waits for the subscription to commit; the trigger's statements
--     after the lock each take a fresh snapshot (a VOLATILE plpgsql function does, per statement) that
--     sees the subscription.
-- Stream creations take the shared side only, so they never wait for each other.

-- The advisory lock key of this schema's subscription links.
create function ds_link_lock_key() returns bigint language sql stable as $fn$
  select hashtextextended(current_schema() || ':subscriptions', 0)
$fn$;

create or replace function ds_link_new_stream() returns trigger language plpgsql as $fn$
begin
  -- before any lookup: wait for a subscription being linked right now, keep new ones out until commit
  perform pg_advisory_xact_lock_shared(ds_link_lock_key());
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

create or replace function ds_unlink_deleted_stream() returns trigger language plpgsql as $fn$
begin
  -- likewise: a subscription linking concurrently either sees the deletion or has its links seen here
  perform pg_advisory_xact_lock_shared(ds_link_lock_key());
  delete from ds_subscription_links where path = old.path and not explicit;
  update ds_subscription_links set glob = false where path = old.path;
  return null;
end
$fn$;
