-- Timing helpers shared by the benchmarks: interleaved runs, median in ms.
CREATE SCHEMA IF NOT EXISTS bench;
CREATE OR REPLACE FUNCTION bench.ms(query text, loops int) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
BEGIN
    t0 := clock_timestamp();
    FOR i IN 1..loops LOOP
        EXECUTE query;
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1000 / loops;
END
$$;

-- median time of candidate and baseline, run alternately, and their ratio
CREATE OR REPLACE FUNCTION bench.compare(label text, candidate text, baseline text,
                                         loops int DEFAULT 5, rounds int DEFAULT 7)
RETURNS TABLE (benchmark text, candidate_ms numeric, baseline_ms numeric, ratio numeric)
LANGUAGE plpgsql AS $$
DECLARE
    c float8[] := '{}';
    b float8[] := '{}';
BEGIN
    PERFORM bench.ms(candidate, 1);
    PERFORM bench.ms(baseline, 1);
    FOR i IN 1..rounds LOOP
        c := c || bench.ms(candidate, loops);
        b := b || bench.ms(baseline, loops);
    END LOOP;
    benchmark := label;
    candidate_ms := round((SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(c) x)::numeric, 3);
    baseline_ms := round((SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM unnest(b) x)::numeric, 3);
    ratio := round(candidate_ms / nullif(baseline_ms, 0), 3);
    RETURN NEXT;
END
$$;
