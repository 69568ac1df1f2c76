/* Publish throughput through the C ABI, one call after another: what the binding adds to a
 * publish is measured against the same loop through the Rust API (examples/rust/
 * publish_bench.rs) and Python (scripts/bench-bindings.py runs all three, alternately).
 *
 *   cc publish_bench.c $(pkg-config --cflags --libs crabnet) -o publish_bench
 *   ./publish_bench DATA_DIR COUNT
 *
 * Starts a node without a network on DATA_DIR, publishes COUNT seeds (the clock runs from the
 * first call to the last return only: not the start, not the stop) and prints one line:
 * `c COUNT MICROSECONDS`.
 */
#define _XOPEN_SOURCE 700
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "crabnet.h"

static void check(crabnet_status status, const char *what) {
    if (status != CRABNET_STATUS_OK) {
        fprintf(stderr, "%s failed: %s: %s\n", what, crabnet_status_name(status),
                crabnet_last_error());
        exit(1);
    }
}

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
    check(crabnet_config_new(argv[1], &config), "crabnet_config_new");
    crabnet_node *node = NULL;
    check(crabnet_node_start(config, &node), "crabnet_node_start");
    crabnet_config_free(config);

    double start = now_us();
    for (long i = 0; i < count; i++) {
        char request[128];
        snprintf(request, sizeof request,
                 "{\"command\": \"echo bench %ld\", \"bid_window_secs\": 3600}", i);
        char *seed = NULL;
        check(crabnet_node_publish(node, request, &seed), "crabnet_node_publish");
        crabnet_string_free(seed);
    }
    double elapsed = now_us() - start;

    check(crabnet_node_stop(node), "crabnet_node_stop");
    crabnet_node_free(node);
    printf("c %ld %.0f\n", count, elapsed);
    return 0;
}
