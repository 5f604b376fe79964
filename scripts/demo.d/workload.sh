# shellcheck shell=bash
# scripts/demo.d/workload.sh: the demo's sample workload, sourced by scripts/demo.
#
# Applications write to BOTH databases at once, one tick a second. A tick runs one legacy and
# one platform transaction concurrently, rotating by tick number (the platform two ticks later:
# at a legacy update tick, the platform deletes, and the other way round):
#   1  inserts: a user/identity, a team/group (a category, large TOAST notes on some), its lead,
#      a member born on the OTHER side, a geofence/zone
#   2  updates of random rows of every table, born on either side (phone, role/kind, archived
#      flag, category, membership role, radius and position)
#   3  inserts: a zone without a team, a member of any team
#   0  deletes: the oldest membership, zone, and user or team (cascades), an unused category
# and, before that, a deliberate conflict every fifth tick: the same user, team and geofence
# (picked on legacy, matched on the platform by email / name) updated on both sides:
#   n%10 = 0  at once (two concurrent transactions): the newer updated_at wins, a tie (same
#             second) goes to legacy (schemas/mapping/reference.toml)
#   n%10 = 5  legacy first, the platform as soon as legacy's edit arrived (usually within the
#             same second): the platform's edit was made on top of legacy's and wins on both sides
#   n%10 = 7  the same user (same email, the natural key) created on both sides
#             (ON CONFLICT DO NOTHING: when the other side's copy arrived first, it stays)
#
# Any row of either birth is updated or deleted from either side; memberships are created for
# any team and user, so both sides may create the same (team, user) pair at once.
#
# Needs: RUN (a run id), psql_at URL (psql reading SQL on stdin), SYNC_BRIDGE_LEGACY_URL,
# SYNC_BRIDGE_PLATFORM_URL, WORKLOAD_LOG (one line per transaction: tick, side, what, ok/FAILED).

# pick N WORD...: the (N mod count)-th word
pick() {
    local n="$1"
    shift
    local words=("$@")
    printf '%s' "${words[$((n % ${#words[@]}))]}"
}

# SQL for a latitude / longitude around Paris, 5 decimals.
LAT_SQL="round((48.85 + random() / 50)::numeric, 5)"
LNG_SQL="round((2.35 + random() / 50)::numeric, 5)"
# Incompressible notes of about 10 kB: stored out of line (TOAST), so an UPDATE that does not
# touch them sends them as "unchanged".
BIG_NOTES_SQL="(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 320))"

legacy_sql() { # legacy_sql N: the legacy transaction of tick N (stdout); its summary in WHAT
    local n="$1"
    case $((n % 4)) in
    1)
        WHAT="insert user, category, team, 2 team_members, geofence"
        local notes="'short notes $n'"
        if ((n % 8 == 1)); then notes="$BIG_NOTES_SQL"; fi
        cat <<EOF
BEGIN;
INSERT INTO categories (name, inserted_at, updated_at)
  VALUES ('Field', now(), now()), ('Office', now(), now()), ('L cat $RUN.$n', now(), now())
  ON CONFLICT (name) DO NOTHING;
INSERT INTO users (email, full_name, role, phone, inserted_at, updated_at)
  VALUES ('l.$RUN.$n@example.com', 'Lena$n Legacy', '$(pick "$n" member staff admin)', NULL, now(), now());
INSERT INTO teams (name, category_id, notes, inserted_at, updated_at)
  VALUES ('L team $RUN.$n', (SELECT id FROM categories WHERE name = '$(pick $((n / 4)) Field "L cat $RUN.$n" Office none)'),
          $notes, now(), now());
INSERT INTO team_members (team_id, user_id, role, inserted_at, updated_at)
  VALUES (currval('teams_id_seq'), currval('users_id_seq'), 'lead', now(), now());
INSERT INTO team_members (team_id, user_id, role, inserted_at, updated_at)
  SELECT currval('teams_id_seq'), id, 'member', now(), now() FROM users
  WHERE email LIKE 'p.%' ORDER BY id DESC LIMIT 1;
INSERT INTO geofences (team_id, name, latitude, longitude, radius_m, inserted_at, updated_at)
  VALUES (currval('teams_id_seq'), 'L zone $RUN.$n', $LAT_SQL, $LNG_SQL, 100 + $n % 50, now(), now());
COMMIT;
EOF
        ;;
    2)
        WHAT="update a user, team, team_member, geofence"
        cat <<EOF
BEGIN;
UPDATE users SET phone = '+336' || lpad(($n * 7919 % 100000000)::text, 8, '0'),
                 role = (ARRAY['member', 'staff', 'admin'])[1 + floor(random() * 3)::int], updated_at = now()
  WHERE id = (SELECT id FROM users ORDER BY random() LIMIT 1);
