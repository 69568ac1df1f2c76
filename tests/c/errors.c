/* Every error path of the C API returns its status, sets the last error and leaves the
 * out-parameters alone: NULL arguments, invalid UTF-8, bad JSON and TOML, bad values, unknown
 * and malformed seeds, wrong lifecycle state, a busy data directory, a stopped node. */
#include "check.h"

#define INVALID_UTF8 "caf\xc3\x28"

/* A pointer value that must survive failed calls untouched. */
static char sentinel_byte;
#define SENTINEL ((char *)&sentinel_byte)

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f == NULL) FAIL("cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static void never_called(void *user_data, const char *event_json) {
    (void)user_data;
    (void)event_json;
}

static void test_basics(void) {
    CHECK(strcmp(crabnet_version(), "0.1.0") >= 0 && strlen(crabnet_version()) >= 5);
    CHECK(strcmp(crabnet_status_name(CRABNET_STATUS_OK), "ok") == 0);
    CHECK(strcmp(crabnet_status_name(CRABNET_STATUS_NULL_ARGUMENT), "null_argument") == 0);
    CHECK(strcmp(crabnet_status_name(CRABNET_STATUS_NOT_FOUND), "not_found") == 0);
    CHECK(strcmp(crabnet_status_name(CRABNET_STATUS_INTERNAL), "internal") == 0);
    CHECK(strcmp(crabnet_status_name(-1), "unknown") == 0);
    CHECK(strcmp(crabnet_status_name(4), "unknown") == 0);
    /* The last error is "" until a call fails, and a successful call clears it. */
    CHECK(strcmp(crabnet_last_error(), "") == 0);
    char *out = SENTINEL;
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_json_quote(NULL, &out));
    CHECK(out == SENTINEL);
    CHECK(strcmp(crabnet_last_error(), "crabnet_json_quote: argument `text` is NULL") == 0);
    const char *first = crabnet_last_error();
    CHECK(first == crabnet_last_error()); /* stable until the next call */
    OK(crabnet_json_quote("x", &out));
    CHECK(strcmp(crabnet_last_error(), "") == 0);
    crabnet_string_free(out);
    crabnet_string_free(NULL);
}

static void test_json_helpers(void) {
    char *out = SENTINEL;
    uint64_t n = 7;
    const char *doc = "{\"a\": {\"b\": [1, \"two\", -3, true, null]}, \"s\": \"nul\\u0000\"}";
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`json`", crabnet_json_get(NULL, "", &out));
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`pointer`", crabnet_json_get(doc, NULL, &out));
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`out_json`", crabnet_json_get(doc, "", NULL));
    EXPECT_ERR(CRABNET_STATUS_INVALID_UTF8, "`json`", crabnet_json_get(INVALID_UTF8, "", &out));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "invalid JSON", crabnet_json_get("{\"a\": ", "", &out));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "pointer", crabnet_json_get(doc, "a", &out));
    EXPECT_ERR(CRABNET_STATUS_NOT_FOUND, "/a/c", crabnet_json_get(doc, "/a/c", &out));
    EXPECT_ERR(CRABNET_STATUS_NOT_FOUND, "/a/b/9", crabnet_json_get(doc, "/a/b/9", &out));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "a number", crabnet_json_get_string(doc, "/a/b/0", &out));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "null", crabnet_json_get_string(doc, "/a/b/4", &out));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "NUL", crabnet_json_get_string(doc, "/s", &out));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "a string", crabnet_json_get_u64(doc, "/a/b/1", &n));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "unsigned", crabnet_json_get_u64(doc, "/a/b/2", &n));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_json_get_u64(doc, "/a/b/0", NULL));
    CHECK(out == SENTINEL && n == 7);

    OK(crabnet_json_get(doc, "/a/b/3", &out));
    CHECK(strcmp(out, "true") == 0);
    crabnet_string_free(out);
    OK(crabnet_json_get_u64(doc, "/a/b/0", &n));
    CHECK(n == 1);
    /* Quoting round-trips through the string getter. */
    const char *tricky = "say \"hi\"\n\ttab \\ back \xc3\xa9";
    char *quoted = NULL;
    OK(crabnet_json_quote(tricky, &quoted));
    OK(crabnet_json_get_string(quoted, "", &out));
    CHECK(strcmp(out, tricky) == 0);
    crabnet_string_free(out);
    crabnet_string_free(quoted);
    EXPECT(CRABNET_STATUS_INVALID_UTF8, crabnet_json_quote(INVALID_UTF8, &out));
}

