/* Flow events with the process behind them, from small BPF programs assembled here
   with offsets from the kernel's BTF, on three tracepoints:
   - sock_send_length and sock_recv_length (every sendmsg/recvmsg, in the calling
     process): the first byte a process sends or reads on a TCP or UDP socket names it,
     even when the process exits a millisecond later; an unconnected UDP socket is
     reported with its local side only;
   - inet_sock_set_state: sockets that carry no byte, a listener as it starts listening
     and a connection from its connect() (see assemble_connect).
   For sockets of the watched network namespace only, each writes (process, command
   name, uid, addresses, ports) to a ring buffer the monitor maps, once per process and
   socket in ~30 seconds (an LRU hash remembers what was reported), and wakes the
   monitor only for a process it has not read lately. The programs cost the process a
   hash lookup per call on a watched socket and the monitor nothing until it reads.
   (fentry on tcp_connect and inet_csk_accept would be the obvious hooks, but this
   kernel refuses fentry and has no kprobes.) See _flowevents.h. */
#include "_flowevents.h"

#include "_btf.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RING_SIZE (1u << 20)
#define SEEN_ENTRIES 16384
#define KNOWN_ENTRIES 4096
#define TCP_SYN_SENT_STATE 2
#define TCP_LISTEN_STATE 10
#define KEY_SIZE 16 /* pid and socket cookie */
#define MAX_INSNS 320
#define MAX_OUTS 24

typedef struct {
    long family, protocol, num, dport, rcv_saddr, daddr, v6_rcv_saddr, v6_daddr, net, ns_inum;
} offsets_t;

static int find_offsets(const btf_t *b, offsets_t *o) {
    o->family = btf_offset(b, "sock_common", "skc_family");
    o->protocol = btf_offset(b, "sock", "sk_protocol");
    o->num = btf_offset(b, "sock_common", "skc_num");
    o->dport = btf_offset(b, "sock_common", "skc_dport");
    o->rcv_saddr = btf_offset(b, "sock_common", "skc_rcv_saddr");
    o->daddr = btf_offset(b, "sock_common", "skc_daddr");
    o->v6_rcv_saddr = btf_offset(b, "sock_common", "skc_v6_rcv_saddr");
    o->v6_daddr = btf_offset(b, "sock_common", "skc_v6_daddr");
    o->net = btf_offset(b, "sock_common", "skc_net");
    o->ns_inum = btf_netns_inum_offset(b);
    const long *all = &o->family;
    for (size_t i = 0; i < sizeof *o / sizeof(long); i++)
        if (all[i] < 0 || all[i] > 0x7fff)
            return ENOENT;
    return 0;
}

/* A program being assembled; jumps to its end ("out") are patched when it is done. */
typedef struct {
    struct bpf_insn insn[MAX_INSNS];
    size_t n, outs[MAX_OUTS], nouts;
} program_t;

static void op(program_t *p, struct bpf_insn insn) {
    if (p->n < MAX_INSNS)
        p->insn[p->n] = insn;
    p->n++;
}

static void ops(program_t *p, const struct bpf_insn *insns, size_t count) {
    for (size_t i = 0; i < count; i++)
        op(p, insns[i]);
}
#define OPS(p, ...)                                                                        \
    do {                                                                                   \
        const struct bpf_insn list_[] = {__VA_ARGS__};                                     \
        ops(p, list_, sizeof list_ / sizeof list_[0]);                                     \
    } while (0)

static void jump_out(program_t *p, struct bpf_insn insn) {
    if (p->nouts < MAX_OUTS)
        p->outs[p->nouts++] = p->n;
    op(p, insn);
}

static int finish(program_t *p) {
    size_t out = p->n;
    OPS(p, MOVI(BPF_REG_0, 0), EXIT());
    if (p->n > MAX_INSNS || p->nouts == MAX_OUTS)
        return E2BIG;
    for (size_t i = 0; i < p->nouts; i++)
        p->insn[p->outs[i]].off = (short)(out - p->outs[i] - 1);
    return 0;
}