UPDATE teams SET archived = NOT archived, category_id = (SELECT id FROM categories ORDER BY random() LIMIT 1),
                 updated_at = now()
  WHERE id = (SELECT id FROM teams ORDER BY random() LIMIT 1);
UPDATE team_members SET role = CASE role WHEN 'lead' THEN 'member' ELSE 'lead' END, updated_at = now()
  WHERE id = (SELECT id FROM team_members ORDER BY random() LIMIT 1);
UPDATE geofences SET radius_m = radius_m + 10, latitude = $LAT_SQL, updated_at = now()
  WHERE id = (SELECT id FROM geofences ORDER BY random() LIMIT 1);
COMMIT;
EOF
        ;;
    3)
        WHAT="insert a geofence without team, a team_member"
        cat <<EOF
BEGIN;
INSERT INTO geofences (team_id, name, latitude, longitude, radius_m, inserted_at, updated_at)
  VALUES (NULL, 'L free zone $RUN.$n', $LAT_SQL, $LNG_SQL, 200 + $n % 50, now(), now());
INSERT INTO team_members (team_id, user_id, role, inserted_at, updated_at)
  SELECT t.id, u.id, 'member', now(), now()
  FROM (SELECT id FROM teams ORDER BY random() LIMIT 1) t,
       (SELECT id FROM users ORDER BY random() LIMIT 1) u
  ON CONFLICT (team_id, user_id) DO NOTHING;
COMMIT;
EOF
        ;;
    0)
        WHAT="delete the oldest team_member, geofence, $(pick $((n / 4)) user team), an unused category"
        cat <<EOF
BEGIN;
DELETE FROM team_members WHERE id = (SELECT min(id) FROM team_members);
DELETE FROM geofences WHERE id = (SELECT min(id) FROM geofences);
DELETE FROM $(pick $((n / 4)) users teams) WHERE id = (SELECT min(id) FROM $(pick $((n / 4)) users teams));
DELETE FROM categories WHERE id = (
  SELECT min(c.id) FROM categories c
  WHERE c.name LIKE 'L cat %' AND NOT EXISTS (SELECT 1 FROM teams t WHERE t.category_id = c.id));
COMMIT;
EOF
        ;;
    esac
}

platform_sql() { # platform_sql N: the platform transaction of tick N (stdout); its summary in WHAT
    local n="$1"
    local category
    category="$(pick "$n" "'Field'" "'P cat $RUN.$n'" NULL "'Office'" "'P cat $RUN.$n'")"
    case $(((n + 2) % 4)) in
    1)
        WHAT="insert identity, group, 2 memberships, zone"
        local notes="'short notes $n'" kind
        if ((n % 8 == 7)); then notes="$BIG_NOTES_SQL"; fi
        kind="$(pick "$n" "'member', false" "'staff', false" "'staff', true")"
        cat <<EOF
DO \$\$
DECLARE
  ident uuid := gen_random_uuid();
  grp uuid := gen_random_uuid();
BEGIN
  INSERT INTO identity.identities (id, email, given_name, family_name, kind, is_admin, phone_e164, created_at, updated_at)
    VALUES (ident, 'p.$RUN.$n@example.org', 'Paul$n', '$(pick $((n / 4)) Platform "")', $kind, NULL, now(), now());
  INSERT INTO org.groups (id, name, category, archived_at, notes, created_at, updated_at)
    VALUES (grp, 'P group $RUN.$n', $category, NULL, $notes, now(), now());
  INSERT INTO org.memberships (id, group_id, identity_id, role, created_at, updated_at)
    VALUES (gen_random_uuid(), grp, ident, 'lead', now(), now());
  INSERT INTO org.memberships (id, group_id, identity_id, role, created_at, updated_at)
    SELECT gen_random_uuid(), grp, id, 'member', now(), now() FROM identity.identities
    WHERE email LIKE 'l.%' ORDER BY created_at DESC, id LIMIT 1;
  INSERT INTO geo.zones (id, group_id, name, center, radius_m, created_at, updated_at)
    VALUES (gen_random_uuid(), grp, 'P zone $RUN.$n', jsonb_build_object('lat', $LAT_SQL, 'lng', $LNG_SQL),
            150 + $n % 50, now(), now());
END \$\$;
EOF
        ;;
    2)
        WHAT="update an identity, group, membership, zone"
        cat <<EOF