static void test_configs(const char *base) {
    crabnet_config *config = (crabnet_config *)SENTINEL;
    char *out = SENTINEL;
    char path[512];

    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`data_dir`", crabnet_config_new(NULL, &config));
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`out_config`", crabnet_config_new(base, NULL));
    EXPECT_ERR(CRABNET_STATUS_INVALID_UTF8, "`data_dir`", crabnet_config_new(INVALID_UTF8, &config));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "data_dir", crabnet_config_new("", &config));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_config_from_toml(NULL, &config));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "line 2", crabnet_config_from_toml("name = \"x\"\n[network\n", &config));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "nmae", crabnet_config_from_toml("nmae = \"typo\"", &config));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "tick_ms", crabnet_config_from_toml("[network]\ntick_ms = 0", &config));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "invalid config JSON", crabnet_config_from_json("{\"name\": ", &config));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "nmae", crabnet_config_from_json("{\"nmae\": \"x\"}", &config));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "bus_capacity", crabnet_config_from_json("{\"events\": {\"bus_capacity\": 0}}", &config));
    EXPECT(CRABNET_STATUS_INVALID_UTF8, crabnet_config_from_json(INVALID_UTF8, &config));
    snprintf(path, sizeof path, "%s/missing.toml", base);
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "missing.toml", crabnet_config_from_file(path, &config));
    snprintf(path, sizeof path, "%s/bad.json", base);
    write_file(path, "{\"name\": 5}");
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "bad.json", crabnet_config_from_file(path, &config));
    CHECK(config == (crabnet_config *)SENTINEL);

    /* Files in both formats. */
    snprintf(path, sizeof path, "%s/good.json", base);
    write_file(path, "{\"name\": \"from-json\", \"network\": {\"tick_ms\": 30}}");
    OK(crabnet_config_from_file(path, &config));
    OK(crabnet_config_to_json(config, &out));
    CHECK(json_str_eq(out, "/name", "from-json") && json_u64(out, "/network/tick_ms") == 30);
    crabnet_string_free(out);
    crabnet_config_free(config);
    snprintf(path, sizeof path, "%s/good.toml", base);
    write_file(path, "name = \"from-toml\"\n[runner]\ncpu_seconds = 5\n");
    OK(crabnet_config_from_file(path, &config));
    OK(crabnet_config_to_toml(config, &out));
    CHECK(strstr(out, "name = \"from-toml\"") != NULL && strstr(out, "cpu_seconds = 5") != NULL);
    crabnet_string_free(out);
    crabnet_config_free(config);

    /* Setters: NULL handle, bad values; the configuration keeps its old value on error. */
    OK(crabnet_config_new(base, &config));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_config_set_tick_ms(NULL, 10));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_config_set_name(config, NULL));
    EXPECT(CRABNET_STATUS_INVALID_UTF8, crabnet_config_set_name(config, INVALID_UTF8));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "tick_ms", crabnet_config_set_tick_ms(config, 0));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "bus_capacity", crabnet_config_set_event_capacity(config, 0));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "max_output_bytes", crabnet_config_set_max_output_bytes(config, 1u << 30));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "data_dir", crabnet_config_set_data_dir(config, ""));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "runner.sandbox", crabnet_config_set_sandbox(config, "airtight"));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_config_set_sandbox(config, NULL));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_config_set_allow_network(NULL, true));
    EXPECT(CRABNET_STATUS_INVALID_UTF8, crabnet_config_set_work_root(config, INVALID_UTF8));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "JSON object", crabnet_config_merge_json(config, "[]"));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "cpu", crabnet_config_merge_json(config, "{\"runner\": {\"cpu\": 1}}"));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "invalid config JSON", crabnet_config_merge_json(config, "{"));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_config_merge_json(config, NULL));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_config_to_json(NULL, &out));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_config_to_json(config, NULL));
    OK(crabnet_config_set_name(config, "errors"));
    OK(crabnet_config_set_event_log(config, false));
    OK(crabnet_config_set_cpu_seconds(config, 30));
    OK(crabnet_config_set_keep_workdirs(config, false));
    OK(crabnet_config_set_sandbox(config, "best_effort"));
    OK(crabnet_config_set_allow_network(config, true));
    OK(crabnet_config_set_work_root(config, "/tmp/crabnet-c-work"));
    OK(crabnet_config_set_max_output_bytes(config, 1024));
    OK(crabnet_config_set_event_capacity(config, 64));
    OK(crabnet_config_merge_json(config, "{\"store\": {\"busy_timeout_ms\": 2000}}"));
    OK(crabnet_config_to_json(config, &out));
    CHECK(json_u64(out, "/network/tick_ms") == 250);
    CHECK(json_u64(out, "/runner/max_output_bytes") == 1024);
    CHECK(json_u64(out, "/store/busy_timeout_ms") == 2000);
    CHECK(json_raw_eq(out, "/events/log_enabled", "false"));
    CHECK(json_str_eq(out, "/name", "errors"));
    CHECK(json_str_eq(out, "/runner/sandbox", "best_effort"));
    CHECK(json_raw_eq(out, "/runner/allow_network", "true"));
    CHECK(json_raw_eq(out, "/runner/keep_work_dirs", "false"));
    CHECK(json_str_eq(out, "/runner/work_root", "/tmp/crabnet-c-work"));
    crabnet_string_free(out);
    OK(crabnet_config_set_work_root(config, NULL)); /* back to the default */
    OK(crabnet_config_to_json(config, &out));
    CHECK(json_raw_eq(out, "/runner/work_root", "null"));
    crabnet_string_free(out);
    crabnet_config_free(config);
    crabnet_config_free(NULL);
}

