/* Open MPI measured in the same run as shoal's collectives (see
 * bench/src/bin/collectives.rs, which compiles this with mpicc and starts
 * it with mpirun). Prints one JSON line on rank 0 in the harness format
 * (BENCH.md), samples in ns or tasks/s:
 *
 *   mpi_peer barrier ITERS           MPI_Barrier: the mean of batches of 50, on rank 0
 *   mpi_peer bcast SIZE ITERS        MPI_Bcast from rank 0 after a barrier:
 *                                    from the root's start to the last
 *                                    rank's having it
 *   mpi_peer lock ITERS              MPI_Win_lock(EXCLUSIVE) on rank 0's
 *                                    window + MPI_Fetch_and_op + unlock by
 *                                    every rank at once: time per grant
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static void emit(const char *pattern, long size, int procs, const char *metric,
                 const double *s, int n) {
    printf("{\"system\":\"openmpi\",\"transport\":\"shm\",\"pattern\":\"%s\","
           "\"mode\":\"park\",\"payload_bytes\":%ld,\"readers\":%d,"
           "\"processes\":%d,\"metric\":\"%s\",\"samples\":[",
           pattern, size, procs - 1, procs, metric);
    for (int i = 0; i < n; i++)
        printf("%s%.1f", i ? "," : "", s[i]);
    printf("]}\n");
    fflush(stdout);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const char *op = argc > 1 ? argv[1] : "barrier";
    if (!strcmp(op, "barrier")) {
        int iters = argc > 2 ? atoi(argv[2]) : 1000;
        double *s = malloc(sizeof(double) * iters);
        for (int i = 0; i < 100; i++) MPI_Barrier(MPI_COMM_WORLD);
        /* The mean of a batch of 50 back-to-back barriers, as the shoal
           side measures it. */
        int batches = iters / 50 > 0 ? iters / 50 : 1;
        for (int i = 0; i < batches; i++) {
            double t = now_ns();
            for (int j = 0; j < 50; j++) MPI_Barrier(MPI_COMM_WORLD);
            s[i] = (now_ns() - t) / 50.0;
        }
        if (rank == 0) emit("barrier", 0, size, "barrier_ns", s, batches);
    } else if (!strcmp(op, "bcast")) {
        long len = argc > 2 ? atol(argv[2]) : 8;
        int iters = argc > 3 ? atoi(argv[3]) : 1000;
        char *buf = malloc(len > 0 ? len : 1);
        memset(buf, rank, len);
        double *starts = malloc(sizeof(double) * iters);
        double *ends = malloc(sizeof(double) * iters);
        double *all = malloc(sizeof(double) * iters * size);
        for (int i = 0; i < 20; i++) MPI_Bcast(buf, len, MPI_CHAR, 0, MPI_COMM_WORLD);
        /* From the root's start to the last rank's having it, on the
         * host's monotonic clock (shared by every process). */
        for (int i = 0; i < iters; i++) {
            MPI_Barrier(MPI_COMM_WORLD);
            starts[i] = now_ns();
            MPI_Bcast(buf, len, MPI_CHAR, 0, MPI_COMM_WORLD);
            ends[i] = now_ns();
        }
        MPI_Gather(ends, iters, MPI_DOUBLE, all, iters, MPI_DOUBLE, 0, MPI_COMM_WORLD);
        if (rank == 0) {
            for (int i = 0; i < iters; i++) {
                double last = all[i];
                for (int r = 1; r < size; r++)
                    if (all[r * iters + i] > last) last = all[r * iters + i];
                starts[i] = last - starts[i];
            }
            emit("collective-broadcast", len, size, "latency_one_way_ns", starts, iters);
        }
    } else if (!strcmp(op, "lock")) {
        int iters = argc > 2 ? atoi(argv[2]) : 1000;
        long *base;
        MPI_Win win;
        MPI_Win_allocate(sizeof(long), sizeof(long), MPI_INFO_NULL, MPI_COMM_WORLD, &base, &win);
        *base = 0;
        MPI_Barrier(MPI_COMM_WORLD);
        int rounds = 5;
        double s[5];
        long one = 1, old;
        for (int k = 0; k < rounds; k++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t = now_ns();
            for (int i = 0; i < iters; i++) {
                MPI_Win_lock(MPI_LOCK_EXCLUSIVE, 0, 0, win);
                MPI_Fetch_and_op(&one, &old, MPI_LONG, 0, 0, MPI_SUM, win);
                MPI_Win_unlock(0, win);
            }
            double end = now_ns(), first, last;
            /* From the first rank's start to the last rank's end. */
            MPI_Reduce(&t, &first, 1, MPI_DOUBLE, MPI_MIN, 0, MPI_COMM_WORLD);
            MPI_Reduce(&end, &last, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
            s[k] = (last - first) / ((double)iters * size);
        }
        if (rank == 0) emit("lock", 0, size, "lock_handoff_ns", s, rounds);
        MPI_Win_free(&win);
    }
    MPI_Finalize();
    return 0;
}
