/* Publish throughput through the C ABI, one call after another: what the binding adds to a
 * publish is measured against the same loop through the Rust API (examples/rust/
 * publish_bench.rs) and Python (scripts/bench-bindings.py runs all three, alternately).
 *
 *   cc publish_bench.c $(pkg-config --cflags --libs crabnet) -o publish_bench
 *   ./publish_bench DATA_DIR COUNT
 *
 * Starts a node without a network on DATA_DIR, publishes COUNT seeds (the clock runs from the
 * first call to the last return only: not the start, not the stop) and prints one line:
 * `c COUNT MICROSECONDS`. CRABNET_BENCH_SYNC=normal runs the node with store.sync = "normal".
 * With CRABNET_BENCH_LOCKSTEP set, each publish waits for a line on stdin and its time (µs) is
 * printed on a line of its own: scripts/bench-bindings.py --lockstep interleaves the three
 * programs call by call, so that all of them meet the same load.
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crabnet.h"

/* Returns 1 from main with the call, its status's name and the last error, unless it is OK. */
#define TRY(call)                                                                          \
    do {                                                                                   \
        crabnet_status status_ = (call);                                                   \
        if (status_ != CRABNET_STATUS_OK) {                                                \
            fprintf(stderr, "%s: %s: %s\n", #call, crabnet_status_name(status_),            \
                    crabnet_last_error());                                                 \
            return 1;                                                                      \
        }                                                                                  \
    } while (0)

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

int main(int argc, char **argv) {
    if (argc != 3 || atol(argv[2]) <= 0) {
        fprintf(stderr, "usage: %s DATA_DIR COUNT\n", argv[0]);
        return 2;
    }
    long count = atol(argv[2]);
    crabnet_config *config = NULL;
    TRY(crabnet_config_new(argv[1], &config));
    const char *sync = getenv("CRABNET_BENCH_SYNC");
    if (sync != NULL && strcmp(sync, "normal") == 0) {
        TRY(crabnet_config_merge_json(config, "{\"store\": {\"sync\": \"normal\"}}"));
    }
    crabnet_node *node = NULL;
    TRY(crabnet_node_start(config, &node));
    crabnet_config_free(config);

    int lockstep = getenv("CRABNET_BENCH_LOCKSTEP") != NULL;
    double elapsed = 0;
    for (long i = 0; i < count; i++) {
        char request[128];
        snprintf(request, sizeof request,
                 "{\"command\": \"echo bench %ld\", \"bid_window_secs\": 3600}", i);
        if (lockstep && getchar() == EOF) return 1;
        double start = now_us();
        char *seed = NULL;
        TRY(crabnet_node_publish(node, request, &seed));
        crabnet_string_free(seed);
        double took = now_us() - start;
        elapsed += took;
        if (lockstep) {
            printf("%.1f\n", took);
            fflush(stdout);
        }
    }

    TRY(crabnet_node_stop(node));
    crabnet_node_free(node);
    printf("c %ld %.0f\n", count, elapsed);
    return 0;
}
