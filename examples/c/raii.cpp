// Crabnet from C++: RAII wrappers over the C handles (std::unique_ptr with custom deleters,
// a subscription object that unsubscribes in its destructor, exceptions for error statuses),
// and a whole task lifecycle between two nodes on an in-process network.
//
//   c++ -std=c++17 raii.cpp $(pkg-config --cflags --libs crabnet) -o raii && ./raii
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include "crabnet.h"

namespace crab {

// ---- ownership: one deleter per handle type, one for strings ----
struct ConfigFree { void operator()(crabnet_config *c) const { crabnet_config_free(c); } };
struct HubFree { void operator()(crabnet_hub *h) const { crabnet_hub_free(h); } };
struct NodeFree { void operator()(crabnet_node *n) const { crabnet_node_free(n); } };
struct StringFree { void operator()(char *s) const { crabnet_string_free(s); } };

using ConfigPtr = std::unique_ptr<crabnet_config, ConfigFree>;
using HubPtr = std::unique_ptr<crabnet_hub, HubFree>;
using NodePtr = std::unique_ptr<crabnet_node, NodeFree>;
using StringPtr = std::unique_ptr<char, StringFree>;

// ---- errors: a status other than OK becomes an exception with the last error ----
struct Error : std::runtime_error {
    crabnet_status status;
    Error(crabnet_status s, const std::string &what) : std::runtime_error(what), status(s) {}
};

inline void check(crabnet_status status) {
    if (status != CRABNET_STATUS_OK)
        throw Error(status, std::string(crabnet_status_name(status)) + ": " + crabnet_last_error());
}

// Calls a function with a `char **` out-parameter and takes ownership of the string.
template <typename F>
std::string take_string(F &&call) {
    char *raw = nullptr;
    check(call(&raw));
    StringPtr owned(raw);
    return std::string(owned.get());
}

inline std::string json_string(const std::string &json, const char *pointer) {
    return take_string([&](char **out) { return crabnet_json_get_string(json.c_str(), pointer, out); });
}

inline std::string json_raw(const std::string &json, const char *pointer) {
    return take_string([&](char **out) { return crabnet_json_get(json.c_str(), pointer, out); });
}

inline uint64_t json_u64(const std::string &json, const char *pointer) {
    uint64_t value = 0;
    check(crabnet_json_get_u64(json.c_str(), pointer, &value));
    return value;
}

inline ConfigPtr make_config(const std::string &data_dir, const std::string &name) {
    crabnet_config *raw = nullptr;
    check(crabnet_config_new(data_dir.c_str(), &raw));
    ConfigPtr config(raw);
    check(crabnet_config_set_name(config.get(), name.c_str()));
    check(crabnet_config_set_tick_ms(config.get(), 50));
    return config;
}

inline HubPtr make_hub() {
    crabnet_hub *raw = nullptr;
    check(crabnet_hub_new(&raw));
    return HubPtr(raw);
}

// A subscription: a std::function called on the node's events thread until destruction.
// The destructor unsubscribes, which waits for a call in progress, so the function (and what
// it captures) is never used after the object is gone.
class Subscription {
  public:
    using Handler = std::function<void(const char *event_json)>;
    Subscription(const crabnet_node *node, Handler handler)
        : node_(node), handler_(new Handler(std::move(handler))) {
        check(crabnet_node_subscribe(node_, &Subscription::trampoline, handler_.get(), &id_));
    }
    ~Subscription() {
        // NOT_FOUND after the node stopped (a stop ends every subscription) is fine.
        crabnet_node_unsubscribe(node_, id_);
    }
    Subscription(const Subscription &) = delete;
    Subscription &operator=(const Subscription &) = delete;

  private:
    static void trampoline(void *user_data, const char *event_json) {
        try {
            (*static_cast<Handler *>(user_data))(event_json);
        } catch (const std::exception &e) {
            // No exception may leave a callback.
            std::cerr << "event handler failed: " << e.what() << "\n";
        }
    }
    const crabnet_node *node_;
    std::unique_ptr<Handler> handler_;
    uint64_t id_ = 0;
};

// A node: started on a hub, stopped and freed by its destructor.
class Node {
  public:
    Node(const crabnet_hub *hub, const std::string &data_dir, const std::string &name)
        : name_(name) {
        ConfigPtr config = make_config(data_dir, name);
        crabnet_node *raw = nullptr;
        check(crabnet_node_start_memory(config.get(), hub, name.c_str(), &raw));
        node_.reset(raw);
        id_ = take_string([&](char **out) { return crabnet_node_id(node_.get(), out); });
    }

    const std::string &name() const { return name_; }
    const std::string &id() const { return id_; }
    const crabnet_node *get() const { return node_.get(); }

