/* Two nodes on UDP over 127.0.0.1 (nothing else): a seed goes from publisher to bidder and
 * back through award, claim, run and settlement. A third node cannot bind a port in use. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"

/* A UDP port on 127.0.0.1 that is free right now and not handed out before by this process,
 * from 10000-32767 (below the kernel's ephemeral range on Linux by default): a port released
 * for a node to bind cannot be taken meanwhile by an outgoing connection or a port-0 bind. */
static int free_port(void) {
    static int next = -1;
    if (next < 0) next = (int)((unsigned)getpid() * 7919u % 22768u);
    for (int tries = 0; tries < 22768; tries++) {
        int port = 10000 + next;
        next = (next + 1) % 22768;
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        if (fd < 0) FAIL("socket failed");
        struct sockaddr_in addr;
        memset(&addr, 0, sizeof addr);
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons((uint16_t)port);
        int bound = bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
        close(fd);
        if (bound) return port;
    }
    FAIL("no free UDP port in 10000-32767");
    return -1;
}

static crabnet_node *start_udp(const char *base, const char *name, int port, int peer) {
    crabnet_config *config = test_config(base, name);
    char udp[256];
    snprintf(udp, sizeof udp, "{\"bind\": \"127.0.0.1:%d\", \"peers\": [\"127.0.0.1:%d\"]}", port,
             peer);
    crabnet_node *node = NULL;
    OK(crabnet_node_start_udp(config, udp, &node));
    crabnet_config_free(config);
    return node;
}

/* Waits until `node` verified the hello of its one peer, `peer_name`. */
static void wait_peer(const crabnet_node *node, const char *peer_name, uint32_t timeout_ms) {
    char *peers = wait_peers(node, 1, timeout_ms);
    CHECK(json_str_eq(peers, "/0/name", peer_name));
    crabnet_string_free(peers);
}

/* Checks that `a` runs on `transport`, then stops and frees both nodes. */
static void check_transport_and_stop(crabnet_node *a, crabnet_node *b, const char *transport) {
    char *overview = NULL;
    OK(crabnet_node_overview(a, &overview));
    CHECK(json_str_eq(overview, "/transport", transport));
    crabnet_string_free(overview);
    OK(crabnet_node_stop(a));
    OK(crabnet_node_stop(b));
    crabnet_node_free(a);
    crabnet_node_free(b);
}

/* Two libp2p nodes on loopback: the second dials the first; both verify each other's hello. */
static void test_dht(const char *base) {
    int port = free_port();
    char dht[256];
    snprintf(dht, sizeof dht, "{\"listen\": [\"/ip4/127.0.0.1/tcp/%d\"]}", port);
    crabnet_config *config = test_config(base, "dht-a");
    crabnet_node *a = NULL;
    OK(crabnet_node_start_dht(config, dht, &a));
    crabnet_config_free(config);
    snprintf(dht, sizeof dht,
             "{\"listen\": [\"/ip4/127.0.0.1/tcp/0\"], \"peers\": [\"/ip4/127.0.0.1/tcp/%d\"]}", port);
    config = test_config(base, "dht-b");
    crabnet_node *b = NULL;
    OK(crabnet_node_start_dht(config, dht, &b));
    crabnet_config_free(config);
    wait_peer(a, "dht-b", 30000);
    wait_peer(b, "dht-a", 30000);
    check_transport_and_stop(a, b, "dht");
}

int main(void) {
    char base[256];
    make_temp_dir(base, sizeof base, "udp");
    test_dht(base);
    int pa = free_port(), pb = free_port();
    crabnet_node *a = start_udp(base, "udp-a", pa, pb);
    crabnet_node *b = start_udp(base, "udp-b", pb, pa);

    /* A port in use is a network error. */
    crabnet_config *config = test_config(base, "udp-c");
    char udp[128];
    snprintf(udp, sizeof udp, "{\"bind\": \"127.0.0.1:%d\"}", pa);
    crabnet_node *c = NULL;
    EXPECT_ERR(CRABNET_STATUS_NETWORK, "127.0.0.1", crabnet_node_start_udp(config, udp, &c));
    CHECK(c == NULL);
    crabnet_config_free(config);

    wait_peer(a, "udp-b", 20000);
    wait_peer(b, "udp-a", 20000);

    char *seed = NULL;
    OK(crabnet_node_publish(a, "{\"command\": \"echo over-udp\", \"max_bids\": 1}", &seed));
    char *id = json_str(seed, "/seed/id");
    crabnet_string_free(seed);
    bid_and_claim(b, id, 25);
    OK(crabnet_node_run(b, id, &seed));
    crabnet_string_free(seed);
    crabnet_string_free(wait_seed(a, id, "completed"));
    OK(crabnet_node_settle(a, id, false, "rejected over UDP", &seed));
    CHECK(json_u64(seed, "/settlement/amount") == 0);
    crabnet_string_free(seed);
    seed = wait_seed(b, id, "settled");
    CHECK(json_str_eq(seed, "/settlement/outcome", "rejected"));
    crabnet_string_free(seed);

    check_transport_and_stop(a, b, "udp");
    crabnet_string_free(id);
    remove_tree(base);
    printf("udp: %d checks passed\n", checks_passed);
    return 0;
}
