/* The log callback: a core warning (a node started with runner.sandbox = "none") reaches the
 * host with its level, target and message, on a Crabnet thread; CRABNET_LOG overrides the
 * callback's level, and without it the level filters (an ERROR callback gets no warning); a
 * replaced or removed callback's user data is never touched again. */
#include "check.h"

#define MAX_LOGS 64

typedef struct {
    pthread_mutex_t lock;
    pthread_t host_thread;
    int count;
    int on_host_thread;
    crabnet_log_level levels[MAX_LOGS];
    char targets[MAX_LOGS][64];
    char messages[MAX_LOGS][512];
} log_recorder;

static log_recorder *log_recorder_new(void) {
    log_recorder *r = (log_recorder *)calloc(1, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
    r->host_thread = pthread_self();
    return r;
}

static void log_recorder_free(log_recorder *r) {
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static void record_log(void *user_data, crabnet_log_level level, const char *target,
                       const char *message) {
    log_recorder *r = (log_recorder *)user_data;
    pthread_mutex_lock(&r->lock);
    if (pthread_equal(pthread_self(), r->host_thread)) r->on_host_thread++;
    if (r->count < MAX_LOGS) {
        r->levels[r->count] = level;
        snprintf(r->targets[r->count], sizeof r->targets[0], "%s", target);
        snprintf(r->messages[r->count], sizeof r->messages[0], "%s", message);
        r->count++;
    }
    pthread_mutex_unlock(&r->lock);
}

/* Waits for the sandbox warning; returns its index. */
static int wait_sandbox_warning(log_recorder *r) {
    double deadline = now_s() + 20.0;
    for (;;) {
        pthread_mutex_lock(&r->lock);
        for (int i = 0; i < r->count; i++) {
            if (strstr(r->messages[i], "runner.sandbox = \"none\"") != NULL) {
                pthread_mutex_unlock(&r->lock);
                return i;
            }
        }
        pthread_mutex_unlock(&r->lock);
        if (now_s() > deadline) FAIL("timed out waiting for the sandbox warning");
        sleep_ms(10);
    }
}

/* Starts and stops a node whose configuration makes the core warn at start (a node on a
 * network that runs other nodes' tasks without a sandbox). */
static void start_unsandboxed(const char *base, const char *name) {
    crabnet_config *config = test_config(base, name);
    OK(crabnet_config_set_sandbox(config, "none"));
    crabnet_hub *hub = NULL;
    OK(crabnet_hub_new(&hub));
    crabnet_node *node = NULL;
    OK(crabnet_node_start_memory(config, hub, name, &node));
    crabnet_config_free(config);
    crabnet_hub_free(hub);
    OK(crabnet_node_stop(node));
    crabnet_node_free(node);
}

int main(void) {
    char base[256];
    make_temp_dir(base, sizeof base, "logs");
    unsetenv("CRABNET_LOG");

    /* Levels outside the enum are refused; removing needs no level. */
    log_recorder *a = log_recorder_new();
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "log level",
               crabnet_set_log_callback(0, record_log, a));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "log level",
               crabnet_set_log_callback(6, record_log, a));
    OK(crabnet_set_log_callback(-1, NULL, NULL));

    /* The warning arrives with its level and target, on a Crabnet thread. */
    OK(crabnet_set_log_callback(CRABNET_LOG_LEVEL_WARN, record_log, a));
    start_unsandboxed(base, "first");
    int i = wait_sandbox_warning(a);
    pthread_mutex_lock(&a->lock);
    CHECK(a->levels[i] == CRABNET_LOG_LEVEL_WARN);
    CHECK(strcmp(a->targets[i], "crabnet_core::node") == 0);
    CHECK(a->on_host_thread == 0);
    pthread_mutex_unlock(&a->lock);

    /* CRABNET_LOG decides when set: "warn" lets the warning through a callback that asked for
     * errors only. The replaced callback's user data is freed at once (the sanitizers and
     * valgrind catch any later use). */
    setenv("CRABNET_LOG", "warn", 1);
    log_recorder *b = log_recorder_new();
    OK(crabnet_set_log_callback(CRABNET_LOG_LEVEL_ERROR, record_log, b));
    log_recorder_free(a);
    start_unsandboxed(base, "second");
    i = wait_sandbox_warning(b);
    CHECK(b->levels[i] == CRABNET_LOG_LEVEL_WARN);
    unsetenv("CRABNET_LOG");

    /* Without CRABNET_LOG the callback's level decides: a callback that asked for errors gets
     * no warning, the WARN callback that replaces it gets the next node's. Records reach the
     * host in order, so a warning let through for the ERROR callback would arrive first. */
    log_recorder *c = log_recorder_new();
    OK(crabnet_set_log_callback(CRABNET_LOG_LEVEL_ERROR, record_log, c));
    log_recorder_free(b);
    start_unsandboxed(base, "fourth");
    log_recorder *d = log_recorder_new();
    OK(crabnet_set_log_callback(CRABNET_LOG_LEVEL_WARN, record_log, d));
    start_unsandboxed(base, "fifth");
    wait_sandbox_warning(d);
    CHECK(c->count == 0);
    log_recorder_free(c);
    pthread_mutex_lock(&d->lock);
    int warnings = 0;
    for (int k = 0; k < d->count; k++) {
        if (strstr(d->messages[k], "runner.sandbox = \"none\"") != NULL) warnings++;
    }
    CHECK(warnings == 1);
    pthread_mutex_unlock(&d->lock);

    /* Removed: the user data may be freed right away, and nothing is delivered any more. */
    OK(crabnet_set_log_callback(CRABNET_LOG_LEVEL_WARN, NULL, NULL));
    log_recorder_free(d);
    start_unsandboxed(base, "third");
    CHECK(crabnet_log_dropped_count() == 0);

    remove_tree(base);
    printf("logs: %d checks passed\n", checks_passed);
    return 0;
}
