#!/usr/bin/env python3
"""Scale benchmark: N node processes on one machine (libp2p, or UDP; issue 12 item 7, issue 13).

Starts N `crabnet listen` processes (libp2p by default) on 127.0.0.1 (each its own data directory
in a temporary directory, ports chosen by the OS), lets them form one network, publishes S
seeds from different nodes and reports:

- time until every node has a verified hello from every other node (the network formed),
- time from the first publish until every node holds every seed (convergence),
- per seed, publish -> applied on every other node (`publish_to_all_ms`: p50, p90, p99, max)
  and on the first other node (`publish_to_first_ms`),
  from the `at` stamps of the seed_published events (one clock: every process is on this
  machine); with `--publish-jobs 1` (the default) seeds go out one after another, and
  `--publish-gap` spaces them further,
- CPU (utime + stime) the nodes spent until the network formed (hub, others, total) and
  while the seeds spread,
- peak and idle RSS per node (VmHWM, VmRSS from /proc), and idle PSS and private memory
  per node (/proc/PID/smaps_rollup): RSS counts in full the binary's code pages that every
  node maps from the same file (about 16 MiB of a release build), PSS counts each shared
  page divided by the processes that map it, private counts the pages of this node alone,
- idle CPU per node (utime + stime over an idle window after convergence, in % of one core),
  and for libp2p the TCP segments the machine sent per second in that window (on a quiet
  machine, the network's own traffic over loopback).

Topology: by default every node dials node 0 (`--dial star`), the hardest case for the hub;
`--dial K` makes node i dial node i mod K of the first K nodes (a few bootstrap nodes).
`--transport udp` runs the UDP backend instead, every node configured with every other
node's address (UDP does not relay: a full mesh of unicast peers); `--dial` does not apply.
`--publish-jobs J` runs J CLI publish processes at once (for runs of many seeds).

Linux only (reads /proc). Uses only the Python standard library.

    cargo build --release --workspace --bin crabnet
    scripts/bench-dht-scale.py --nodes 100 --bin target/release/crabnet
"""

import argparse
import concurrent.futures
import ctypes
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tcp_segments_sent():
    """The kernel's count of TCP segments sent (`OutSegs` in /proc/net/snmp), or None."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Tcp:")]
        return int(rows[1][rows[0].index("OutSegs")])
    except (OSError, IndexError, ValueError):
        return None


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# libc's prctl, loaded once (Linux): see stop_with_parent.
LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1
SCRIPT_PID = os.getpid()


def stop_with_parent():
    """In a listener about to start (Linux): SIGTERM when this script dies, also by SIGKILL,
    so that no node outlives the benchmark (a hundred orphans hold ports, CPU and inotify
    instances). A script that died before the request took effect is seen as a new parent:
    the listener then does not start.

    The kernel sends the signal when the *thread* that started the listener ends: listeners
    are started from the main thread only (before the publish pool exists), which is also
    what makes running this between fork and exec safe."""
    if LIBC is None:
        return
    if LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        # Raised in the child: Popen reports it in the script.
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != SCRIPT_PID:
        os._exit(1)


class Stopped(SystemExit):
    """The script was told to stop (SIGTERM, SIGHUP): not a failed wait."""


def exit_on(signum, _frame):
    """SIGTERM or SIGHUP ends the script through its cleanup (stop the nodes, remove their
    directories) instead of killing it on the spot."""
    raise Stopped(128 + signum)


class Listener:
    """One `crabnet listen` process whose JSON-lines stdout goes to a file."""

    def __init__(self, binary, index, root, config):
        self.index = index
        self.dir = os.path.join(root, f"n{index}")
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "config.toml"), "w") as f:
            f.write(f'name = "n{index}"\n{config}')
        out = subprocess.run(
            [binary, "--data-dir", self.dir, "--json", "init"],
            check=True, capture_output=True, text=True,
        )
        self.node_id = json.loads(out.stdout)["node_id"]
        self.binary = binary
        self.proc = None
        self.out_path = os.path.join(self.dir, "listen.out")
        self.offset = 0
        self.partial = b""
        self.banner = None
        self.peers = set()
        self.seeds = set()
        self.seed_at = {}  # seed id -> `at` (Unix ms) of its seed_published event here

    def start(self, peers, transport="dht", bind="127.0.0.1:0"):
        args = [self.binary, "--data-dir", self.dir, "--json", "listen", "--transport", transport,
                "--bind", bind, "--no-http"]
        for p in peers:
            args += ["--peer", p]
        self.out = open(self.out_path, "wb")
        self.err = open(os.path.join(self.dir, "listen.err"), "wb")
        self.proc = subprocess.Popen(args, stdout=self.out, stderr=self.err,
                                     stdin=subprocess.DEVNULL, preexec_fn=stop_with_parent)

    def poll(self):
        """Reads new stdout lines: the banner, peers discovered and seeds held."""
        with open(self.out_path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        text = (self.partial + data).decode()
        decoder = json.JSONDecoder()
        pos = 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            try:
                v, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                break  # an incomplete document: wait for the rest
            pos = end
            if self.banner is None and "bind" in v:
                self.banner = v
            elif v.get("type") == "peer_discovered":
                self.peers.add(v["node_id"])
            elif v.get("type") == "seed_published":
                self.seeds.add(v["seed_id"])
                self.seed_at.setdefault(v["seed_id"], v["at"])
        self.partial = text[pos:].encode()
        if self.proc.poll() is not None:
            raise SystemExit(f"node {self.index} exited with {self.proc.returncode}; see {self.dir}")

    def tcp_address(self):
        for a in self.banner["addresses"]:
            if "/tcp/" in a and "/p2p/" in a:
                return a
        raise SystemExit(f"node {self.index} announces no TCP address: {self.banner}")

    def proc_status(self):
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) / 1024.0  # MiB
        return out

    def memory(self):
        """PSS and private memory (Private_Clean + Private_Dirty) in MiB."""
        out = {"Pss": 0.0, "Private": 0.0}
        with open(f"/proc/{self.proc.pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k == "Pss":
                    out["Pss"] = int(v.split()[0]) / 1024.0
                elif k in ("Private_Clean", "Private_Dirty"):
                    out["Private"] += int(v.split()[0]) / 1024.0
        return out

    def switches(self):
        """Context switches (voluntary and not) of each of the process's threads, by thread id:
        how often its threads woke, a figure the machine's load does not scale."""
        out = {}
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                with open(f"/proc/{self.proc.pid}/task/{tid}/status") as f:
                    out[tid] = sum(int(line.split()[1]) for line in f
                                   if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))
            except OSError:
                pass  # the thread ended meanwhile
        return out

    def cpu_ticks(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def wait_for(what, timeout, cond, every=0.2, progress=None):
    """Polls `cond` until it holds; every `progress` seconds (if given) logs its detail."""
    start = time.monotonic()
    shown = start
    while True:
        ok, detail = cond()
        if ok:
            return time.monotonic() - start
        if progress is not None and time.monotonic() - shown >= progress:
            shown = time.monotonic()
            log(f"  {shown - start:5.1f}s: {detail}")
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}: {detail}")
        time.sleep(every)


