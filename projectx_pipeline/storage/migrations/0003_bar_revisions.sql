-- Every replace-when-different upsert keeps the bar it overwrote, so no published bar ever
-- changes silently and reconciliation can show live and history values side by side.
CREATE TABLE bar_revisions (
    contract_id     text             NOT NULL,
    timeframe_unit  smallint         NOT NULL,
    timeframe_value integer          NOT NULL,
    "timestamp"     timestamptz      NOT NULL,
    old_open        double precision NOT NULL,
    old_high        double precision NOT NULL,
    old_low         double precision NOT NULL,
    old_close       double precision NOT NULL,
    old_volume      bigint           NOT NULL,
    old_source      text             NOT NULL,
    new_open        double precision NOT NULL,
    new_high        double precision NOT NULL,
    new_low         double precision NOT NULL,
    new_close       double precision NOT NULL,
    new_volume      bigint           NOT NULL,
    new_source      text             NOT NULL,
    revised_at      timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX bar_revisions_bar ON bar_revisions (contract_id, timeframe_unit, timeframe_value, "timestamp");
