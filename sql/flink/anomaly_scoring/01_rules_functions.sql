-- JVM-side aggregate functions of the anomaly-rules job, compiled from udfs/java into vigil-udfs.jar.
-- EWMA_ZSCORE(value, alpha, warmup): signed z-score of value against the EWMA baseline before it.
CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS EWMA_ZSCORE AS 'vigil.udf.EwmaZScore' LANGUAGE JAVA