def free_udp_ports(n):
    """`n` distinct UDP ports on 127.0.0.1 that were free a moment ago (bound, then released
    together, so that none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def percentiles(values):
    """Nearest-rank p50, p90, p99 and the maximum."""
    values = sorted(values)
    n = len(values)

    def rank(p):
        return values[min(n - 1, max(0, -(-p * n // 100) - 1))]

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": values[-1], "n": n}


def stats(values):
    values = sorted(values)
    n = len(values)
    return {
        "min": round(values[0], 2),
        "median": round(values[n // 2], 2),
        "max": round(values[-1], 2),
        "mean": round(sum(values) / n, 3),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--publish-jobs", type=int, default=1,
                    help="CLI publish processes run at once (one per seed; default one after "
                         "another)")
    ap.add_argument("--publish-gap", type=float, default=0.0,
                    help="seconds each publish job waits after a publish (spaced seeds measure "
                         "latency without queueing)")
    ap.add_argument("--bin", default=os.environ.get("CRABNET_BIN", "target/release/crabnet"))
    ap.add_argument("--transport", choices=["dht", "udp"], default="dht")
    ap.add_argument("--dial", default="star",
                    help="'star' (every node dials node 0) or K (node i dials node i mod K)")
    ap.add_argument("--idle-secs", type=float, default=30.0,
                    help="length of the idle CPU window after convergence")
    ap.add_argument("--settle-secs", type=float, default=10.0,
                    help="pause between convergence and the idle window")
    ap.add_argument("--idle-at", type=float, default=None,
                    help="start the idle window at this Unix time instead of --settle-secs "
                         "after convergence (two runs given the same time measure the same "
                         "minute of the machine: an A/B of two builds)")
    ap.add_argument("--timeout", type=float, default=600.0, help="per phase")
    ap.add_argument("--config", default="", help="extra config.toml text for every node")
    ap.add_argument("--udp-ports", default=None,
                    help="with --transport udp: the nodes' ports on 127.0.0.1, comma-separated "
                         "(default: ports the OS reports free a moment before the start)")
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    ap.add_argument("--progress", type=float, default=None,
                    help="log the pairs still missing every this many seconds while the network "
                         "forms and while the seeds spread")
    args = ap.parse_args()
    given_ports = None
    if args.udp_ports is not None:
        try:
            given_ports = [int(p) for p in args.udp_ports.split(",")]
        except ValueError:
            ap.error(f"--udp-ports: not a comma-separated list of ports: {args.udp_ports}")
        if len(given_ports) != args.nodes or len(set(given_ports)) != args.nodes \
                or not all(0 < p < 65536 for p in given_ports):
            ap.error(f"--udp-ports: {args.nodes} distinct ports wanted, got {args.udp_ports}")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        # A signal the script was started to ignore (`nohup`) stays ignored, for the
        # listeners too.
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, exit_on)

    binary = os.path.abspath(args.bin)
    root = None
    nodes = []
    try:
        # Made inside the `try`, after the handlers: a signal from here on removes it.
        root = tempfile.mkdtemp(prefix="crabnet-bench-scale-")
        t0 = time.monotonic()
        for i in range(args.nodes):
            nodes.append(Listener(binary, i, root, args.config))
        log(f"initialized {args.nodes} nodes in {time.monotonic() - t0:.1f}s under {root}")

        k = 1 if args.dial == "star" else max(1, int(args.dial))
        start = time.monotonic()
        if args.transport == "udp":
            ports = given_ports or free_udp_ports(args.nodes)
            start = time.monotonic()
            for i, n in enumerate(nodes):
                n.start([f"127.0.0.1:{p}" for j, p in enumerate(ports) if j != i],
                        transport="udp", bind=f"127.0.0.1:{ports[i]}")
        for i, n in enumerate(nodes if args.transport == "dht" else []):
            if i < k:
                n.start([nodes[j].tcp_address() for j in range(i)][:1])
                wait_for(f"node {i}'s banner", 30, lambda: (n.poll() or n.banner is not None, ""))
            else:
                n.start([nodes[i % k].tcp_address()])
        started_at = time.monotonic() - start
        log(f"started {args.nodes} listeners in {started_at:.1f}s")
        ids = {n.node_id for n in nodes}

        index = {n.node_id: n.index for n in nodes}

        def formed():
            missing = []
            for n in nodes:
                n.poll()
                missing += [(n.index, index[p]) for p in ids - {n.node_id} - n.peers]
            return not missing, (f"{len(missing)} (node, peer) pairs without a verified hello, "
                                 f"e.g. {sorted(missing)[:10]}")

        wait_for("the network to form", args.timeout, formed, every=0.5,
                 progress=args.progress)
        formed_at = time.monotonic() - start
        cpu_formed = [n.cpu_ticks() for n in nodes]
        log(f"network formed {formed_at:.1f}s after the first start")

        # Publish S seeds from nodes spread over the network.
        def publish(s):
            n = nodes[(s * 7 + args.nodes - 1) % args.nodes]
            out = subprocess.run(
                [binary, "--data-dir", n.dir, "--json", "seed", "publish",
                 "--command", f"echo bench-{s}", "--max-bids", "1", "--bid-window", "600",
                 "--min-price", "1", "--max-price", "100"],
                check=True, capture_output=True, text=True,
            )
            seed = json.loads(out.stdout)["seed"]["id"]
            if args.publish_gap > 0:
                time.sleep(args.publish_gap)
            return seed, n

        pub_start = time.monotonic()
        pool = concurrent.futures.ThreadPoolExecutor(max(1, args.publish_jobs))
        try:
            seeds = list(pool.map(publish, range(args.seeds)))
        finally:
            # Stopped (SIGTERM, a failed publish): the publishes not started yet are dropped.
            pool.shutdown(cancel_futures=True)
        published = time.monotonic()
        publish_secs = published - pub_start
        want = {s for s, _ in seeds}

        def converged():
            missing = []
            for n in nodes:
                n.poll()
                missing += [(n.index, s) for s in want - n.seeds]
            lacking = sorted({i for i, _ in missing})
            return not missing, (f"{len(missing)} (node, seed) pairs missing, at "
                                 f"{len(lacking)} nodes, e.g. nodes {lacking[:10]}")

        try:
            wait_for("every node to hold every seed", args.timeout, converged, every=0.1,
                     progress=args.progress)
        except Stopped:
            raise
        except SystemExit:
            # Tell seeds a node lacks from seeds it holds without having printed their event.
            unstored = 0
            for n in nodes:
                db = sqlite3.connect(f"file:{os.path.join(n.dir, 'crabnet.db')}?mode=ro",
                                     uri=True, timeout=10)
                stored = {r[0] for r in db.execute("SELECT id FROM seeds")}
                db.close()
                unstored += len(want - stored)
            log(f"(node, seed) pairs not in the nodes' stores: {unstored}")
            raise
        done = time.monotonic()
        cpu_converged = [n.cpu_ticks() for n in nodes]
        converge = done - pub_start
        log(f"converged {converge:.2f}s after the first publish, {done - published:.2f}s after "
            f"the last (publishing took {publish_secs:.2f}s)")
        # Publish -> applied on every node, per seed: from the `at` of the publishing node's
        # seed_published event (the CLI's commit into its store) to the latest `at` of the same
        # event on the other nodes (each node's apply, stamped as its transaction starts).
        # Every process runs on this machine's one clock.
        latency = percentiles([max(m.seed_at[s] for m in nodes if m is not n) - n.seed_at[s]
                               for s, n in seeds])
        log(f"publish -> applied everywhere (ms): {latency}")
        # The same to the first other node that applied it: how long the publishing node took
        # to pick the CLI's commit up and send it, and one hop; the rest is the spread.
        first = percentiles([min(m.seed_at[s] for m in nodes if m is not n) - n.seed_at[s]
                             for s, n in seeds])
        log(f"publish -> applied on the first other node (ms): {first}")

        peak = [n.proc_status()["VmHWM"] for n in nodes]
        if args.idle_at is not None:
            wait = args.idle_at - time.time()
            if wait < 0:
                raise SystemExit(f"--idle-at passed {-wait:.1f}s before the network converged")
            time.sleep(wait)
        else:
            time.sleep(args.settle_secs)
        s0 = [n.switches() for n in nodes]
        c0 = [n.cpu_ticks() for n in nodes]
        t0 = tcp_segments_sent()
        w0 = time.monotonic()
        time.sleep(args.idle_secs)
        c1 = [n.cpu_ticks() for n in nodes]
        s1 = [n.switches() for n in nodes]
        t1 = tcp_segments_sent()
        window = time.monotonic() - w0
        idle_cpu = [100.0 * (b - a) / CLK_TCK / window for a, b in zip(c0, c1)]
        # Threads that ended inside the window are left out (blocking-pool threads end after
        # 10 s without work), so this may count a few too few.
        idle_wakeups = [sum(v - a.get(t, 0) for t, v in b.items()) / window
                        for a, b in zip(s0, s1)]
        idle_rss = [n.proc_status()["VmRSS"] for n in nodes]
        idle_mem = [n.memory() for n in nodes]
        peak = [max(p, n.proc_status()["VmHWM"]) for p, n in zip(peak, nodes)]
        report = {
            "transport": args.transport,
            "nodes": args.nodes,
            "seeds": args.seeds,
            "dial": args.dial,
            "started_secs": round(started_at, 2),
            "formed_secs": round(formed_at, 2),
            "publish_secs": round(publish_secs, 2),
            "converge_secs": round(converge, 2),
            "converge_after_last_publish_secs": round(done - published, 2),
            "publish_to_all_ms": latency,
            "publish_to_first_ms": first,
            "form_cpu_secs_hub": round(cpu_formed[0] / CLK_TCK, 2),
            "form_cpu_secs_others": stats([c / CLK_TCK for c in cpu_formed[1:]]),
            "form_cpu_secs_total": round(sum(cpu_formed) / CLK_TCK, 1),
            "converge_cpu_secs_total": round(
                sum(b - a for a, b in zip(cpu_formed, cpu_converged)) / CLK_TCK, 1),
            # CPU of all nodes while the seeds spread, per seed per node: what one node spends
            # to apply a seed (and to print its event, forward it, and the rest of the network's
            # upkeep meanwhile). Divided over the cores, it bounds publish -> applied on all.
            "converge_cpu_ms_per_seed_per_node": round(
                1000.0 * sum(b - a for a, b in zip(cpu_formed, cpu_converged)) / CLK_TCK
                / (args.seeds * args.nodes), 3),
            "peak_rss_mib": stats(peak),
            "idle_rss_mib": stats(idle_rss),
            "idle_pss_mib": stats([m["Pss"] for m in idle_mem]),
            "idle_private_mib": stats([m["Private"] for m in idle_mem]),
            "idle_cpu_pct_of_core": stats(idle_cpu),
            "idle_context_switches_per_s": stats(idle_wakeups),
            # TCP segments the machine sent per second over the idle window (acknowledgements
            # included): libp2p nodes talk over TCP on loopback, so on a quiet machine this is
            # the network's traffic (another program's counts too). None for UDP nodes.
            "idle_tcp_segments_per_s": round((t1 - t0) / window, 1)
            if args.transport == "dht" and t0 is not None and t1 is not None else None,
            "idle_window_secs": round(window, 1),
        }
        print(json.dumps(report))
    finally:
        # A second SIGTERM, SIGHUP or Ctrl-C must not cut the cleanup short.
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        for n in nodes:
            if n.proc:
                try:
                    n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait()
        if root and not args.keep:
            subprocess.run(["rm", "-rf", root], check=False)


if __name__ == "__main__":
    main()
