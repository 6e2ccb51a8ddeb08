-- durable schema version 4: a child records that it has joined its parent's barrier, so a child that
-- terminates again (after `durable retry`) never decrements its parent twice.
alter table instances add column joined boolean not null default false;
