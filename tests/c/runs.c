/* A task in progress when its node stops: crabnet_node_stop kills it and records its result as
 * interrupted, the blocked crabnet_node_run returns that result, and a node started again on
 * the data directory does not run the seed again. The runner wins the seed from a publisher
 * on the same in-memory hub (a node may not bid on its own seed). */
#include "check.h"

typedef struct {
    const crabnet_node *node;
    const char *seed_id;
    crabnet_status status;
    char *seed_json;
} run_call;

static void *run_thread(void *arg) {
    run_call *call = (run_call *)arg;
    call->status = crabnet_node_run(call->node, call->seed_id, &call->seed_json);
    return NULL;
}

int main(void) {
    char base[256];
    make_temp_dir(base, sizeof base, "runs");
    crabnet_node *publisher = NULL, *node = NULL;
    start_pair_on_hub(base, "publisher", "runner", &publisher, &node);
    crabnet_string_free(wait_peers(publisher, 1, 20000));
    crabnet_string_free(wait_peers(node, 1, 20000));

    char *seed = NULL;
    OK(crabnet_node_publish(publisher,
                            "{\"command\": \"echo started; sleep 30\", \"max_bids\": 1}", &seed));
    char *seed_id = json_str(seed, "/seed/id");
    crabnet_string_free(seed);
    /* The publisher may not bid on its own seed; the runner does. */
    EXPECT_ERR(CRABNET_STATUS_STATE, "may not bid on it", crabnet_node_bid(publisher, seed_id, 5, &seed));
    bid_and_claim(node, seed_id, 5);

    run_call call = {node, seed_id, CRABNET_STATUS_INTERNAL, NULL};
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, run_thread, &call) == 0);
    /* Wait until the task started, then stop the node under it. */
    double deadline = now_s() + 20.0;
    for (int started = 0; !started;) {
        char *event = NULL;
        OK(crabnet_node_next_event(node, 100, &event));
        if (event != NULL) {
            started = json_str_eq(event, "/type", "task_started");
            crabnet_string_free(event);
        }
        if (now_s() > deadline) FAIL("timed out waiting for task_started");
    }
    OK(crabnet_node_stop(node));
    CHECK(pthread_join(thread, NULL) == 0);
    OK(call.status);
    CHECK(json_str_eq(call.seed_json, "/status", "completed"));
    CHECK(json_raw_eq(call.seed_json, "/result/interrupted", "true"));
    CHECK(json_raw_eq(call.seed_json, "/result/success", "false"));
    crabnet_string_free(call.seed_json);
    crabnet_node_free(node);
    OK(crabnet_node_stop(publisher));
    crabnet_node_free(publisher);

    /* Started again: the node knows, and does not run the command again. */
    node = start_offline(base, "runner");
    OK(crabnet_node_seed(node, seed_id, &seed));
    CHECK(json_raw_eq(seed, "/result/interrupted", "true"));
    crabnet_string_free(seed);
    EXPECT_ERR(CRABNET_STATUS_STATE, "crabnet_node_run", crabnet_node_run(node, seed_id, &seed));
    crabnet_node_free(node);

    crabnet_string_free(seed_id);
    remove_tree(base);
    printf("runs: %d checks passed\n", checks_passed);
    return 0;
}
