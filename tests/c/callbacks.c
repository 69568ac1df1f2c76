/* Callback lifetime rules, seen from C under the sanitizers: user data freed right after
 * unsubscribe or stop is never touched again; callbacks subscribe, unsubscribe, stop and free
 * their own node; several threads use one node at once. */
#include "check.h"

/* Publishes a seed whose command is `true` (its state is not kept); the caller checks the
 * status, so that a failure names the caller's line. */
static crabnet_status publish_true(const crabnet_node *node) {
    char *seed = NULL;
    crabnet_status status = crabnet_node_publish(node, "{\"command\": \"true\"}", &seed);
    crabnet_string_free(seed);
    return status;
}

/* ---- user data freed right after unsubscribe returns, while the callback was running ---- */

typedef struct {
    volatile int started;
    int calls;
} slow_state;

static void slow_callback(void *user_data, const char *event_json) {
    (void)event_json;
    slow_state *s = (slow_state *)user_data;
    s->started = 1;
    sleep_ms(200);
    s->calls++; /* a use after free here if unsubscribe did not wait */
}

static void test_unsubscribe_waits(const char *base) {
    crabnet_node *node = start_offline(base, "unsubscribe");
    slow_state *s = (slow_state *)calloc(1, sizeof *s);
    uint64_t id = 0;
    OK(crabnet_node_subscribe(node, slow_callback, s, &id));
    OK(publish_true(node));
    while (!s->started) sleep_ms(1);
    OK(crabnet_node_unsubscribe(node, id));
    CHECK(s->calls >= 1);
    free(s);
    /* More events; the freed user data must not be reached. */
    OK(publish_true(node));
    sleep_ms(100);
    OK(crabnet_node_stop(node));
    crabnet_node_free(node);
}

/* ---- user data freed right after stop returns ---- */

static void test_stop_waits(const char *base) {
    crabnet_node *node = start_offline(base, "stop");
    slow_state *s = (slow_state *)calloc(1, sizeof *s);
    uint64_t id = 0;
    OK(crabnet_node_subscribe(node, slow_callback, s, &id));
    for (int i = 0; i < 3; i++) {
        OK(publish_true(node));
    }
    while (!s->started) sleep_ms(1);
    OK(crabnet_node_stop(node));
    int calls = s->calls;
    free(s);
    CHECK(calls >= 1);
    sleep_ms(100);
    crabnet_node_free(node);
}

/* ---- subscribe and unsubscribe from inside a callback ---- */

typedef struct {
    crabnet_node *node;
    uint64_t self_id;
    int self_calls;
    recorder later;
    uint64_t later_id;
} swap_state;

static void swap_callback(void *user_data, const char *event_json) {
    (void)event_json;
    swap_state *s = (swap_state *)user_data;
    if (++s->self_calls != 1) return;
    OK(crabnet_node_subscribe(s->node, record_event, &s->later, &s->later_id));
    OK(crabnet_node_unsubscribe(s->node, s->self_id));
    /* A query from inside a callback works: no lock is held. */
    char *overview = NULL;
    OK(crabnet_node_overview(s->node, &overview));
    crabnet_string_free(overview);
}

static void test_resubscribe_inside(const char *base) {
    crabnet_config *config = test_config(base, "swap");
    static swap_state s;
    memset(&s, 0, sizeof s);
    recorder_init(&s.later);
    OK(crabnet_node_start(config, &s.node));
    crabnet_config_free(config);
    OK(crabnet_node_subscribe(s.node, swap_callback, &s, &s.self_id));
    OK(publish_true(s.node));
    double deadline = now_s() + 10;
    while (s.later_id == 0 && now_s() < deadline) sleep_ms(5);
    CHECK(s.later_id != 0);
    OK(publish_true(s.node));
    while (recorder_saw(&s.later, "seed_published") < 1 && now_s() < deadline) sleep_ms(5);
    CHECK(recorder_saw(&s.later, "seed_published") == 1);
    OK(crabnet_node_stop(s.node));
    CHECK(s.self_calls == 1);
    crabnet_node_free(s.node);
    pthread_mutex_destroy(&s.later.lock);
}

/* ---- free a node from inside its own callback ---- */

typedef struct {
    crabnet_node *node;
    volatile int freed;
    int calls_after;
} free_state;

static void free_callback(void *user_data, const char *event_json) {
    (void)event_json;
    free_state *s = (free_state *)user_data;
    if (s->freed) {
        s->calls_after++;
        return;
    }
    crabnet_node_free(s->node);
    s->node = NULL;
    s->freed = 1;
}

static void test_free_inside(const char *base) {
    crabnet_hub *hub = NULL;
    OK(crabnet_hub_new(&hub));
    static free_state s;
    memset(&s, 0, sizeof s);
    s.node = start_on_hub(hub, base, "free-inside");
    crabnet_hub_free(hub);
    uint64_t id = 0;
    OK(crabnet_node_subscribe(s.node, free_callback, &s, &id));
    OK(publish_true(s.node));
    double deadline = now_s() + 10;
    while (!s.freed && now_s() < deadline) sleep_ms(5);
    CHECK(s.freed);
    sleep_ms(300); /* the events thread winds down on its own */
    CHECK(s.calls_after == 0);
}

/* ---- several threads drive one node ---- */

typedef struct {
    crabnet_node *node;
    int published;
} worker_arg;

static void *worker(void *arg) {
    worker_arg *w = (worker_arg *)arg;
    for (int i = 0; i < 10; i++) {
        char *seed = NULL;
        if (crabnet_node_publish(w->node, "{\"command\": \"true\"}", &seed) != CRABNET_STATUS_OK)
            return NULL;
        char *overview = NULL;
        if (crabnet_node_overview(w->node, &overview) == CRABNET_STATUS_OK)
            crabnet_string_free(overview);
        crabnet_string_free(seed);
        w->published++;
    }
    return NULL;
}

static void test_threads(const char *base) {
    crabnet_node *node = start_offline(base, "threads");
    recorder r;
    recorder_init(&r);
    uint64_t id = 0;
    OK(crabnet_node_subscribe(node, record_event, &r, &id));
    pthread_t threads[4];
    worker_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i].node = node;
        args[i].published = 0;
        CHECK(pthread_create(&threads[i], NULL, worker, &args[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        CHECK(args[i].published == 10);
    }
    double deadline = now_s() + 10;
    while (recorder_saw(&r, "seed_published") < 40 && now_s() < deadline) sleep_ms(5);
    CHECK(recorder_saw(&r, "seed_published") == 40);
    char *list = NULL;
    OK(crabnet_node_seeds(node, "open", &list));
    char *item = NULL;
    OK(crabnet_json_get(list, "/39/status", &item));
    crabnet_string_free(item);
    EXPECT(CRABNET_STATUS_NOT_FOUND, crabnet_json_get(list, "/40", &item));
    crabnet_string_free(list);
    OK(crabnet_node_stop(node));
    crabnet_node_free(node);
    pthread_mutex_destroy(&r.lock);
}

int main(void) {
    char base[256];
    make_temp_dir(base, sizeof base, "callbacks");
    test_unsubscribe_waits(base);
    test_stop_waits(base);
    test_resubscribe_inside(base);
    test_free_inside(base);
    test_threads(base);
    remove_tree(base);
    printf("callbacks: %d checks passed\n", checks_passed);
    return 0;
}