static void test_start(const char *base) {
    crabnet_hub *hub = NULL;
    crabnet_node *node = (crabnet_node *)SENTINEL;
    crabnet_config *config = test_config(base, "start");

    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_hub_new(NULL));
    OK(crabnet_hub_new(&hub));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_hub_set_isolated(NULL, "x", true));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_hub_set_isolated(hub, NULL, true));
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`config`", crabnet_node_start(NULL, &node));
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`out_node`", crabnet_node_start(config, NULL));
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`hub`", crabnet_node_start_memory(config, NULL, "a", &node));
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`name`", crabnet_node_start_memory(config, hub, NULL, &node));
    EXPECT_ERR(CRABNET_STATUS_INVALID_UTF8, "`name`", crabnet_node_start_memory(config, hub, INVALID_UTF8, &node));
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`udp_json`", crabnet_node_start_udp(config, NULL, &node));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "UDP", crabnet_node_start_udp(config, "{\"bind\": \"nowhere\"}", &node));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "UDP", crabnet_node_start_udp(config, "{\"peer\": []}", &node));
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`dht_json`", crabnet_node_start_dht(config, NULL, &node));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "libp2p", crabnet_node_start_dht(config, "{\"listen\": 7}", &node));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "libp2p", crabnet_node_start_dht(config, "{\"mdsn\": true}", &node));
    EXPECT_ERR(CRABNET_STATUS_NETWORK, "multiaddress", crabnet_node_start_dht(config, "{\"listen\": [\"garbage\"]}", &node));
    CHECK(node == (crabnet_node *)SENTINEL);

    /* Two nodes with a network on one data directory: the second is refused. */
    OK(crabnet_node_start_memory(config, hub, "first", &node));
    crabnet_node *second = (crabnet_node *)SENTINEL;
    EXPECT_ERR(CRABNET_STATUS_BUSY, "already listening", crabnet_node_start_memory(config, hub, "second", &second));
    CHECK(second == (crabnet_node *)SENTINEL);
    crabnet_node_free(node); /* frees without an explicit stop */
    /* The lock is released: the directory can be used again. */
    OK(crabnet_node_start_memory(config, hub, "again", &node));
    OK(crabnet_node_stop(node));
    crabnet_node_free(node);
    crabnet_config_free(config);
    crabnet_hub_free(hub);
    crabnet_hub_free(NULL);
    crabnet_node_free(NULL);
}

