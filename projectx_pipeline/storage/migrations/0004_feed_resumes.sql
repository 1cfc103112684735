-- Where a contract's live feed resumed after a (re)connect whose gap is not repaired from
-- history yet. Written before the first live bar after the resume, deleted once a gap repair
-- has covered it: a daemon killed in between leaves the row, and the next daemon's gap repair
-- starts before it rather than after the live bars it had stored (which would hide the gap).
CREATE TABLE IF NOT EXISTS feed_resumes (
    contract_id text        NOT NULL,
    resumed_at  timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (contract_id, resumed_at)
);