/* Skips the event unless this process has not been reported for this socket (r7) in the
   last ~30 seconds (the map holds when it was, by pid and socket cookie at fp-120: a
   cookie is never reused, where a port pair comes back within seconds under churn). */
static void once_in_a_while(program_t *p, int seen) {
    OPS(p, LDX(BPF_DW, BPF_REG_1, BPF_REG_10, -80), STX(BPF_DW, BPF_REG_10, BPF_REG_1, -120),
        MOV(BPF_REG_1, BPF_REG_7), CALL(BPF_FUNC_get_socket_cookie),
        STX(BPF_DW, BPF_REG_10, BPF_REG_0, -112),
        LD_MAP_FD(BPF_REG_1, seen), MOV(BPF_REG_2, BPF_REG_10), ALUI(BPF_ADD, BPF_REG_2, -120),
        CALL(BPF_FUNC_map_lookup_elem), JUMPI(BPF_JEQ, BPF_REG_0, 0, 5),
        LDX(BPF_DW, BPF_REG_9, BPF_REG_0, 0), CALL(BPF_FUNC_ktime_get_ns),
        ALU(BPF_SUB, BPF_REG_0, BPF_REG_9), ALUI(BPF_RSH, BPF_REG_0, 30));
    jump_out(p, JUMPI(BPF_JLT, BPF_REG_0, 28, 0)); /* 28 x 2^30 ns: about 30 seconds */
    OPS(p, CALL(BPF_FUNC_ktime_get_ns), STX(BPF_DW, BPF_REG_10, BPF_REG_0, -88),
        LD_MAP_FD(BPF_REG_1, seen), MOV(BPF_REG_2, BPF_REG_10), ALUI(BPF_ADD, BPF_REG_2, -120),
        MOV(BPF_REG_3, BPF_REG_10), ALUI(BPF_ADD, BPF_REG_3, -88), MOVI(BPF_REG_4, BPF_ANY),
        CALL(BPF_FUNC_map_update_elem));
}

/* r6: the ring buffer flags of the event. A process the monitor read in the last second
   (the map holds when) waits for the monitor's next pass; any other wakes it at once,
   so that it is read before it can exit. Each wake-up costs the monitor more than the
   event itself. */
static void wake_for_strangers(program_t *p, int known) {
    OPS(p, MOVI(BPF_REG_6, 0), LDX(BPF_DW, BPF_REG_1, BPF_REG_10, -80),
        ALUI(BPF_RSH, BPF_REG_1, 32), STX(BPF_W, BPF_REG_10, BPF_REG_1, -96),
        LD_MAP_FD(BPF_REG_1, known), MOV(BPF_REG_2, BPF_REG_10), ALUI(BPF_ADD, BPF_REG_2, -96),
        CALL(BPF_FUNC_map_lookup_elem), JUMPI(BPF_JEQ, BPF_REG_0, 0, 6),
        LDX(BPF_DW, BPF_REG_9, BPF_REG_0, 0), CALL(BPF_FUNC_ktime_get_ns),
        ALU(BPF_SUB, BPF_REG_0, BPF_REG_9), ALUI(BPF_RSH, BPF_REG_0, 30),
        JUMPI(BPF_JGE, BPF_REG_0, 1, 1), MOVI(BPF_REG_6, BPF_RB_NO_WAKEUP));
}

