/* Small test helpers shared by the C tests: checks that stop the program with a clear message,
 * JSON accessors, temporary directories, node setup and waiting for convergence. */
#ifndef CRABNET_TEST_CHECK_H
#define CRABNET_TEST_CHECK_H

#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "crabnet.h"

static int checks_passed;

#define FAIL(...)                                                                        \
    do {                                                                                 \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                 \
        fprintf(stderr, __VA_ARGS__);                                                    \
        fprintf(stderr, "\n");                                                           \
        exit(1);                                                                         \
    } while (0)

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) FAIL("check failed: %s", #cond);                                    \
        checks_passed++;                                                                 \
    } while (0)

/* Runs a call that returns a crabnet_status and checks the status. */
#define EXPECT(expected, call)                                                           \
    do {                                                                                 \
        crabnet_status got_ = (call);                                                    \
        if (got_ != (expected))                                                          \
            FAIL("%s\n  returned %s, expected %s; last error: %s", #call,                \
                 crabnet_status_name(got_), crabnet_status_name(expected),               \
                 crabnet_last_error());                                                  \
        checks_passed++;                                                                 \
    } while (0)

#define OK(call) EXPECT(CRABNET_STATUS_OK, call)

/* Checks a failing call's status and that the last error names the function and contains
 * `needle`. */
