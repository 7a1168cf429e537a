package vigil.udf;

import org.apache.flink.table.functions.AggregateFunction;

/**
 * Z-score of each value against an exponentially weighted baseline of the values before it.
 *
 * <p>Meant for an unbounded OVER aggregation per series
 * ({@code OVER (PARTITION BY equipment_id, sensor ORDER BY rowtime ROWS BETWEEN UNBOUNDED PRECEDING
 * AND CURRENT ROW)}): Flink calls {@code accumulate} then {@code getValue} for every row, so the
 * accumulator keeps the z-score of the row just added, computed against the baseline BEFORE that row
 * moved it (a spike cannot hide itself). The accumulator is plain numbers in Flink keyed state, so
 * it is checkpointed and restored with the job.
 *
 * <p>Same recurrences as the Python detector (udfs/detectors/ewma_zscore.py), with
 * {@code d = x - m}: {@code m' = m + a d}, {@code v' = (1 - a)(v + a d^2)}; the first value seeds the
 * mean with variance 0. The result is signed ({@code (x - m) / sqrt(v + eps)}) and NULL while fewer
 * than {@code warmup} values have been absorbed, or for a NULL/NaN/infinite value (which does not
 * move the baseline either).
 */
public class EwmaZScore extends AggregateFunction<Double, EwmaZScore.Acc> {

    /** Keeps a constant baseline (variance 0) from dividing by zero; equals the Python detector's. */
    public static final double EPS = 1e-9;

    /** Values absorbed, EWMA mean and variance, and the z-score of the latest value (NULL if none). */
    public static class Acc {
        public long count;
        public double mean;
        public double var;
        public Double lastZ;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Double value, Double alpha, Integer warmup) {
        acc.lastZ = null;
        if (value == null || value.isNaN() || value.isInfinite()) {
            return;
        }
        if (alpha == null || !(alpha > 0.0 && alpha <= 1.0)) {
            throw new IllegalArgumentException("EWMA_ZSCORE: alpha must be in (0, 1], got " + alpha);
        }
        double x = value;
        if (acc.count == 0) {
            acc.mean = x;
            acc.var = 0.0;
        }
        double d = x - acc.mean;
        if (acc.count >= (warmup == null ? 0 : warmup)) {
            acc.lastZ = d / Math.sqrt(acc.var + EPS);
        }
        acc.mean += alpha * d;
        acc.var = (1.0 - alpha) * (acc.var + alpha * d * d);
        acc.count += 1;
    }

    public void resetAccumulator(Acc acc) {
        acc.count = 0;
        acc.mean = 0.0;
        acc.var = 0.0;
        acc.lastZ = null;
    }

    @Override
    public Double getValue(Acc acc) {
        return acc.lastZ;
    }
}