/* r7: the socket (checked not NULL, in the namespace, IPv4 or IPv6), r8 its family. */
static void socket_of_namespace(program_t *p, const offsets_t *o, uint32_t netns) {
    op(p, LDX(BPF_DW, BPF_REG_7, BPF_REG_1, 0));
    jump_out(p, JUMPI(BPF_JEQ, BPF_REG_7, 0, 0));
    if (netns != 0) {
        OPS(p, LDX(BPF_DW, BPF_REG_2, BPF_REG_7, (short)o->net),
            LDX(BPF_W, BPF_REG_2, BPF_REG_2, (short)o->ns_inum));
        jump_out(p, INSN(BPF_JMP32 | BPF_JNE | BPF_K, BPF_REG_2, 0, 0, (int32_t)netns));
    }
    OPS(p, LDX(BPF_H, BPF_REG_8, BPF_REG_7, (short)o->family),
        JUMPI(BPF_JEQ, BPF_REG_8, AF_INET, 1));
    jump_out(p, JUMPI(BPF_JNE, BPF_REG_8, AF_INET6, 0));
}

/* The event's flow from the socket in r7 (family in r8, protocol in r9): fp-72 to fp-33. */
static void flow_of_socket(program_t *p, const offsets_t *o) {
    OPS(p, /* family | protocol << 16 | local port << 32 | remote port << 48 */
        ALUI(BPF_LSH, BPF_REG_9, 16), ALU(BPF_OR, BPF_REG_8, BPF_REG_9),
        LDX(BPF_H, BPF_REG_1, BPF_REG_7, (short)o->num), ALUI(BPF_LSH, BPF_REG_1, 32),
        ALU(BPF_OR, BPF_REG_8, BPF_REG_1), LDX(BPF_H, BPF_REG_1, BPF_REG_7, (short)o->dport),
        ALUI(BPF_LSH, BPF_REG_1, 48), ALU(BPF_OR, BPF_REG_8, BPF_REG_1),
        STX(BPF_DW, BPF_REG_10, BPF_REG_8, -72),
        /* v4 local | v4 remote << 32, then the v6 addresses */
        LDX(BPF_W, BPF_REG_1, BPF_REG_7, (short)o->rcv_saddr),
        LDX(BPF_W, BPF_REG_2, BPF_REG_7, (short)o->daddr), ALUI(BPF_LSH, BPF_REG_2, 32),
        ALU(BPF_OR, BPF_REG_1, BPF_REG_2), STX(BPF_DW, BPF_REG_10, BPF_REG_1, -64),
        LDX(BPF_DW, BPF_REG_1, BPF_REG_7, (short)o->v6_rcv_saddr),
        STX(BPF_DW, BPF_REG_10, BPF_REG_1, -56),
        LDX(BPF_DW, BPF_REG_1, BPF_REG_7, (short)(o->v6_rcv_saddr + 8)),
        STX(BPF_DW, BPF_REG_10, BPF_REG_1, -48),
        LDX(BPF_DW, BPF_REG_1, BPF_REG_7, (short)o->v6_daddr),
        STX(BPF_DW, BPF_REG_10, BPF_REG_1, -40),
        LDX(BPF_DW, BPF_REG_1, BPF_REG_7, (short)(o->v6_daddr + 8)),
        STX(BPF_DW, BPF_REG_10, BPF_REG_1, -32));
}

/* The current process's command name (fp-24) and uid (fp-8). */
static void current_process(program_t *p) {
    OPS(p, MOV(BPF_REG_1, BPF_REG_10), ALUI(BPF_ADD, BPF_REG_1, -24), MOVI(BPF_REG_2, 16),
        CALL(BPF_FUNC_get_current_comm), CALL(BPF_FUNC_get_current_uid_gid),
        STX(BPF_DW, BPF_REG_10, BPF_REG_0, -8));
}

/* The event at fp-80, unless reported lately, out to the ring. */
static void emit_event(program_t *p, const flowevents_t *f) {
    once_in_a_while(p, f->seen);
    wake_for_strangers(p, f->known);
    OPS(p, LD_MAP_FD(BPF_REG_1, f->ring), MOV(BPF_REG_2, BPF_REG_10),
        ALUI(BPF_ADD, BPF_REG_2, -80), MOVI(BPF_REG_3, 80), MOV(BPF_REG_4, BPF_REG_6),
        CALL(BPF_FUNC_ringbuf_output));
}