BEGIN;
UPDATE identity.identities SET phone_e164 = '+337' || lpad(($n * 104729 % 100000000)::text, 8, '0'),
                               (kind, is_admin) = ($(pick "$n" "'staff', true" "'member', false" "'staff', false")),
                               updated_at = now()
  WHERE id = (SELECT id FROM identity.identities ORDER BY random() LIMIT 1);
UPDATE org.groups SET archived_at = CASE WHEN archived_at IS NULL THEN now() END, category = $category,
                      updated_at = now()
  WHERE id = (SELECT id FROM org.groups ORDER BY random() LIMIT 1);
UPDATE org.memberships SET role = CASE role WHEN 'lead' THEN 'member' ELSE 'lead' END, updated_at = now()
  WHERE id = (SELECT id FROM org.memberships ORDER BY random() LIMIT 1);
UPDATE geo.zones SET radius_m = radius_m + 10, center = jsonb_build_object('lat', $LAT_SQL, 'lng', $LNG_SQL),
                     updated_at = now()
  WHERE id = (SELECT id FROM geo.zones ORDER BY random() LIMIT 1);
COMMIT;
EOF
        ;;
    3)
        WHAT="insert a zone without group, a membership"
        cat <<EOF
BEGIN;
INSERT INTO geo.zones (id, group_id, name, center, radius_m, created_at, updated_at)
  VALUES (gen_random_uuid(), NULL, 'P free zone $RUN.$n', jsonb_build_object('lat', $LAT_SQL, 'lng', $LNG_SQL),
          250 + $n % 50, now(), now());
INSERT INTO org.memberships (id, group_id, identity_id, role, created_at, updated_at)
  SELECT gen_random_uuid(), g.id, i.id, 'member', now(), now()
  FROM (SELECT id FROM org.groups ORDER BY random() LIMIT 1) g,
       (SELECT id FROM identity.identities ORDER BY random() LIMIT 1) i
  ON CONFLICT (group_id, identity_id) DO NOTHING;
COMMIT;
EOF
        ;;
    0)
        WHAT="delete the oldest membership, zone, $(pick $((n / 4)) identity group)"
        cat <<EOF
BEGIN;
DELETE FROM org.memberships
  WHERE id = (SELECT id FROM org.memberships ORDER BY created_at, id LIMIT 1);
DELETE FROM geo.zones WHERE id = (SELECT id FROM geo.zones ORDER BY created_at, id LIMIT 1);
DELETE FROM $(pick $((n / 4)) identity.identities org.groups)
  WHERE id = (SELECT id FROM $(pick $((n / 4)) identity.identities org.groups)
              ORDER BY created_at, id LIMIT 1);
COMMIT;
EOF
        ;;
    esac
}

# The deliberate conflicts of tick N: sets CONFLICT_LEGACY_SQL, CONFLICT_PLATFORM_SQL (empty when
# none this tick) and CONFLICT_WHAT. The rows are picked on legacy, the newest written at least
# 3 seconds ago (so that they already crossed), and found on the platform by email / name.
prepare_conflict() {
    local n="$1" picked email team zone
    CONFLICT_LEGACY_SQL=""
    CONFLICT_PLATFORM_SQL=""
    CONFLICT_WHAT=""
    CONFLICT_CAUSAL=0
    if ((n % 10 == 7)); then
        CONFLICT_WHAT="user both.$RUN.$n created on both sides"
        CONFLICT_LEGACY_SQL="INSERT INTO users (email, full_name, role, inserted_at, updated_at)
  VALUES ('both.$RUN.$n@example.net', 'Bea$n Legacy', 'member', now(), now()) ON CONFLICT (email) DO NOTHING;"
        CONFLICT_PLATFORM_SQL="INSERT INTO identity.identities (id, email, given_name, family_name, kind, is_admin, created_at, updated_at)
  VALUES (gen_random_uuid(), 'both.$RUN.$n@example.net', 'Bea$n', 'Platform', 'staff', false, now(), now())
  ON CONFLICT (email) DO NOTHING;"
    fi
    ((n % 5 == 0)) || return 0
    picked="$(psql_at "$SYNC_BRIDGE_LEGACY_URL" -A -t -F '|' <<'EOF'
SELECT (SELECT email FROM users WHERE inserted_at < now() - interval '3 seconds' ORDER BY id DESC LIMIT 1),
       (SELECT name FROM teams WHERE inserted_at < now() - interval '3 seconds' ORDER BY id DESC LIMIT 1),
       (SELECT name FROM geofences WHERE inserted_at < now() - interval '3 seconds' ORDER BY id DESC LIMIT 1);
EOF
    )" || return 0
    IFS='|' read -r email team zone <<<"$picked"
    [[ -n "$email$team$zone" ]] || return 0
    CONFLICT_WHAT="${CONFLICT_WHAT:+$CONFLICT_WHAT; }same user ($email), team ($team), geofence ($zone) updated on both sides"
    CONFLICT_LEGACY_SQL+="
