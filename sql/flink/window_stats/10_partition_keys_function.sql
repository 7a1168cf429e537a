-- One record key per partition of the window-stats topic (udfs/java: Kafka's own partitioner hash).
CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS PARTITION_KEYS AS 'vigil.udf.PartitionKeys' LANGUAGE JAVA