/* The jump at `at` goes to the next instruction to be added. */
static void land_here(program_t *p, size_t at) {
    if (at < MAX_INSNS)
        p->insn[at].off = (short)(p->n - at - 1);
}

/* sock_send_length / sock_recv_length (sk, ret, flags): the process that sends or reads.
   The event at fp-80 in the layout of flow_event_t. */
static int assemble_first_byte(program_t *p, const offsets_t *o, uint32_t netns,
                               const flowevents_t *f) {
    memset(p, 0, sizeof *p);
    socket_of_namespace(p, o, netns);
    OPS(p, LDX(BPF_H, BPF_REG_9, BPF_REG_7, (short)o->protocol),
        JUMPI(BPF_JEQ, BPF_REG_9, IPPROTO_UDP, 3));
    jump_out(p, JUMPI(BPF_JNE, BPF_REG_9, IPPROTO_TCP, 0));
    OPS(p, LDX(BPF_H, BPF_REG_1, BPF_REG_7, (short)o->dport));
    jump_out(p, JUMPI(BPF_JEQ, BPF_REG_1, 0, 0)); /* TCP without a peer: not a flow yet */
    OPS(p, CALL(BPF_FUNC_get_current_pid_tgid), STX(BPF_DW, BPF_REG_10, BPF_REG_0, -80));
    flow_of_socket(p, o);
    current_process(p);
    emit_event(p, f);
    return finish(p);
}

/* inet_sock_set_state (sk, old state, new state), for sockets that never carry a byte:
   a listener is reported as it starts listening, in listen(). A connection (a port
   scan, a refused connect) enters SYN-SENT in connect(), in the connecting process,
   but before the local port is chosen, so the process is kept by socket (fp-104 the
   key; pid, uid, command name the value) until SYN-SENT is left (established or
   failed, in any context), and reported then. */
