/* Crabnet from C: start a node, subscribe to its events with a callback, publish a task, and
 * print the events as they arrive.
 *
 *   cc events.c $(pkg-config --cflags --libs crabnet) -o events && ./events [DATA_DIR]
 *
 * Without DATA_DIR the node lives in a fresh directory under /tmp. The node has no network
 * here: the seed stays open on this node (see raii.cpp for nodes that trade with each other).
 */
#define _XOPEN_SOURCE 700
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crabnet.h"

/* Prints a failed call's status and message and exits. */
static void check(crabnet_status status, const char *what) {
    if (status != CRABNET_STATUS_OK) {
        fprintf(stderr, "%s failed: %s: %s\n", what, crabnet_status_name(status),
                crabnet_last_error());
        exit(1);
    }
}

/* Runs on the node's events thread. `event_json` is only borrowed for the call. */
static void on_event(void *user_data, const char *event_json) {
    const char *prefix = (const char *)user_data;
    char *type = NULL;
    if (crabnet_json_get_string(event_json, "/type", &type) == CRABNET_STATUS_OK) {
        printf("%s %-16s %s\n", prefix, type, event_json);
        crabnet_string_free(type);
    }
    fflush(stdout);
}

int main(int argc, char **argv) {
    char dir[256];
    if (argc > 1) {
        snprintf(dir, sizeof dir, "%s", argv[1]);
    } else {
        snprintf(dir, sizeof dir, "/tmp/crabnet-example-XXXXXX");
        if (mkdtemp(dir) == NULL) return 1;
    }
    printf("crabnet %s, data directory %s\n", crabnet_version(), dir);

    crabnet_config *config = NULL;
    check(crabnet_config_new(dir, &config), "crabnet_config_new");
    check(crabnet_config_set_name(config, "c-example"), "crabnet_config_set_name");
    crabnet_node *node = NULL;
    check(crabnet_node_start(config, &node), "crabnet_node_start");
    crabnet_config_free(config); /* the node copied it */

    static char prefix[] = "[event]";
    uint64_t subscription = 0;
    check(crabnet_node_subscribe(node, on_event, prefix, &subscription),
          "crabnet_node_subscribe");

    /* Build the request; crabnet_json_quote escapes the command for JSON. */
    char *command = NULL;
    check(crabnet_json_quote("echo \"hello from C\"", &command), "crabnet_json_quote");
    char request[512];
    snprintf(request, sizeof request,
             "{\"command\": %s, \"description\": \"example\", \"max_price\": 50}", command);
    crabnet_string_free(command);

    char *seed = NULL;
    check(crabnet_node_publish(node, request, &seed), "crabnet_node_publish");
    char *seed_id = NULL;
    check(crabnet_json_get_string(seed, "/seed/id", &seed_id), "crabnet_json_get_string");
    printf("published seed %s\n", seed_id);
    crabnet_string_free(seed);

    /* Withdraw it again, then look at the node. */
    check(crabnet_node_cancel(node, seed_id, &seed), "crabnet_node_cancel");
    crabnet_string_free(seed);
    crabnet_string_free(seed_id);
    char *overview = NULL;
    check(crabnet_node_overview(node, &overview), "crabnet_node_overview");
    printf("overview %s\n", overview);
    crabnet_string_free(overview);

    /* Stop delivers the remaining events to the callback before it returns. */
    check(crabnet_node_stop(node), "crabnet_node_stop");
    crabnet_node_free(node);
    if (argc <= 1) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) return 1;
    }
    return 0;
}
