#!/usr/bin/env bash
# Measures, on PostgreSQL 15, the two standby-switch variants docs/lifecycle.md rejects (run as the postgres user).
# (b) pause replay, then promote: does promotion stop where replay was paused?
# (a) recovery_target_lsn = the slot consistent point, on a standby that has already replayed past it.
set -e
B=/usr/lib/postgresql/15/bin
D=${1:?usage: standby-switch-pg15.sh EMPTY_DIR_OWNED_BY_THE_POSTGRES_USER}
rm -rf $D/p $D/s $D/s2; 
$B/initdb -D $D/p -U postgres -A trust --no-sync >/dev/null
echo "wal_level=logical
port=56001
listen_addresses='127.0.0.1'
unix_socket_directories='$D'
fsync=off" >> $D/p/postgresql.conf
$B/pg_ctl -D $D/p -l $D/p.log -w start >/dev/null
P="$B/psql -h 127.0.0.1 -p 56001 -U postgres -qAtX"
$P -c "create table t(id serial primary key, v int)"
$B/pg_basebackup -D $D/s -h 127.0.0.1 -p 56001 -U postgres -R -X stream --checkpoint=fast --no-sync
echo "port=56002" >> $D/s/postgresql.conf
$B/pg_ctl -D $D/s -l $D/s.log -w start >/dev/null
S="$B/psql -h 127.0.0.1 -p 56002 -U postgres -qAtX"
for i in $(seq 1 50); do $P -c "insert into t(v) values ($i)"; done
sleep 0.5
echo "== (b) pause replay, then promote: does promotion replay what was received after the pause?"
$S -c "select pg_wal_replay_pause()"
sleep 0.3
R=$($S -c "select pg_last_wal_replay_lsn()")
for i in $(seq 1 50); do $P -c "insert into t(v) values ($i)"; done
sleep 0.5
RCV=$($S -c "select pg_last_wal_receive_lsn()")
echo "paused at replay $R; received up to $RCV; rows on primary $($P -c 'select count(*) from t')"
$S -c "select pg_promote(true, 60)"
echo "after promote: rows on standby $($S -c 'select count(*) from t'); switch point: $(cat $D/s/pg_wal/00000002.history)"
echo "last replay lsn after promote: $($S -c 'select pg_last_wal_replay_lsn()')"
$B/pg_ctl -D $D/s -w stop -m fast >/dev/null
echo "== (a) recovery_target_lsn on a standby that already replayed past the target"
$B/pg_basebackup -D $D/s2 -h 127.0.0.1 -p 56001 -U postgres -R -X stream --checkpoint=fast --no-sync
echo "port=56003" >> $D/s2/postgresql.conf
$B/pg_ctl -D $D/s2 -l $D/s2.log -w start >/dev/null
S2="$B/psql -h 127.0.0.1 -p 56003 -U postgres -qAtX"
X=$($P -c "select lsn from pg_create_logical_replication_slot('x','wal2json')")
for i in $(seq 1 50); do $P -c "insert into t(v) values ($i)"; done
$P -c "checkpoint"; sleep 0.5; $S2 -c "checkpoint"
echo "slot consistent point $X; standby replayed $($S2 -c 'select pg_last_wal_replay_lsn()')"
$B/pg_ctl -D $D/s2 -w stop -m fast >/dev/null
echo "recovery_target_lsn='$X'
recovery_target_inclusive=true
recovery_target_action=promote" >> $D/s2/postgresql.conf
$B/pg_ctl -D $D/s2 -l $D/s2b.log -w -t 20 start >/dev/null || echo "standby did not start"
sleep 1
grep -E "FATAL|recovery stopping|consistent|target" $D/s2b.log | head -5
$B/pg_ctl -D $D/s2 -w stop -m immediate >/dev/null 2>&1 || true
$B/pg_ctl -D $D/p -w stop -m immediate >/dev/null