static int assemble_connect(program_t *p, const offsets_t *o, uint32_t netns,
                            const flowevents_t *f) {
    memset(p, 0, sizeof *p);
    OPS(p, LDX(BPF_DW, BPF_REG_6, BPF_REG_1, 8), LDX(BPF_DW, BPF_REG_9, BPF_REG_1, 16));
    socket_of_namespace(p, o, netns);
    OPS(p, LDX(BPF_H, BPF_REG_1, BPF_REG_7, (short)o->protocol));
    jump_out(p, JUMPI(BPF_JNE, BPF_REG_1, IPPROTO_TCP, 0));
    size_t not_listening = p->n;
    op(p, INSN(BPF_JMP32 | BPF_JNE | BPF_K, BPF_REG_9, 0, 0, TCP_LISTEN_STATE));
    OPS(p, CALL(BPF_FUNC_get_current_pid_tgid), STX(BPF_DW, BPF_REG_10, BPF_REG_0, -80),
        MOVI(BPF_REG_9, IPPROTO_TCP));
    flow_of_socket(p, o);
    current_process(p);
    emit_event(p, f);
    jump_out(p, JUMPI(BPF_JA, 0, 0, 0));
    land_here(p, not_listening);
    op(p, STX(BPF_DW, BPF_REG_10, BPF_REG_7, -104));
    size_t leaving = p->n;
    op(p, INSN(BPF_JMP32 | BPF_JNE | BPF_K, BPF_REG_9, 0, 0, TCP_SYN_SENT_STATE));
    OPS(p, /* entering SYN-SENT: remember who connects (value at fp-40: pid, uid, comm) */
        CALL(BPF_FUNC_get_current_pid_tgid), STX(BPF_DW, BPF_REG_10, BPF_REG_0, -40),
        CALL(BPF_FUNC_get_current_uid_gid), STX(BPF_DW, BPF_REG_10, BPF_REG_0, -32),
        MOV(BPF_REG_1, BPF_REG_10), ALUI(BPF_ADD, BPF_REG_1, -24), MOVI(BPF_REG_2, 16),
        CALL(BPF_FUNC_get_current_comm), LD_MAP_FD(BPF_REG_1, f->connecting),
        MOV(BPF_REG_2, BPF_REG_10), ALUI(BPF_ADD, BPF_REG_2, -104));
    OPS(p, MOV(BPF_REG_3, BPF_REG_10), ALUI(BPF_ADD, BPF_REG_3, -40), MOVI(BPF_REG_4, BPF_ANY),
        CALL(BPF_FUNC_map_update_elem));
    jump_out(p, JUMPI(BPF_JA, 0, 0, 0));
    land_here(p, leaving);
    /* leaving SYN-SENT: the connect is over, its ports known */
    jump_out(p, INSN(BPF_JMP32 | BPF_JNE | BPF_K, BPF_REG_6, 0, 0, TCP_SYN_SENT_STATE));
    OPS(p, LD_MAP_FD(BPF_REG_1, f->connecting), MOV(BPF_REG_2, BPF_REG_10),
        ALUI(BPF_ADD, BPF_REG_2, -104), CALL(BPF_FUNC_map_lookup_elem));
    jump_out(p, JUMPI(BPF_JEQ, BPF_REG_0, 0, 0));
    OPS(p, LDX(BPF_DW, BPF_REG_1, BPF_REG_0, 0), STX(BPF_DW, BPF_REG_10, BPF_REG_1, -80),
        LDX(BPF_DW, BPF_REG_1, BPF_REG_0, 8), STX(BPF_DW, BPF_REG_10, BPF_REG_1, -8),
        LDX(BPF_DW, BPF_REG_1, BPF_REG_0, 16), STX(BPF_DW, BPF_REG_10, BPF_REG_1, -24),
        LDX(BPF_DW, BPF_REG_1, BPF_REG_0, 24), STX(BPF_DW, BPF_REG_10, BPF_REG_1, -16),
        LD_MAP_FD(BPF_REG_1, f->connecting), MOV(BPF_REG_2, BPF_REG_10),
        ALUI(BPF_ADD, BPF_REG_2, -104), CALL(BPF_FUNC_map_delete_elem),
        MOVI(BPF_REG_9, IPPROTO_TCP));
    flow_of_socket(p, o);
    emit_event(p, f);
    return finish(p);
}

typedef int (*assembler_t)(program_t *, const offsets_t *, uint32_t, const flowevents_t *);

static const struct {
    const char *tracepoint, *name;
    assembler_t assemble;
} HOOKS[FLOW_HOOKS] = {
    {"btf_trace_sock_send_length", "nw_flow_send", assemble_first_byte},
    {"btf_trace_sock_recv_length", "nw_flow_recv", assemble_first_byte},
    {"btf_trace_inet_sock_set_state", "nw_flow_connect", assemble_connect},
};

static int attach_all(flowevents_t *f, const btf_t *b, uint32_t netns) {
    offsets_t o;
    int error = find_offsets(b, &o);
    if (error != 0)
        return error;
    f->ring = bpf_create_map(BPF_MAP_TYPE_RINGBUF, 0, 0, RING_SIZE, "nw_flow_events");
    f->seen = bpf_create_map(BPF_MAP_TYPE_LRU_HASH, KEY_SIZE, 8, SEEN_ENTRIES, "nw_flows_seen");
    f->known = bpf_create_map(BPF_MAP_TYPE_LRU_HASH, 4, 8, KNOWN_ENTRIES, "nw_known_pids");
    f->connecting = bpf_create_map(BPF_MAP_TYPE_LRU_HASH, 8, 32, KNOWN_ENTRIES, "nw_connecting");
    if (f->ring < 0 || f->seen < 0 || f->known < 0 || f->connecting < 0)
        return errno;
    program_t p;
    for (size_t i = 0; i < FLOW_HOOKS && error == 0; i++) {
        error = HOOKS[i].assemble(&p, &o, netns, f);
        if (error == 0)
            error = bpf_tracing_link(b, BTF_KIND_TYPEDEF, HOOKS[i].tracepoint, BPF_TRACE_RAW_TP,
                                     p.insn, p.n, HOOKS[i].name, &f->links[i]);
    }
    if (error != 0)
        return error;
    long page = sysconf(_SC_PAGESIZE);
    void *consumer = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_SHARED, f->ring, 0);
    if (consumer == MAP_FAILED)
        return errno;
    f->consumer = consumer;
    /* the producer's page, then the data twice over (a record may wrap around) */
    void *producer = mmap(NULL, (size_t)page + 2 * RING_SIZE, PROT_READ, MAP_SHARED, f->ring, page);
    if (producer == MAP_FAILED)
        return errno;
    f->producer = producer;
    f->data = (const unsigned char *)producer + page;
    f->size = RING_SIZE;
    return 0;
}