BEGIN;
UPDATE users SET full_name = 'Conflict$n Legacy', phone = '+33600000$n', updated_at = now() WHERE email = '$email';
UPDATE teams SET notes = 'edited on legacy at tick $n', updated_at = now() WHERE name = '$team';
UPDATE geofences SET radius_m = 500 + $n, updated_at = now() WHERE name = '$zone';
COMMIT;"
    if ((n % 10 == 5)); then
        # Not concurrent but causal: the platform edits the rows as soon as legacy's edit of them
        # arrived (one source transaction: the user's phone stands for all three), which is
        # usually within the second of legacy's updated_at.
        CONFLICT_CAUSAL=1
        CONFLICT_WHAT="${CONFLICT_WHAT/%updated on both sides/updated on legacy, then on the platform once that arrived}"
        CONFLICT_PLATFORM_SQL+="
DO \$\$
BEGIN
  FOR i IN 1..60 LOOP
    EXIT WHEN EXISTS (SELECT 1 FROM identity.identities WHERE email = '$email' AND phone_e164 = '+33600000$n');
    PERFORM pg_sleep(0.05);
  END LOOP;
END \$\$;"
    fi
    CONFLICT_PLATFORM_SQL+="
BEGIN;
UPDATE identity.identities SET given_name = 'Conflict$n', family_name = 'Platform', phone_e164 = '+33700000$n',
                               updated_at = now() WHERE email = '$email';
UPDATE org.groups SET notes = 'edited on platform at tick $n', updated_at = now() WHERE name = '$team';
UPDATE geo.zones SET radius_m = 700 + $n, updated_at = now() WHERE name = '$zone';
COMMIT;"
}

side_url() { # side_url SIDE
    if [[ "$1" == legacy ]]; then printf '%s' "$SYNC_BRIDGE_LEGACY_URL"; else printf '%s' "$SYNC_BRIDGE_PLATFORM_URL"; fi
}

# conflict_half SIDE N SQL: one side's half of tick N's conflict.
conflict_half() {
    local side="$1" n="$2" sql="$3" out
    [[ -n "$sql" ]] || return 0
    if out="$(psql_at "$(side_url "$side")" <<<"$sql" 2>&1)"; then
        log_tick "$n" "$side" "conflict: $CONFLICT_WHAT" ok
    else
        log_tick "$n" "$side" "conflict: $CONFLICT_WHAT" "FAILED: ${out//$'\n'/ }"
    fi
}

# side_tick SIDE N: this side's transaction of tick N.
side_tick() {
    local side="$1" n="$2" sql out rc=0
    if [[ "$side" == legacy ]]; then
        sql="$(legacy_sql "$n")"
        legacy_sql "$n" >/dev/null # sets WHAT in this shell
    else
        sql="$(platform_sql "$n")"
        platform_sql "$n" >/dev/null
    fi
    if out="$(psql_at "$(side_url "$side")" <<<"$sql" 2>&1)"; then
        log_tick "$n" "$side" "$WHAT" ok
    else
        log_tick "$n" "$side" "$WHAT" "FAILED: ${out//$'\n'/ }"
        rc=1
    fi
    return "$rc"
}

log_tick() { # log_tick N SIDE WHAT RESULT
    local line
    line="$(printf '%s tick %-4s %-8s %s: %s' "$(date -u +%H:%M:%S)" "$1" "$2" "$3" "$4")"
    printf '%s\n' "$line" >>"$WORKLOAD_LOG"
    if ((${SHOW_WORKLOAD:-0})); then printf '%s\n' "$line" >&2; fi
}

# tick_both N: tick N on both databases at once.
tick_both() {
    local n="$1"
    prepare_conflict "$n"
    if ((CONFLICT_CAUSAL)); then
        conflict_half legacy "$n" "$CONFLICT_LEGACY_SQL"
        conflict_half platform "$n" "$CONFLICT_PLATFORM_SQL"
    else
        conflict_half legacy "$n" "$CONFLICT_LEGACY_SQL" &
        local legacy_half=$!
        conflict_half platform "$n" "$CONFLICT_PLATFORM_SQL"
        wait "$legacy_half" || true
    fi
    side_tick legacy "$n" &
    local legacy_pid=$!
    side_tick platform "$n" &
    local platform_pid=$!
    wait "$legacy_pid" || true
    wait "$platform_pid" || true
}
