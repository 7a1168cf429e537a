package vigil.udf;

import org.apache.flink.table.functions.AggregateFunction;

/**
 * Population standard deviation with Welford's update and Chan's merge.
 *
 * <p>Flink's built-in STDDEV_POP is rewritten to sums of squares, which loses every digit when a
 * sensor's mean dwarfs its spread (a pressure of 1e6 with noise 1e-3) and can even go negative.
 * This keeps (count, mean, M2) instead, so the result matches a two-pass computation, and merges
 * exactly across Flink's local/global (two-phase) window aggregation.
 */
public class StddevPop extends AggregateFunction<Double, StddevPop.Acc> {

    /** Running count, mean and sum of squared deviations from the mean. */
    public static class Acc {
        public long n;
        public double mean;
        public double m2;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Double value) {
        if (value == null) {
            return;
        }
        acc.n += 1;
        double delta = value - acc.mean;
        acc.mean += delta / acc.n;
        acc.m2 += delta * (value - acc.mean);
    }

    public void merge(Acc acc, Iterable<Acc> others) {
        for (Acc other : others) {
            if (other.n == 0) {
                continue;
            }
            if (acc.n == 0) {
                acc.n = other.n;
                acc.mean = other.mean;
                acc.m2 = other.m2;
                continue;
            }
            long n = acc.n + other.n;
            double delta = other.mean - acc.mean;
            acc.mean += delta * other.n / n;
            acc.m2 += other.m2 + delta * delta * ((double) acc.n * other.n / n);
            acc.n = n;
        }
    }

    public void resetAccumulator(Acc acc) {
        acc.n = 0;
        acc.mean = 0.0;
        acc.m2 = 0.0;
    }

    @Override
    public Double getValue(Acc acc) {
        if (acc.n == 0) {
            return null;
        }
        return Math.sqrt(Math.max(acc.m2, 0.0) / acc.n);
    }
}