#define EXPECT_ERR(expected, needle, call)                                               \
    do {                                                                                 \
        EXPECT(expected, call);                                                          \
        const char *err_ = crabnet_last_error();                                         \
        if (strncmp(err_, "crabnet_", 8) != 0 || strstr(err_, (needle)) == NULL)         \
            FAIL("%s\n  last error %s lacks \"%s\"", #call, err_, (needle));            \
        checks_passed++;                                                                 \
    } while (0)

static inline void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The string at a JSON pointer; free with crabnet_string_free. */
static inline char *json_str(const char *json, const char *pointer) {
    char *out = NULL;
    OK(crabnet_json_get_string(json, pointer, &out));
    return out;
}

static inline int json_str_eq(const char *json, const char *pointer, const char *want) {
    char *got = json_str(json, pointer);
    int eq = strcmp(got, want) == 0;
    crabnet_string_free(got);
    return eq;
}

static inline uint64_t json_u64(const char *json, const char *pointer) {
    uint64_t out = 0;
    OK(crabnet_json_get_u64(json, pointer, &out));
    return out;
}

/* The raw JSON text at a pointer compared with `want` (e.g. "true", "null"). */
static inline int json_raw_eq(const char *json, const char *pointer, const char *want) {
    char *got = NULL;
    OK(crabnet_json_get(json, pointer, &got));
    int eq = strcmp(got, want) == 0;
    crabnet_string_free(got);
    return eq;
}

static inline int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static inline void remove_tree(const char *dir) {
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static inline void make_temp_dir(char *buf, size_t size, const char *tag) {
    snprintf(buf, size, "/tmp/crabnet-ctest-%s-XXXXXX", tag);
    if (mkdtemp(buf) == NULL) FAIL("mkdtemp failed");
}

/* A configuration for node `name` under `base`, with a fast tick. The task sandbox policy is
 * the default ("required") unless CRABNET_TEST_SANDBOX names another (run.sh sets "none" for
 * the valgrind runs, where the sandbox cannot be built). */
static inline crabnet_config *test_config(const char *base, const char *name) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", base, name);
    crabnet_config *config = NULL;
    OK(crabnet_config_new(dir, &config));
    OK(crabnet_config_set_name(config, name));
    OK(crabnet_config_set_tick_ms(config, 20));
    const char *sandbox = getenv("CRABNET_TEST_SANDBOX");
    if (sandbox != NULL && sandbox[0] != '\0') OK(crabnet_config_set_sandbox(config, sandbox));
    return config;
}

static inline crabnet_node *start_on_hub(const crabnet_hub *hub, const char *base, const char *name) {
    crabnet_config *config = test_config(base, name);
    crabnet_node *node = NULL;
    OK(crabnet_node_start_memory(config, hub, name, &node));
    crabnet_config_free(config); /* the node keeps its own copy */
    return node;
}

/* A node named `name` under `base` without a network. */
static inline crabnet_node *start_offline(const char *base, const char *name) {
    crabnet_config *config = test_config(base, name);
    crabnet_node *node = NULL;
    OK(crabnet_node_start(config, &node));
    crabnet_config_free(config);
    return node;
}

/* Two nodes on a fresh in-process network (the hub is freed: the nodes hold it). */
static inline void start_pair_on_hub(const char *base, const char *name_a, const char *name_b,
                                     crabnet_node **a, crabnet_node **b) {
    crabnet_hub *hub = NULL;
    OK(crabnet_hub_new(&hub));
    *a = start_on_hub(hub, base, name_a);
    *b = start_on_hub(hub, base, name_b);
    crabnet_hub_free(hub);
}

/* Waits until `node` verified the hellos of `count` peers, within `timeout_ms`; returns the
 * peers (free with crabnet_string_free). */
static inline char *wait_peers(const crabnet_node *node, uint32_t count, uint32_t timeout_ms) {
    char *peers = NULL;
    OK(crabnet_node_wait_for_peers(node, count, timeout_ms, &peers));
    return peers;
}

/* Waits until `node` knows the seed with status `status` (any status when NULL) and returns
 * its state (free with crabnet_string_free). */
static inline char *wait_seed(const crabnet_node *node, const char *seed_id, const char *status) {
    double deadline = now_s() + 20.0;
    for (;;) {
        char *seed = NULL;
        crabnet_status s = crabnet_node_seed(node, seed_id, &seed);
        if (s == CRABNET_STATUS_OK) {
            if (status == NULL || json_str_eq(seed, "/status", status)) return seed;
            crabnet_string_free(seed);
        } else if (s != CRABNET_STATUS_NOT_FOUND) {
            FAIL("crabnet_node_seed: %s: %s", crabnet_status_name(s), crabnet_last_error());
        }
        if (now_s() > deadline)
            FAIL("timed out waiting for seed %s to be %s", seed_id, status ? status : "known");
        sleep_ms(10);
    }
}

/* Waits until the seed has an award (bidding closed) on `node`; returns its state. */
static inline char *wait_award(const crabnet_node *node, const char *seed_id) {
    double deadline = now_s() + 20.0;
    for (;;) {
        char *seed = wait_seed(node, seed_id, NULL);
        if (!json_raw_eq(seed, "/award", "null")) return seed;
        crabnet_string_free(seed);
        if (now_s() > deadline) FAIL("timed out waiting for the award of %s", seed_id);
        sleep_ms(10);
    }
}

/* `node` bids `price` on the seed once it knows it open, waits until bidding closed, and claims
 * it (the node must be the winner). */
static inline void bid_and_claim(const crabnet_node *node, const char *seed_id, uint64_t price) {
    char *seed = NULL;
    crabnet_string_free(wait_seed(node, seed_id, "open"));
    OK(crabnet_node_bid(node, seed_id, price, &seed));
    crabnet_string_free(seed);
    crabnet_string_free(wait_award(node, seed_id));
    OK(crabnet_node_claim(node, seed_id, &seed));
    crabnet_string_free(seed);
}

/* Events seen by a callback, kept as their "type" names; the callback runs on the node's
 * events thread, so access is locked. */
#define MAX_EVENTS 512
typedef struct {
    pthread_mutex_t lock;
    int count;
    char types[MAX_EVENTS][40];
} recorder;

static inline void recorder_init(recorder *r) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
}

static inline void record_event(void *user_data, const char *event_json) {
    recorder *r = (recorder *)user_data;
    char *type = json_str(event_json, "/type");
    pthread_mutex_lock(&r->lock);
    if (r->count < MAX_EVENTS) {
        snprintf(r->types[r->count], sizeof r->types[0], "%s", type);
        r->count++;
    }
    pthread_mutex_unlock(&r->lock);
    crabnet_string_free(type);
}

static inline int recorder_count(recorder *r) {
    pthread_mutex_lock(&r->lock);
    int n = r->count;
    pthread_mutex_unlock(&r->lock);
    return n;
}

static inline int recorder_saw(recorder *r, const char *type) {
    int found = 0;
    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < r->count; i++)
        if (strcmp(r->types[i], type) == 0) found++;
    pthread_mutex_unlock(&r->lock);
    return found;
}

#endif
