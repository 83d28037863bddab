"""Forward-only schema migrations of the store, in order.

A migration is appended, never edited once released: stores in the field are
at every version ever shipped. Timestamps are TIMESTAMPTZ in UTC; JSON values
are stored as JSON text.
"""

from __future__ import annotations

import duckdb

from shadow.core.errors import StoreError

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE events (
            event_id VARCHAR NOT NULL,
            key VARCHAR NOT NULL,
            routing_key VARCHAR NOT NULL,
            occurred_at TIMESTAMPTZ NOT NULL,
            segment JSON NOT NULL,
            payload JSON NOT NULL,
            source VARCHAR NOT NULL,
            position VARCHAR NOT NULL,
            stored_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE event_segments (
            event_id VARCHAR NOT NULL,
            field VARCHAR NOT NULL,
            value VARCHAR NOT NULL
        )""",
        """CREATE TABLE outcomes (
            key VARCHAR NOT NULL,
            decided_at TIMESTAMPTZ NOT NULL,
            outcome JSON,
            actor VARCHAR,
            source VARCHAR NOT NULL,
            position VARCHAR NOT NULL,
            stored_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE predictions (
            event_id VARCHAR NOT NULL,
            candidate VARCHAR NOT NULL,
            version VARCHAR,
            mode VARCHAR NOT NULL,
            output JSON,
            confidence DOUBLE,
            latency_ms DOUBLE NOT NULL,
            error_type VARCHAR,
            error_message VARCHAR,
            predicted_at TIMESTAMPTZ NOT NULL
        )""",
        """CREATE TABLE comparisons (
            event_id VARCHAR NOT NULL,
            candidate VARCHAR NOT NULL,
            version VARCHAR,
            comparator VARCHAR NOT NULL,
            agree BOOLEAN NOT NULL,
            outcome_decided_at TIMESTAMPTZ NOT NULL,
            compared_at TIMESTAMPTZ NOT NULL
        )""",
        """CREATE TABLE comparison_fields (
            event_id VARCHAR NOT NULL,
            candidate VARCHAR NOT NULL,
            version VARCHAR,
            field VARCHAR NOT NULL,
            agree BOOLEAN NOT NULL
        )""",
        """CREATE TABLE dead_letters (
            kind VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            position VARCHAR NOT NULL,
            raw VARCHAR NOT NULL,
            reason VARCHAR NOT NULL,
            received_at TIMESTAMPTZ NOT NULL
        )""",
        """CREATE TABLE duplicates (
            event_id VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            position VARCHAR NOT NULL,
            seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE runs (
            run_id VARCHAR NOT NULL,
            command VARCHAR NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ NOT NULL,
            summary JSON NOT NULL
        )""",
    ]),
    # What each call to a remote candidate looked like, for debugging incidents;
    # and abstentions, which are stored but never compared.
    (2, [
        "ALTER TABLE predictions ADD COLUMN error_kind VARCHAR",
        "ALTER TABLE predictions ADD COLUMN error_body VARCHAR",
        "ALTER TABLE predictions ADD COLUMN status INTEGER",
        "ALTER TABLE predictions ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE predictions ADD COLUMN ttfb_ms DOUBLE",
        "ALTER TABLE predictions ADD COLUMN prompt_tokens INTEGER",
        "ALTER TABLE predictions ADD COLUMN completion_tokens INTEGER",
        "ALTER TABLE predictions ADD COLUMN cost DOUBLE",
        "ALTER TABLE predictions ADD COLUMN model VARCHAR",
        "ALTER TABLE predictions ADD COLUMN abstained BOOLEAN NOT NULL DEFAULT false",
        """UPDATE predictions SET error_kind = CASE error_type
               WHEN 'NotJSONSerializable' THEN 'not_json' ELSE 'exception' END
           WHERE error_type IS NOT NULL""",
    ]),
    # The rollout: its state (one row per rollout), every transition with its
    # evidence, every gate evaluation; and, per prediction, how it was routed
    # and when a live one reached the sink.
    (3, [
        """CREATE TABLE rollout_state (
            rollout VARCHAR NOT NULL,
            candidate VARCHAR NOT NULL,
            version VARCHAR,
            step INTEGER NOT NULL,
            percent DOUBLE NOT NULL,
            status VARCHAR NOT NULL,
            step_started_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL,
            revision INTEGER NOT NULL
        )""",
        """CREATE TABLE rollout_audit (
            rollout VARCHAR NOT NULL,
            revision INTEGER NOT NULL,
            changed_at TIMESTAMPTZ NOT NULL,
            actor VARCHAR NOT NULL,
            action VARCHAR NOT NULL,
            from_step INTEGER,
            to_step INTEGER NOT NULL,
            from_status VARCHAR,
            to_status VARCHAR NOT NULL,
            percent DOUBLE NOT NULL,
            reason VARCHAR NOT NULL,
            evidence JSON
        )""",
        """CREATE TABLE gate_evaluations (
            rollout VARCHAR NOT NULL,
            evaluated_at TIMESTAMPTZ NOT NULL,
            step INTEGER NOT NULL,
            percent DOUBLE NOT NULL,
            kind VARCHAR NOT NULL,
            phase VARCHAR NOT NULL,
            evidence JSON NOT NULL
        )""",
        "ALTER TABLE predictions ADD COLUMN review BOOLEAN NOT NULL DEFAULT false",
        "ALTER TABLE predictions ADD COLUMN rollout_step INTEGER",
        "ALTER TABLE predictions ADD COLUMN published_at TIMESTAMPTZ",
    ]),
    # The daemon's scheduled jobs: when each last ran, so a run missed during
    # downtime happens once at start-up instead of never (or many times).
    (4, [
        """CREATE TABLE job_runs (
            job VARCHAR NOT NULL,
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ NOT NULL,
            ok BOOLEAN NOT NULL,
            error VARCHAR
        )""",
    ]),
    # Hard-constraint violations of each prediction; NULL when there are none.
    (5, [
        "ALTER TABLE predictions ADD COLUMN violations VARCHAR[]",
    ]),
    # Why a comparison came out as it did: the comparator's note (a similarity
    # score, the judge's reason); NULL for comparisons made before it was kept.
    (6, [
        "ALTER TABLE comparisons ADD COLUMN note VARCHAR",
    ]),
    # What the rollout gates count: one unit per key of the current step (its
    # segments as a JSON list of [field, value] pairs), the labels it got in the
    # order they arrived, and where the incremental work and the forward-running
    # rollback detector stand (rollout/units.py). Append-only: a restarted
    # controller replays them in ``seq`` order.
    (7, [
        """CREATE TABLE rollout_units (
            rollout VARCHAR NOT NULL,
            seq BIGINT NOT NULL,
            key VARCHAR NOT NULL,
            event_id VARCHAR NOT NULL,
            occurred_at TIMESTAMPTZ NOT NULL,
            shadow BOOLEAN NOT NULL,
            eligible BOOLEAN NOT NULL,
            segments VARCHAR NOT NULL
        )""",
        """CREATE TABLE rollout_labels (
            rollout VARCHAR NOT NULL,
            seq BIGINT NOT NULL,
            key VARCHAR NOT NULL,
            event_id VARCHAR NOT NULL,
            agree BOOLEAN NOT NULL,
            independent BOOLEAN NOT NULL,
            decided_at TIMESTAMPTZ NOT NULL,
            occurred_at TIMESTAMPTZ NOT NULL
        )""",
        """CREATE TABLE rollout_progress (
            rollout VARCHAR NOT NULL PRIMARY KEY,
            step_started_at TIMESTAMPTZ NOT NULL,
            predicted_through TIMESTAMPTZ,
            compared_through TIMESTAMPTZ,
            labels BIGINT NOT NULL,
            fed BIGINT NOT NULL,
            evaluated_labels BIGINT NOT NULL,
            statistic INTEGER NOT NULL,
            seen BIGINT NOT NULL,
            alarmed_at BIGINT,
            mature_cutoff DOUBLE,
            expiry_cutoff DOUBLE,
            clock DOUBLE
        )""",
    ]),
    # Live decisions that will never be published: withdrawn when the rollout stopped
    # acting (rollback, abort, restart) or when they grew older than allowed.
    (8, [
        "ALTER TABLE predictions ADD COLUMN withdrawn_at TIMESTAMPTZ",
        "ALTER TABLE predictions ADD COLUMN withdrawn_reason VARCHAR",
    ]),
    # Who gave each command, as far as the daemon can vouch: the name of the control API
    # token it came with, beside the actor the caller claimed. NULL for a command made on
    # the store file (no token involved) and for the controller's own transitions; '' for
    # people's commands recorded before tokens had names, which are not known to be local.
    (9, [
        "ALTER TABLE rollout_audit ADD COLUMN token VARCHAR",
        "UPDATE rollout_audit SET token = '' WHERE actor <> 'controller'",
    ]),
    # Settings kept with the store, by name, as JSON text: "readiness" is what the last
    # replay or daemon given a configuration judged "ready" by (shadow.pipeline.readiness).
    (10, [
        """CREATE TABLE settings (
            name VARCHAR PRIMARY KEY,
            value JSON NOT NULL,
            saved_at TIMESTAMPTZ NOT NULL
        )""",
    ]),
    # Actions (shadow.core.actions), one row per element of the ``actions`` of a
    # prediction's output (side 'prediction': event_id, candidate, version) or of an
    # outcome's value (side 'outcome': key, decided_at), in their order (``ordinal``, from
    # 0; NULL when ``actions`` is not a list at all). A malformed element keeps only its
    # ordinal and ``problem``; ``valid`` is false for it and for an action a violation of
    # its prediction names (``actions[2]``, ``output.actions.2``).
    (11, [
        """CREATE TABLE actions (
            side VARCHAR NOT NULL,
            event_id VARCHAR,
            candidate VARCHAR,
            version VARCHAR,
            key VARCHAR,
            decided_at TIMESTAMPTZ,
            ordinal INTEGER,
            tool VARCHAR,
            arguments JSON,
            action_id VARCHAR,
            confidence DOUBLE,
            valid BOOLEAN NOT NULL,
            problem VARCHAR
        )""",
    ]),
    # The tool calls an agent executed in shadow (shadow.store.tool_calls), one row per
    # element of the ``tool_calls`` of a prediction's output, linked by event_id,
    # candidate and version, in their order (``ordinal``, from 0; NULL when
    # ``tool_calls`` is not a list). ``result`` is the call's output as JSON, cut short
    # (then a JSON string); a malformed element keeps its ordinal and ``problem``.
    (12, [
        """CREATE TABLE tool_calls (
            event_id VARCHAR NOT NULL,
            candidate VARCHAR NOT NULL,
            version VARCHAR,
            ordinal INTEGER,
            step INTEGER,
            call_id VARCHAR,
            tool VARCHAR,
            arguments JSON,
            result JSON,
            latency_ms DOUBLE,
            error VARCHAR,
            problem VARCHAR
        )""",
    ]),
    # The exact request a chat candidate sent (shadow.store.requests), stored once per
    # distinct content: ``request_hash`` is the SHA-256 of its canonical JSON (keys
    # sorted), which the prediction's ``request_hash`` names. ``candidate``, ``version``
    # and ``model`` are those of the first prediction that sent it.
    (13, [
        """CREATE TABLE requests (
            request_hash VARCHAR PRIMARY KEY,
            request JSON NOT NULL,
            candidate VARCHAR NOT NULL,
            version VARCHAR,
            model VARCHAR,
            first_sent_at TIMESTAMPTZ NOT NULL
        )""",
        "ALTER TABLE predictions ADD COLUMN request_hash VARCHAR",
    ]),
    # Tiers (shadow.config.tiers): the tier of each prediction of a rolled-out candidate
    # (auto, review, human) and what chose it (``rules[i]``, ``default``, ``error``,
    # ``abstained``, ``violation``), NULL until the rollout has assessed it; and the
    # proposals of tier review, live or (what shadow would have proposed) shadow, one per
    # ``review_id`` with the message a review sink receives. ``published_at`` is when a
    # live proposal reached the review sink; ``status`` is open until a verdict.
    (14, [
        "ALTER TABLE predictions ADD COLUMN tier VARCHAR",
        "ALTER TABLE predictions ADD COLUMN tier_rule VARCHAR",
        """CREATE TABLE reviews (
            review_id VARCHAR PRIMARY KEY,
            event_id VARCHAR NOT NULL,
            key VARCHAR NOT NULL,
            candidate VARCHAR NOT NULL,
            version VARCHAR,
            rollout VARCHAR NOT NULL,
            mode VARCHAR NOT NULL,
            rollout_step INTEGER,
            proposed_at TIMESTAMPTZ NOT NULL,
            status VARCHAR NOT NULL DEFAULT 'open',
            proposal JSON NOT NULL,
            published_at TIMESTAMPTZ
        )""",
    ]),
    # Review verdicts (shadow.store.verdicts): the first verdict of each review, approve,
    # edit or reject, with ``output`` what an approve or edit publishes (the proposal's
    # output, or the reviewer's edit; NULL for a reject), who decided and when, and where
    # the verdict was read (``source``, ``position``: a record of a source, or the API).
    # ``published_at`` is when an approved or edited live proposal reached the action sink.
    (15, [
        """CREATE TABLE review_verdicts (
            review_id VARCHAR PRIMARY KEY,
            verdict VARCHAR NOT NULL,
            output JSON,
            reviewer VARCHAR,
            decided_at TIMESTAMPTZ NOT NULL,
            received_at TIMESTAMPTZ NOT NULL,
            source VARCHAR NOT NULL,
            position VARCHAR,
            published_at TIMESTAMPTZ
        )""",
    ]),
    # Tier fallback (rollout/tier_health.py): the tiers of a rollout whose agreement broke,
    # in the order they fell; empty until one does, and again after a restart.
    (16, [
        "ALTER TABLE rollout_state ADD COLUMN fallen_tiers VARCHAR[] DEFAULT []",
    ]),
]
MIGRATIONS.sort(key=lambda migration: migration[0])


def migrate(db: duckdb.DuckDBPyConnection) -> int:
    """Bring the schema to the newest version, one migration per transaction.

    Returns the version the store is at afterwards.
    """
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    current = check_version(db)
    for version, statements in MIGRATIONS:
        if version <= current:
            continue
        db.execute("BEGIN TRANSACTION")
        for statement in statements:
            db.execute(statement)
        db.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
        db.execute("COMMIT")
        current = version
    return current


def check_version(db: duckdb.DuckDBPyConnection) -> int:
    """The store's schema version, refusing one newer than this code knows."""
    try:
        rows = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()
    except duckdb.CatalogException:
        return 0
    current = int(rows[0][0])
    newest = MIGRATIONS[-1][0]
    if current > newest:
        raise StoreError(
            f"the store has schema version {current}, newer than this tool's {newest}; "
            f"upgrade the tool to read it"
        )
    return current