    std::string publish(const std::string &request_json) {
        return take_string([&](char **out) {
            return crabnet_node_publish(node_.get(), request_json.c_str(), out);
        });
    }
    std::string bid(const std::string &seed, uint64_t price) {
        return take_string([&](char **out) { return crabnet_node_bid(node_.get(), seed.c_str(), price, out); });
    }
    std::string claim(const std::string &seed) {
        return take_string([&](char **out) { return crabnet_node_claim(node_.get(), seed.c_str(), out); });
    }
    std::string run(const std::string &seed) {
        return take_string([&](char **out) { return crabnet_node_run(node_.get(), seed.c_str(), out); });
    }
    std::string settle(const std::string &seed, bool accept, const std::string &note) {
        return take_string([&](char **out) {
            return crabnet_node_settle(node_.get(), seed.c_str(), accept, note.c_str(), out);
        });
    }
    std::string seed(const std::string &seed) {
        return take_string([&](char **out) { return crabnet_node_seed(node_.get(), seed.c_str(), out); });
    }
    std::string overview() {
        return take_string([&](char **out) { return crabnet_node_overview(node_.get(), out); });
    }
    std::string wait_for_peers(size_t count, uint32_t timeout_ms) {
        return take_string([&](char **out) {
            return crabnet_node_wait_for_peers(node_.get(), count, timeout_ms, out);
        });
    }
    void stop() { check(crabnet_node_stop(node_.get())); }

    // Polls the seed until `done` holds (or throws after 20 s).
    template <typename P>
    std::string wait_for(const std::string &seed_id, P done) {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        for (;;) {
            try {
                std::string view = seed(seed_id);
                if (done(view)) return view;
            } catch (const Error &e) {
                if (e.status != CRABNET_STATUS_NOT_FOUND) throw;
            }
            if (std::chrono::steady_clock::now() > deadline)
                throw std::runtime_error("timed out waiting on " + name_);
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }

  private:
    std::string name_;
    std::string id_;
    NodePtr node_;
};

}  // namespace crab

int main() {
    try {
        char dir[] = "/tmp/crabnet-raii-XXXXXX";
        if (mkdtemp(dir) == nullptr) return 1;
        std::string base(dir);
        std::mutex print_lock;
        std::atomic<int> events{0};
        {
            crab::HubPtr hub = crab::make_hub();
            crab::Node alice(hub.get(), base + "/alice", "alice");
            crab::Node bob(hub.get(), base + "/bob", "bob");
            hub.reset();  // the nodes keep the network alive

            auto printer = [&](const std::string &who) {
                return [&, who](const char *event_json) {
                    std::string type = crab::json_string(event_json, "/type");
                    std::lock_guard<std::mutex> guard(print_lock);
                    std::cout << "  [" << who << "] " << type << "\n";
                    events++;
                };
            };
            // Main-thread lines take the same lock, so callback lines never split them.
            auto say = [&](const std::string &line) {
                std::lock_guard<std::mutex> guard(print_lock);
                std::cout << line << std::flush;
            };
            crab::Subscription alice_events(alice.get(), printer("alice"));
            crab::Subscription bob_events(bob.get(), printer("bob"));

            std::string peers = alice.wait_for_peers(1, 20000);
            say("alice sees " + crab::json_string(peers, "/0/name") + "\n");
            std::string seed = alice.publish(
                R"({"command": "echo raii; expr 6 \\* 7", "max_bids": 1, "max_price": 80})");
            std::string id = crab::json_string(seed, "/seed/id");
            say("alice published " + id + "\n");

            bob.wait_for(id, [](const std::string &) { return true; });
            bob.bid(id, 35);
            bob.wait_for(id, [](const std::string &v) { return crab::json_raw(v, "/award") != "null"; });
            bob.claim(id);
            std::string ran = bob.run(id);
            say("bob ran it: " + crab::json_string(ran, "/result/output_excerpt"));

            alice.wait_for(id, [](const std::string &v) { return crab::json_string(v, "/status") == "completed"; });
            std::string settled = alice.settle(id, true, "thanks");
            say("alice settled: " + crab::json_string(settled, "/settlement/outcome") + ", " +
                std::to_string(crab::json_u64(settled, "/settlement/amount")) + " due\n");
            bob.wait_for(id, [](const std::string &v) { return crab::json_string(v, "/status") == "settled"; });

            // A failed call is an exception carrying the status and the message.
            try {
                bob.claim(id);
            } catch (const crab::Error &e) {
                say(std::string("claiming again fails as expected: ") + e.what() + "\n");
            }
            alice.stop();
            bob.stop();
            // Subscriptions end before the nodes: declared later, destroyed first.
        }
        std::cout << events.load() << " events\n";
        std::string cmd = "rm -rf '" + base + "'";
        return std::system(cmd.c_str()) == 0 ? 0 : 1;
    } catch (const std::exception &e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
