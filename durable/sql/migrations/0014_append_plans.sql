-- durable schema version 14: ds_append keeps the cached plans of its statements.
--
-- durable's pools run with plan_cache_mode = force_custom_plan (durable/_pg.py, SESSION_SETTINGS: the
-- engine's batch statements take arrays whose size a generic plan cannot know). Inside a PL/pgSQL
-- function that setting also applies to the function's own statements, so every append planned each of
-- ds_append's statements again (the stream row by path, the producer by key, the message insert, the
-- tail update, the NOTIFY): 0.45-0.52 ms of backend CPU per append against 0.28-0.31 ms with plan_cache_mode
-- = auto (measured with one connection, 2,000 appends back to back, load 7-17). Each of those statements
-- looks a row up by a key (or writes one), so its generic plan is the custom one. The setting is the
-- function's own, whatever the caller's session says: the streams server, engine appends and group
-- commit's stream_append_many alike.
alter function ds_append(text, bytea, text, boolean, text, bigint, bigint, boolean, text, text, text, bigint, bigint)
  set plan_cache_mode = auto;
