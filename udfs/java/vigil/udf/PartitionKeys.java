package vigil.udf;

import java.nio.charset.StandardCharsets;

import org.apache.flink.kafka.shaded.org.apache.kafka.common.utils.Utils;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * One record key per partition of a topic with {@code partitions} partitions: {@code prefix + n}, the first n
 * whose key Kafka's default partitioner (murmur2 of the key, the Flink Kafka sink's default) sends to each
 * partition, ordered by partition.
 *
 * <p>The window-stats job writes one progress marker per partition and window with these keys, so that every
 * partition of the window-stats topic moves its reader's watermark even where no machine's key lands and no
 * partition has to be declared idle (an idle partition that wakes up behind the others loses its windows).
 * The partitioner's own hash is used, not a copy of it, so the keys follow the connector's Kafka client.
 */
public class PartitionKeys extends ScalarFunction {

    private String[] cached;

    /**
     * Not deterministic, as far as the planner knows: with constant arguments it would otherwise fold the call
     * into a constant, and a constant array unnested becomes a join against a VALUES source (a regular join,
     * whose state never expires). Computed once per function instance all the same.
     */
    @Override
    public boolean isDeterministic() {
        return false;
    }

    public String[] eval(String prefix, Integer partitions) {
        if (prefix == null || partitions == null || partitions < 1) {
            return null;
        }
        if (cached != null && cached.length == partitions && cached[0].startsWith(prefix)) {
            return cached;
        }
        String[] keys = new String[partitions];
        int found = 0;
        for (int n = 0; found < partitions; n++) {
            String key = prefix + n;
            int partition = Utils.toPositive(Utils.murmur2(key.getBytes(StandardCharsets.UTF_8))) % partitions;
            if (keys[partition] == null) {
                keys[partition] = key;
                found++;
            }
        }
        cached = keys;
        return keys;
    }
}
