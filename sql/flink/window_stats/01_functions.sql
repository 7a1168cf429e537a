-- JVM-side aggregate functions compiled from udfs/java into vigil-udfs.jar (on pipeline.jars).
CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS STDDEV_POP_EXACT AS 'vigil.udf.StddevPop' LANGUAGE JAVA
