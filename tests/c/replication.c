/* A replicated seed (rule version 3) across four nodes in one process (in-memory hub), driven
 * from C: three runners, one of which lies (the test-only runner.forge_output_hash); the seed
 * completes with the honest result, the replicas' standings and the payment are in the seed's
 * JSON, and the liar's reputation in the publisher's peer list. */
#include "check.h"

#define N 4

int main(void) {
    char base[256];
    make_temp_dir(base, sizeof base, "replication");

    crabnet_hub *hub = NULL;
    OK(crabnet_hub_new(&hub));
    const char *names[N] = {"publisher", "r0", "r1", "liar"};
    crabnet_node *node[N];
    char *id[N];
    for (int i = 0; i < N; i++) {
        crabnet_config *config = test_config(base, names[i]);
        if (i == 3) OK(crabnet_config_merge_json(config, "{\"runner\": {\"forge_output_hash\": true}}"));
        OK(crabnet_node_start_memory(config, hub, names[i], &node[i]));
        crabnet_config_free(config);
        OK(crabnet_node_id(node[i], &id[i]));
    }
    crabnet_hub_free(hub);
    for (int i = 0; i < N; i++) {
        char *peers = NULL;
        OK(crabnet_node_wait_for_peers(node[i], N - 1, 20000, &peers));
        crabnet_string_free(peers);
    }

    char *seed = NULL;
    OK(crabnet_node_publish(node[0],
                            "{\"command\": \"echo replicated\", \"max_bids\": 3, "
                            "\"replication\": {\"replicas\": 3, \"quorum\": 2, \"max_replicas\": 3}}",
                            &seed));
    char *seed_id = json_str(seed, "/seed/id");
    CHECK(json_u64(seed, "/seed/rules") == 3);
    CHECK(json_u64(seed, "/seed/replication/replicas") == 3);
    CHECK(json_u64(seed, "/seed/replication/quorum") == 2);
    crabnet_string_free(seed);
    /* A quorum that is not a majority is refused. */
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "more than half",
               crabnet_node_publish(node[0],
                                    "{\"command\": \"true\", \"replication\": "
                                    "{\"replicas\": 4, \"quorum\": 2, \"max_replicas\": 4}}",
                                    &seed));

    /* Prices 10, 20, 30: the award names all three, best first (r0, r1, liar). */
    for (int i = 1; i < N; i++) {
        crabnet_string_free(wait_seed(node[i], seed_id, "open"));
        OK(crabnet_node_bid(node[i], seed_id, (uint64_t)(10 * i), &seed));
        crabnet_string_free(seed);
    }
    /* The liar runs first: once two honest results agree, a replica may no longer claim. */
    const int order[3] = {3, 1, 2};
    for (int k = 0; k < 3; k++) {
        int i = order[k];
        crabnet_string_free(wait_award(node[i], seed_id));
        OK(crabnet_node_claim(node[i], seed_id, &seed));
        crabnet_string_free(seed);
        OK(crabnet_node_run(node[i], seed_id, &seed));
        crabnet_string_free(seed);
    }
    seed = wait_seed(node[0], seed_id, "completed");
    CHECK(json_str_eq(seed, "/replicas/0/runner", id[1]));
    CHECK(json_str_eq(seed, "/replicas/0/standing", "agreed"));
    CHECK(json_str_eq(seed, "/replicas/1/standing", "agreed"));
    CHECK(json_str_eq(seed, "/replicas/2/runner", id[3]));
    CHECK(json_str_eq(seed, "/replicas/2/standing", "dissented"));
    char *honest = json_str(seed, "/replicas/0/result/output_sha256");
    CHECK(json_str_eq(seed, "/result/output_sha256", honest));
    CHECK(!json_str_eq(seed, "/replicas/2/result/output_sha256", honest));
    crabnet_string_free(honest);
    crabnet_string_free(seed);

    /* Settlement pays the two agreeing runners their prices. */
    OK(crabnet_node_settle(node[0], seed_id, true, "", &seed));
    CHECK(json_str_eq(seed, "/settlement/outcome", "accepted"));
    CHECK(json_u64(seed, "/settlement/amount") == 30);
    CHECK(json_str_eq(seed, "/settlement/paid/0", id[1]));
    CHECK(json_str_eq(seed, "/settlement/paid/1", id[2]));
    crabnet_string_free(seed);

    /* The liar's reputation, as the publisher's signed history tells it. */
    char *peers = NULL;
    OK(crabnet_node_peers(node[0], &peers));
    int found = 0;
    for (int p = 0; p < N - 1; p++) {
        char pointer[64];
        snprintf(pointer, sizeof pointer, "/%d/node_id", p);
        if (!json_str_eq(peers, pointer, id[3])) continue;
        found = 1;
        snprintf(pointer, sizeof pointer, "/%d/reputation/dissented", p);
        CHECK(json_u64(peers, pointer) == 1);
        snprintf(pointer, sizeof pointer, "/%d/reputation/agreed", p);
        CHECK(json_u64(peers, pointer) == 0);
    }
    CHECK(found);
    crabnet_string_free(peers);

    for (int i = 0; i < N; i++) {
        OK(crabnet_node_stop(node[i]));
        crabnet_node_free(node[i]);
        crabnet_string_free(id[i]);
    }
    crabnet_string_free(seed_id);
    remove_tree(base);
    printf("replication: %d checks passed\n", checks_passed);
    return 0;
}
