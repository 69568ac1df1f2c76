/* A whole task lifecycle across three nodes in one process (in-memory hub), driven from C:
 * publish, bid, award, claim, run, settle, a cancelled seed, queries, callbacks, polling,
 * stop and free. Every string and handle is freed; the sanitizers check that. */
#include "check.h"

typedef struct {
    const char *name;
    crabnet_node *node;
    char *id;
    recorder events;
    uint64_t subscription;
} member;

static member *by_id(member *m, int n, const char *id) {
    for (int i = 0; i < n; i++)
        if (strcmp(m[i].id, id) == 0) return &m[i];
    FAIL("no member with id %s", id);
}

int main(void) {
    char base[256];
    make_temp_dir(base, sizeof base, "lifecycle");

    crabnet_hub *hub = NULL;
    OK(crabnet_hub_new(&hub));
    member m[3] = {{.name = "alice"}, {.name = "bob"}, {.name = "carol"}};
    for (int i = 0; i < 3; i++) {
        m[i].node = start_on_hub(hub, base, m[i].name);
        OK(crabnet_node_id(m[i].node, &m[i].id));
        CHECK(strlen(m[i].id) == 64);
        recorder_init(&m[i].events);
        OK(crabnet_node_subscribe(m[i].node, record_event, &m[i].events, &m[i].subscription));
        CHECK(m[i].subscription != 0);
    }
    /* The nodes hold the network: the hub handle can go now. */
    crabnet_hub_free(hub);
    member *alice = &m[0];

    /* Each node verifies the others' hellos. */
    for (int i = 0; i < 3; i++) {
        char *peers = NULL;
        OK(crabnet_node_wait_for_peers(m[i].node, 2, 20000, &peers));
        crabnet_string_free(peers);
        OK(crabnet_node_peers(m[i].node, &peers));
        char *name0 = json_str(peers, "/0/name"), *name1 = json_str(peers, "/1/name");
        CHECK(strcmp(name0, m[i].name) != 0 && strcmp(name1, m[i].name) != 0);
        CHECK(strcmp(name0, name1) != 0);
        CHECK(json_u64(peers, "/0/last_seen") >= json_u64(peers, "/0/first_seen"));
        crabnet_string_free(name0);
        crabnet_string_free(name1);
        crabnet_string_free(peers);
    }

    /* Publish, with a command that needs JSON escaping. */
    char *command = NULL;
    OK(crabnet_json_quote("echo \"crabnet C test\"; echo $((6 * 7))", &command));
    char request[512];
    snprintf(request, sizeof request,
             "{\"command\": %s, \"description\": \"lifecycle\", \"min_price\": 10, "
             "\"max_price\": 100, \"bid_window_secs\": 60, \"max_bids\": 2, \"timeout_secs\": 30}",
             command);
    crabnet_string_free(command);
    char *seed = NULL;
    OK(crabnet_node_publish(alice->node, request, &seed));
    char *seed_id = json_str(seed, "/seed/id");
    CHECK(json_str_eq(seed, "/status", "open"));
    CHECK(json_str_eq(seed, "/seed/publisher", alice->id));
    CHECK(json_u64(seed, "/seed/max_bids") == 2);
    crabnet_string_free(seed);

    /* Bob and Carol learn about it and bid; the second bid closes bidding. */
    uint64_t prices[3] = {0, 40, 30};
    for (int i = 1; i < 3; i++) {
        crabnet_string_free(wait_seed(m[i].node, seed_id, "open"));
        OK(crabnet_node_bid(m[i].node, seed_id, prices[i], &seed));
        CHECK(json_u64(seed, "/bids/0/price") > 0);
        crabnet_string_free(seed);
        /* A second bid from the same node breaks a rule. */
        EXPECT_ERR(CRABNET_STATUS_STATE, seed_id, crabnet_node_bid(m[i].node, seed_id, 20, &seed));
    }
    seed = wait_award(alice->node, seed_id);
    char *winner_id = json_str(seed, "/award/winner_node");
    uint64_t price = json_u64(seed, "/award/price");
    crabnet_string_free(seed);
    member *winner = by_id(m, 3, winner_id);
    member *loser = winner == &m[1] ? &m[2] : &m[1];
    crabnet_string_free(winner_id);
    printf("bidding closed: %s wins at %llu\n", winner->name, (unsigned long long)price);
    CHECK(winner != alice);

    /* Only the winner may claim; then it runs the command. */
    crabnet_string_free(wait_award(winner->node, seed_id));
    crabnet_string_free(wait_award(loser->node, seed_id));
    EXPECT(CRABNET_STATUS_STATE, crabnet_node_claim(loser->node, seed_id, &seed));
    EXPECT(CRABNET_STATUS_STATE, crabnet_node_run(winner->node, seed_id, &seed));
    OK(crabnet_node_claim(winner->node, seed_id, &seed));
    CHECK(json_str_eq(seed, "/status", "claimed"));
    crabnet_string_free(seed);
    OK(crabnet_node_run(winner->node, seed_id, &seed));
    CHECK(json_str_eq(seed, "/status", "completed"));
    CHECK(json_raw_eq(seed, "/result/success", "true"));
    char *excerpt = json_str(seed, "/result/output_excerpt");
    CHECK(strstr(excerpt, "crabnet C test\n42\n") != NULL);
    crabnet_string_free(excerpt);
    /* The result says which sandbox the command ran in: the level the winner's overview
     * announces. Under the default policy ("required") that is the full sandbox, offline.
     * Where run.sh turns the sandbox off (valgrind), the level is "none", which results
     * leave out (an absent `sandbox` means level none). */
    char *overview = NULL;
    OK(crabnet_node_overview(winner->node, &overview));
    const char *policy = getenv("CRABNET_TEST_SANDBOX");
    if (policy == NULL || policy[0] == '\0') {
        CHECK(json_str_eq(overview, "/sandbox/policy", "required"));
        CHECK(json_str_eq(overview, "/sandbox/level", "full"));
        CHECK(json_str_eq(seed, "/result/sandbox/level", "full"));
        CHECK(json_raw_eq(seed, "/result/sandbox/network", "false"));
        char *features = NULL;
        OK(crabnet_json_get(seed, "/result/sandbox/features", &features));
        CHECK(strstr(features, "\"landlock_fs\"") != NULL && strstr(features, "\"net_ns\"") != NULL);
        crabnet_string_free(features);
    } else {
        CHECK(json_str_eq(overview, "/sandbox/policy", policy));
        CHECK(json_str_eq(overview, "/sandbox/level", "none"));
        char *sandbox = NULL;
        EXPECT(CRABNET_STATUS_NOT_FOUND, crabnet_json_get(seed, "/result/sandbox", &sandbox));
        CHECK(sandbox == NULL);
    }
    crabnet_string_free(overview);
    crabnet_string_free(seed);

    /* The publisher settles; every node converges on the same state. */
    crabnet_string_free(wait_seed(alice->node, seed_id, "completed"));
    EXPECT(CRABNET_STATUS_STATE, crabnet_node_settle(winner->node, seed_id, true, "", &seed));
    OK(crabnet_node_settle(alice->node, seed_id, true, "thanks from C", &seed));
    CHECK(json_str_eq(seed, "/settlement/outcome", "accepted"));
    CHECK(json_u64(seed, "/settlement/amount") == price);
    crabnet_string_free(seed);
    for (int i = 0; i < 3; i++) crabnet_string_free(wait_seed(m[i].node, seed_id, "settled"));

    /* A second seed, which needs the network: the nodes' runners do not allow it, so they
     * refuse to bid. Then its publisher cancels it while bidding is open. */
    OK(crabnet_node_publish(alice->node, "{\"command\": \"true\", \"max_bids\": 3, \"network\": true}", &seed));
    CHECK(json_raw_eq(seed, "/seed/network", "true"));
    char *second = json_str(seed, "/seed/id");
    crabnet_string_free(seed);
    seed = wait_seed(m[1].node, second, "open");
    CHECK(json_raw_eq(seed, "/seed/network", "true"));
    crabnet_string_free(seed);
    EXPECT_ERR(CRABNET_STATUS_RUNNER, "network", crabnet_node_bid(m[1].node, second, 50, &seed));
    EXPECT(CRABNET_STATUS_STATE, crabnet_node_cancel(m[1].node, second, &seed));
    OK(crabnet_node_cancel(alice->node, second, &seed));
    CHECK(json_str_eq(seed, "/status", "cancelled"));
    crabnet_string_free(seed);
    for (int i = 0; i < 3; i++) crabnet_string_free(wait_seed(m[i].node, second, "cancelled"));
    EXPECT(CRABNET_STATUS_STATE, crabnet_node_bid(m[2].node, second, 50, &seed));

    /* Queries. */
    char *digest0 = NULL;
    for (int i = 0; i < 3; i++) {
        char *overview = NULL;
        double deadline = now_s() + 20.0;
        for (;;) {
            OK(crabnet_node_overview(m[i].node, &overview));
            if (json_u64(overview, "/outbox_pending") == 0) break;
            crabnet_string_free(overview);
            if (now_s() > deadline) FAIL("outbox of %s never drained", m[i].name);
            sleep_ms(10);
        }
        CHECK(json_str_eq(overview, "/node_id", m[i].id));
        CHECK(json_str_eq(overview, "/name", m[i].name));
        CHECK(json_str_eq(overview, "/transport", "memory"));
        CHECK(json_u64(overview, "/seeds_by_status/settled") == 1);
        CHECK(json_u64(overview, "/seeds_by_status/cancelled") == 1);
        char *digest = json_str(overview, "/state_digest");
        if (digest0 == NULL) {
            digest0 = digest;
        } else {
            CHECK(strcmp(digest, digest0) == 0);
            crabnet_string_free(digest);
        }
        crabnet_string_free(overview);
    }
    crabnet_string_free(digest0);

    char *list = NULL;
    OK(crabnet_node_seeds(alice->node, NULL, &list));
    CHECK(json_str_eq(list, "/0/seed/id", second)); /* newest first */
    CHECK(json_str_eq(list, "/1/seed/id", seed_id));
    EXPECT(CRABNET_STATUS_NOT_FOUND, crabnet_json_get(list, "/2", &seed));
    crabnet_string_free(list);
    OK(crabnet_node_seeds(alice->node, "settled", &list));
    CHECK(json_str_eq(list, "/0/seed/id", seed_id));
    EXPECT(CRABNET_STATUS_NOT_FOUND, crabnet_json_get(list, "/1", &seed));
    crabnet_string_free(list);
    OK(crabnet_node_seeds(alice->node, "claimed", &list));
    CHECK(strcmp(list, "[]") == 0);
    crabnet_string_free(list);

    char *events = NULL;
    OK(crabnet_node_events_after(alice->node, 0, 1000, &events));
    CHECK(json_str_eq(events, "/0/type", "node_started"));
    CHECK(json_u64(events, "/0/seq") == 1);
    crabnet_string_free(events);
    OK(crabnet_node_events_after(alice->node, 0, 2, &events));
    EXPECT(CRABNET_STATUS_NOT_FOUND, crabnet_json_get(events, "/2", &seed));
    crabnet_string_free(events);

    /* Callbacks saw the lifecycle as it happened. */
    CHECK(recorder_saw(&alice->events, "seed_published") == 2);
    CHECK(recorder_saw(&alice->events, "bidding_closed") == 1);
    CHECK(recorder_saw(&winner->events, "task_started") == 1);
    CHECK(recorder_saw(&winner->events, "result_recorded") == 1);
    CHECK(recorder_saw(&loser->events, "seed_settled") == 1);
    CHECK(recorder_saw(&m[2].events, "seed_cancelled") == 1);

    /* Polling sees the same events (they were queued since start). */
    int polled = 0, published = 0;
    for (;;) {
        char *event = NULL;
        OK(crabnet_node_next_event(m[1].node, 0, &event));
        if (event == NULL) break;
        polled++;
        if (json_str_eq(event, "/type", "seed_published")) published++;
        crabnet_string_free(event);
    }
    CHECK(published == 2);
    CHECK(polled > 5);

    /* Alice rotates her keys: same id, key epoch 2; what she publishes next reaches Bob,
     * who now knows her new keys. */
    char *rotation = NULL;
    OK(crabnet_node_rotate_keys(alice->node, &rotation));
    CHECK(json_str_eq(rotation, "/node_id", alice->id));
    CHECK(json_u64(rotation, "/key_epoch") == 2);
    CHECK(json_u64(rotation, "/rotated_at") > 0);
    crabnet_string_free(rotation);
    OK(crabnet_node_publish(alice->node, "{\"command\": \"true\"}", &seed));
    char *third = json_str(seed, "/seed/id");
    crabnet_string_free(seed);
    crabnet_string_free(wait_seed(m[1].node, third, "open"));
    crabnet_string_free(third);
    char *bob_peers = NULL;
    OK(crabnet_node_peers(m[1].node, &bob_peers));
    char *p0 = json_str(bob_peers, "/0/node_id");
    int alice_at = strcmp(p0, alice->id) == 0 ? 0 : 1;
    crabnet_string_free(p0);
    CHECK(json_u64(bob_peers, alice_at == 0 ? "/0/key_epoch" : "/1/key_epoch") == 2);
    crabnet_string_free(bob_peers);

    /* Unsubscribe Carol's callback; it gets nothing more. */
    OK(crabnet_node_unsubscribe(m[2].node, m[2].subscription));
    EXPECT(CRABNET_STATUS_NOT_FOUND, crabnet_node_unsubscribe(m[2].node, m[2].subscription));
    int carol_seen = recorder_count(&m[2].events);

    /* Stop: the last events reach the callbacks before stop returns, none after. */
    for (int i = 0; i < 3; i++) OK(crabnet_node_stop(m[i].node));
    CHECK(recorder_saw(&alice->events, "node_stopped") == 1);
    CHECK(recorder_saw(&m[1].events, "node_stopped") == 1);
    int counts[3];
    for (int i = 0; i < 3; i++) counts[i] = recorder_count(&m[i].events);
    sleep_ms(200);
    for (int i = 0; i < 3; i++) CHECK(recorder_count(&m[i].events) == counts[i]);
    CHECK(recorder_count(&m[2].events) == carol_seen);

    /* After stop: the queue drains, then STOPPED; operations fail with STOPPED. */
    int stopped_seen = 0;
    for (;;) {
        char *event = NULL;
        crabnet_status s = crabnet_node_next_event(m[1].node, 1000, &event);
        if (s == CRABNET_STATUS_STOPPED) break;
        CHECK(s == CRABNET_STATUS_OK && event != NULL);
        if (json_str_eq(event, "/type", "node_stopped")) stopped_seen++;
        crabnet_string_free(event);
    }
    CHECK(stopped_seen == 1);
    EXPECT(CRABNET_STATUS_STOPPED, crabnet_node_seed(alice->node, seed_id, &seed));
    OK(crabnet_node_stop(alice->node));

    for (int i = 0; i < 3; i++) {
        crabnet_node_free(m[i].node);
        crabnet_string_free(m[i].id);
        pthread_mutex_destroy(&m[i].events.lock);
    }
    crabnet_string_free(seed_id);
    crabnet_string_free(second);
    remove_tree(base);
    printf("lifecycle: %d checks passed\n", checks_passed);
    return 0;
}
