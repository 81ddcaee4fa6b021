-- Tokens and latency per model and prompt version (succeeded, failed, unparseable separately).
-- Usage: psql "$TUWEN_ANALYST_URL" -f sql/queries/06_generation_stats.sql
SELECT model, prompt_id, prompt_version, status, generations, attempts,
       avg_prompt_tokens, avg_completion_tokens,
       round(p50_latency_ms::numeric, 0) AS p50_latency_ms,
       round(p95_latency_ms::numeric, 0) AS p95_latency_ms
FROM v_generation_stats
ORDER BY model, prompt_id, prompt_version, status;