static void test_operations(const char *base) {
    crabnet_node *pub = NULL, *bidder = NULL;
    start_pair_on_hub(base, "publisher", "bidder", &pub, &bidder);
    char *out = SENTINEL;
    uint64_t sub = 99;
    const char *unknown = "00000000000000000000000000000000";

    /* publish */
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`node`", crabnet_node_publish(NULL, "{}", &out));
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`request_json`", crabnet_node_publish(pub, NULL, &out));
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`out_seed_json`", crabnet_node_publish(pub, "{\"command\": \"true\"}", NULL));
    EXPECT(CRABNET_STATUS_INVALID_UTF8, crabnet_node_publish(pub, "{\"command\": \"" INVALID_UTF8 "\"}", &out));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "publish request JSON", crabnet_node_publish(pub, "{\"command\": ", &out));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "comand", crabnet_node_publish(pub, "{\"comand\": \"true\"}", &out));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "command", crabnet_node_publish(pub, "{\"command\": \"  \"}", &out));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "min price", crabnet_node_publish(pub, "{\"command\": \"true\", \"min_price\": 9, \"max_price\": 3}", &out));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "max bids", crabnet_node_publish(pub, "{\"command\": \"true\", \"max_bids\": 0}", &out));
    EXPECT(CRABNET_STATUS_VALIDATION, crabnet_node_publish(pub, "{\"command\": \"true\", \"max_price\": -1}", &out));
    CHECK(out == SENTINEL);
    char *seed = NULL;
    OK(crabnet_node_publish(pub, "{\"command\": \"true\", \"min_price\": 10, \"max_price\": 20, \"max_bids\": 1}", &seed));
    char *id = json_str(seed, "/seed/id");
    crabnet_string_free(seed);
    crabnet_string_free(wait_seed(bidder, id, "open"));

    /* seed ids: NULL, not UTF-8, malformed, unknown */
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`seed_id`", crabnet_node_seed(pub, NULL, &out));
    EXPECT(CRABNET_STATUS_INVALID_UTF8, crabnet_node_seed(pub, INVALID_UTF8, &out));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "invalid SeedId", crabnet_node_seed(pub, "xyz", &out));
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "invalid SeedId", crabnet_node_bid(bidder, "ABCDEF", 10, &out));
    EXPECT_ERR(CRABNET_STATUS_NOT_FOUND, unknown, crabnet_node_seed(pub, unknown, &out));
    EXPECT(CRABNET_STATUS_NOT_FOUND, crabnet_node_bid(bidder, unknown, 10, &out));
    EXPECT(CRABNET_STATUS_NOT_FOUND, crabnet_node_claim(bidder, unknown, &out));
    EXPECT(CRABNET_STATUS_NOT_FOUND, crabnet_node_run(bidder, unknown, &out));
    EXPECT(CRABNET_STATUS_NOT_FOUND, crabnet_node_settle(pub, unknown, true, "", &out));
    EXPECT(CRABNET_STATUS_NOT_FOUND, crabnet_node_cancel(pub, unknown, &out));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_seed(pub, id, NULL));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_claim(NULL, id, &out));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_run(bidder, NULL, &out));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_cancel(pub, id, NULL));

    /* wrong state and bad values */
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "price", crabnet_node_bid(bidder, id, 500, &out));
    EXPECT_ERR(CRABNET_STATUS_STATE, id, crabnet_node_claim(bidder, id, &out));
    EXPECT_ERR(CRABNET_STATUS_STATE, id, crabnet_node_run(bidder, id, &out));
    EXPECT_ERR(CRABNET_STATUS_STATE, id, crabnet_node_settle(pub, id, true, "too early", &out));
    EXPECT_ERR(CRABNET_STATUS_STATE, id, crabnet_node_cancel(bidder, id, &out));
    EXPECT_ERR(CRABNET_STATUS_STATE, "may not bid on it", crabnet_node_bid(pub, id, 15, &out));
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`note`", crabnet_node_settle(pub, id, true, NULL, &out));
    CHECK(out == SENTINEL);
    OK(crabnet_node_bid(bidder, id, 15, &seed));
    crabnet_string_free(seed);
    crabnet_string_free(wait_award(pub, id));
    EXPECT_ERR(CRABNET_STATUS_STATE, id, crabnet_node_cancel(pub, id, &out));
    EXPECT_ERR(CRABNET_STATUS_STATE, id, crabnet_node_claim(pub, id, &out));

    /* queries */
    EXPECT_ERR(CRABNET_STATUS_VALIDATION, "bogus", crabnet_node_seeds(pub, "bogus", &out));
    EXPECT(CRABNET_STATUS_INVALID_UTF8, crabnet_node_seeds(pub, INVALID_UTF8, &out));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_seeds(pub, NULL, NULL));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_overview(NULL, &out));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_overview(pub, NULL));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_events_after(pub, 0, 10, NULL));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_id(pub, NULL));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_next_event(NULL, 0, &out));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_next_event(pub, 0, NULL));
    CHECK(out == SENTINEL);

    /* peers: a node alone on its network times out waiting for a third node */
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_peers(NULL, &out));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_peers(pub, NULL));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_wait_for_peers(NULL, 1, 10, &out));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_wait_for_peers(pub, 1, 10, NULL));
    EXPECT_ERR(CRABNET_STATUS_NETWORK, "peer", crabnet_node_wait_for_peers(pub, 2, 100, &out));
    CHECK(out == SENTINEL);

    /* subscriptions */
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`callback`", crabnet_node_subscribe(pub, NULL, NULL, &sub));
    EXPECT_ERR(CRABNET_STATUS_NULL_ARGUMENT, "`out_subscription`", crabnet_node_subscribe(pub, never_called, NULL, NULL));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_subscribe(NULL, never_called, NULL, &sub));
    EXPECT_ERR(CRABNET_STATUS_NOT_FOUND, "12345", crabnet_node_unsubscribe(pub, 12345));
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_unsubscribe(NULL, 1));
    CHECK(sub == 99);

    /* stopped */
    EXPECT(CRABNET_STATUS_NULL_ARGUMENT, crabnet_node_stop(NULL));
    OK(crabnet_node_stop(pub));
    OK(crabnet_node_stop(pub));
    EXPECT_ERR(CRABNET_STATUS_STOPPED, "stopped", crabnet_node_publish(pub, "{\"command\": \"true\"}", &out));
    EXPECT(CRABNET_STATUS_STOPPED, crabnet_node_seed(pub, id, &out));
    EXPECT(CRABNET_STATUS_STOPPED, crabnet_node_seeds(pub, NULL, &out));
    EXPECT(CRABNET_STATUS_STOPPED, crabnet_node_overview(pub, &out));
    EXPECT(CRABNET_STATUS_STOPPED, crabnet_node_events_after(pub, 0, 10, &out));
    EXPECT(CRABNET_STATUS_STOPPED, crabnet_node_peers(pub, &out));
    EXPECT(CRABNET_STATUS_STOPPED, crabnet_node_wait_for_peers(pub, 0, 10, &out));
    EXPECT(CRABNET_STATUS_STOPPED, crabnet_node_settle(pub, id, false, "", &out));
    EXPECT_ERR(CRABNET_STATUS_STOPPED, "stopped", crabnet_node_subscribe(pub, never_called, NULL, &sub));
    CHECK(out == SENTINEL && sub == 99);
    /* the id stays readable */
    OK(crabnet_node_id(pub, &out));
    crabnet_string_free(out);
    /* polling drains what is left, then reports the stop without waiting */
    double started = now_s();
    for (;;) {
        char *event = NULL;
        crabnet_status s = crabnet_node_next_event(pub, 60000, &event);
        if (s == CRABNET_STATUS_STOPPED) break;
        CHECK(s == CRABNET_STATUS_OK && event != NULL);
        crabnet_string_free(event);
    }
    CHECK(now_s() - started < 5.0);

    crabnet_node_free(pub);
    crabnet_node_free(bidder);
    crabnet_string_free(id);
}

int main(void) {
    char base[256];
    make_temp_dir(base, sizeof base, "errors");
    test_basics();
    test_json_helpers();
    test_configs(base);
    test_start(base);
    test_operations(base);
    remove_tree(base);
    printf("errors: %d checks passed\n", checks_passed);
    return 0;
}
