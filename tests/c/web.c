/* The dashboard served from C: crabnet_node_serve_web on an ephemeral loopback port answers
 * GET /health with the node's id, serves the dashboard page and its API (/api/overview);
 * crabnet_web_free stops it. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "check.h"

/* GET `path` from 127.0.0.1:`port`; returns the whole response (status line, headers, body)
 * in `buf`, NUL-terminated. */
static void http_get(int port, const char *path, char *buf, size_t size) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0);
    char request[256];
    int n = snprintf(request, sizeof request,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n", path,
                     port);
    CHECK(write(fd, request, (size_t)n) == n);
    size_t got = 0;
    for (;;) {
        ssize_t r = read(fd, buf + got, size - 1 - got);
        if (r <= 0) break;
        got += (size_t)r;
        if (got == size - 1) break;
    }
    buf[got] = '\0';
    close(fd);
}

int main(void) {
    char base[256];
    make_temp_dir(base, sizeof base, "web");
    crabnet_node *node = start_offline(base, "dashboard");
    char *id = NULL;
    OK(crabnet_node_id(node, &id));

    crabnet_web *web = NULL;
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "unknown field", crabnet_node_serve_web(node, "{\"bnd\": 1}", &web));
    EXPECT_ERR(CRABNET_STATUS_CONFIG, "token",
               crabnet_node_serve_web(node, "{\"bind\": \"0.0.0.0:0\"}", &web));
    CHECK(web == NULL);
    OK(crabnet_node_serve_web(node, "{\"bind\": \"127.0.0.1:0\"}", &web));
    char *url = NULL;
    OK(crabnet_web_url(web, &url));
    int port = 0;
    CHECK(sscanf(url, "http://127.0.0.1:%d/", &port) == 1 && port > 0);
    crabnet_string_free(url);

    static char response[65536];
    http_get(port, "/health", response, sizeof response);
    CHECK(strncmp(response, "HTTP/1.1 200", 12) == 0);
    CHECK(strstr(response, "\"status\":\"ok\"") != NULL);
    CHECK(strstr(response, id) != NULL);
    /* The dashboard page, and the API it reads. */
    http_get(port, "/", response, sizeof response);
    CHECK(strncmp(response, "HTTP/1.1 200", 12) == 0);
    CHECK(strstr(response, "<title>Crabnet dashboard</title>") != NULL);
    http_get(port, "/api/overview", response, sizeof response);
    CHECK(strncmp(response, "HTTP/1.1 200", 12) == 0);
    char node_field[128];
    snprintf(node_field, sizeof node_field, "\"node_id\":\"%s\"", id);
    CHECK(strstr(response, node_field) != NULL);

    /* After a stop the server still answers, and says the node is unavailable. */
    OK(crabnet_node_stop(node));
    http_get(port, "/health", response, sizeof response);
    CHECK(strncmp(response, "HTTP/1.1 503", 12) == 0);
    crabnet_web_free(web);
    crabnet_web_free(NULL);
    crabnet_node_free(node);

    crabnet_string_free(id);
    remove_tree(base);
    printf("web: %d checks passed\n", checks_passed);
    return 0;
}