int flowevents_open(flowevents_t *f, uint32_t netns) {
    memset(f, 0, sizeof *f);
    f->ring = f->seen = f->known = f->connecting = -1;
    for (size_t i = 0; i < FLOW_HOOKS; i++)
        f->links[i] = -1;
    btf_t b;
    int error = btf_load(&b);
    if (error == 0)
        error = attach_all(f, &b, netns);
    btf_free(&b);
    if (error != 0)
        flowevents_close(f);
    return error;
}

void flowevents_close(flowevents_t *f) {
    long page = sysconf(_SC_PAGESIZE);
    for (size_t i = 0; i < FLOW_HOOKS; i++)
        if (f->links[i] >= 0)
            close(f->links[i]);
    if (f->consumer != NULL)
        munmap(f->consumer, (size_t)page);
    if (f->producer != NULL)
        munmap((void *)f->producer, (size_t)page + 2 * f->size);
    if (f->ring >= 0)
        close(f->ring);
    if (f->seen >= 0)
        close(f->seen);
    if (f->known >= 0)
        close(f->known);
    if (f->connecting >= 0)
        close(f->connecting);
    memset(f, 0, sizeof *f);
    f->ring = f->seen = f->known = f->connecting = -1;
    for (size_t i = 0; i < FLOW_HOOKS; i++)
        f->links[i] = -1;
}

int flowevents_know(flowevents_t *f, uint32_t pid) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now); /* the clock of bpf_ktime_get_ns */
    uint64_t when = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_fd = (uint32_t)f->known;
    attr.key = (uint64_t)(uintptr_t)&pid;
    attr.value = (uint64_t)(uintptr_t)&when;
    attr.flags = BPF_ANY;
    return bpf_call(BPF_MAP_UPDATE_ELEM, &attr) < 0 ? errno : 0;
}

size_t flowevents_read(flowevents_t *f, flow_event_t *out, size_t max) {
    if (f->consumer == NULL)
        return 0;
    unsigned long consumed = __atomic_load_n(f->consumer, __ATOMIC_RELAXED);
    unsigned long produced = __atomic_load_n(f->producer, __ATOMIC_ACQUIRE);
    size_t count = 0;
    while (consumed < produced && count < max) {
        const unsigned char *header = f->data + (consumed & (f->size - 1));
        uint32_t length = __atomic_load_n((const uint32_t *)header, __ATOMIC_ACQUIRE);
        if (length & BPF_RINGBUF_BUSY_BIT)
            break; /* being written */
        int discarded = (length & BPF_RINGBUF_DISCARD_BIT) != 0;
        length &= ~(uint32_t)(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT);
        if (!discarded && length == sizeof(flow_event_t))
            memcpy(&out[count++], header + BPF_RINGBUF_HDR_SZ, sizeof(flow_event_t));
        consumed += (length + BPF_RINGBUF_HDR_SZ + 7) & ~7ul;
        __atomic_store_n(f->consumer, consumed, __ATOMIC_RELEASE);
    }
    return count;
}

_Static_assert(sizeof(flow_event_t) == 80, "the programs write 80 bytes an event");
