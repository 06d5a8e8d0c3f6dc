/* ConnectReader: the CONNECT layer's per-connection work in C (connect_queue.py does
   the same in Python, without a compiler): the first packets the NFQUEUE holds read and
   parsed, each one's socket found through sock_diag, and its process from BPF programs
   that note it by socket cookie: on inet_sock_set_state, the process that puts a TCP
   socket of the namespace into SYN-SENT (in connect(), before the SYN is sent) or
   LISTEN (the socket an incoming connection's first packet finds); on
   sock_send_length, the process that first sends on a UDP socket. The interpreter lock
   is held throughout: each step is a non-blocking system call of microseconds, and a
   verdict's send, which carries the released packet on through the stack, would
   otherwise hand the lock to the monitor's thread and wait to get it back. */
#include "_bpfprog.h"
#include "_native.h"

#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#define OWNER_ENTRIES 16384
#define TCP_SYN_SENT_STATE 2
#define TCP_LISTEN_STATE 10
#define BUFFER_SIZE (1 << 16)
#define NO_SOCKET (-1)

typedef struct {
    uint32_t pid, uid;
} owner_t;

typedef struct {
    PyObject_HEAD int queue; /* the bound queue's netlink socket (the caller's) */
    uint16_t number;
    int diag, owners, links[2], owners_error;
    unsigned char *buffer;
} ConnectReader;

/* A TCP or UDP packet's addresses and ports (protocol 0: anything else). */
typedef struct {
    int family, protocol;
    uint32_t source[4], destination[4];
    uint16_t sport, dport;
} addresses_t;

static uint16_t be16_at(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint32_t be32_at(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return ntohl(v);
}

/* As packet_headers.parse_headers: 0 and *a for TCP and UDP, -1 for anything else. */
static int parse_addresses(const unsigned char *p, size_t n, addresses_t *a) {
    memset(a, 0, sizeof *a);
    size_t header;
    int protocol;
    if (n < 1)
        return -1;
    if (p[0] >> 4 == 4) {
        header = (size_t)(p[0] & 0x0f) * 4;
        if (n < 20 || header < 20 || (be16_at(p + 6) & 0x1fff) != 0)
            return -1;
        protocol = p[9];
        a->family = AF_INET;
        memcpy(a->source, p + 12, 4);
        memcpy(a->destination, p + 16, 4);
    } else if (p[0] >> 4 == 6) {
        if (n < 40)
            return -1;
        protocol = p[6];
        header = 40;
        while (protocol == 0 || protocol == 43 || protocol == 60 || protocol == 44) {
            if (n < header + 8)
                return -1;
            if (protocol == 44) {
                if ((be16_at(p + header + 2) & 0xfff8) != 0)
                    return -1;
                protocol = p[header];
                header += 8;
            } else {
                size_t length = ((size_t)p[header + 1] + 1) * 8;
                protocol = p[header];
                header += length;
            }
        }
        a->family = AF_INET6;
        memcpy(a->source, p + 8, 16);
        memcpy(a->destination, p + 24, 16);
    } else {
        return -1;
    }
    if ((protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) || n < header + 4)
        return -1;
    a->protocol = protocol;
    a->sport = be16_at(p + header);
    a->dport = be16_at(p + header + 2);
    return 0;
}

/* The addresses as text (as Python's inet_ntop writes them). */
static void address_texts(const addresses_t *a, char *source, char *destination) {
    inet_ntop(a->family, a->source, source, ADDR_TEXT);
    inet_ntop(a->family, a->destination, destination, ADDR_TEXT);
}

/* The socket of a connection by its addresses (local first), as sock_diag's lookup
   finds it: 0 with inode, uid and cookie, or -1 when there is none. */
static int find_socket(int diag, int family, int protocol, const uint32_t *local,
                       uint16_t lport, const uint32_t *remote, uint16_t rport,
                       unsigned char *buffer, long *inode, long *uid, uint64_t *cookie) {
    struct {
        struct nlmsghdr header;
        struct inet_diag_req_v2 request;
    } message;
    memset(&message, 0, sizeof message);
    message.header.nlmsg_len = sizeof message;
    message.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    message.header.nlmsg_flags = NLM_F_REQUEST;
    message.request.sdiag_family = (uint8_t)family;
    message.request.sdiag_protocol = (uint8_t)protocol;
    message.request.idiag_states = 0xffffffff;
    if (protocol == IPPROTO_UDP) { /* the kernel looks UDP up as for a datagram received */
        const uint32_t *swap = local;
        uint16_t port = lport;
        local = remote, lport = rport, remote = swap, rport = port;
    }
    message.request.id.idiag_sport = htons(lport);
    message.request.id.idiag_dport = htons(rport);
    memcpy(message.request.id.idiag_src, local, family == AF_INET ? 4 : 16);
    memcpy(message.request.id.idiag_dst, remote, family == AF_INET ? 4 : 16);
    message.request.id.idiag_cookie[0] = message.request.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
    if (send(diag, &message, sizeof message, 0) < 0)
        return -1;
    /* sock_diag answers within the send: the reply is queued already */
    ssize_t size = recv(diag, buffer, BUFFER_SIZE, MSG_DONTWAIT);
    for (struct nlmsghdr *h = (struct nlmsghdr *)buffer; size > 0 && NLMSG_OK(h, size);
         h = NLMSG_NEXT(h, size)) {
        if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
            h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg)))
            continue;
        const struct inet_diag_msg *found = NLMSG_DATA(h);
        *inode = found->idiag_inode;
        *uid = found->idiag_uid;
        *cookie = (uint64_t)found->id.idiag_cookie[0] | (uint64_t)found->id.idiag_cookie[1] << 32;
        return 0;
    }
    return -1;
}

/* One queued packet as Python gets it (see receive's docstring). */
static PyObject *packet_item(ConnectReader *self, const unsigned char *attrs, size_t length) {
    const unsigned char *header = NULL, *payload = NULL;
    size_t payload_length = 0;
    uint32_t mark = 0, indev = 0, outdev = 0;
    long uid = -1;
    while (length >= NLA_HDRLEN) {
        const struct nlattr *attr = (const struct nlattr *)attrs;
        if (attr->nla_len < NLA_HDRLEN || attr->nla_len > length)
            break;
        const unsigned char *value = attrs + NLA_HDRLEN;
        size_t size = attr->nla_len - NLA_HDRLEN;
        switch (attr->nla_type & NLA_TYPE_MASK) {
        case NFQA_PACKET_HDR:
            header = size >= sizeof(struct nfqnl_msg_packet_hdr) ? value : NULL;
            break;
        case NFQA_MARK:
            mark = size >= 4 ? be32_at(value) : 0;
            break;
        case NFQA_IFINDEX_INDEV:
            indev = size >= 4 ? be32_at(value) : 0;
            break;
        case NFQA_IFINDEX_OUTDEV:
            outdev = size >= 4 ? be32_at(value) : 0;
            break;
        case NFQA_UID:
            uid = size >= 4 ? (long)be32_at(value) : -1;
            break;
        case NFQA_PAYLOAD:
            payload = value, payload_length = size;
            break;
        }
        size_t step = NLA_ALIGN(attr->nla_len);
        if (step >= length)
            break;
        attrs += step, length -= step;
    }
    if (header == NULL)
        return NULL;
    const struct nfqnl_msg_packet_hdr *h = (const struct nfqnl_msg_packet_hdr *)header;
    uint32_t packet_id = ntohl(h->packet_id);
    addresses_t a;
    long inode = NO_SOCKET, socket_uid = -1;
    uint32_t pid = 0;
    char source[ADDR_TEXT] = "", destination[ADDR_TEXT] = "";
    if (payload != NULL && parse_addresses(payload, payload_length, &a) == 0) {
        address_texts(&a, source, destination);
        int incoming = h->hook == NF_INET_LOCAL_IN; /* this host's end is the destination */
        const uint32_t *local = incoming ? a.destination : a.source;
        const uint32_t *remote = incoming ? a.source : a.destination;
        uint16_t lport = incoming ? a.dport : a.sport, rport = incoming ? a.sport : a.dport;
        uint64_t cookie = 0;
        if (find_socket(self->diag, a.family, a.protocol, local, lport, remote, rport,
                        self->buffer + BUFFER_SIZE, &inode, &socket_uid, &cookie) == 0 &&
            self->owners >= 0) {
            owner_t owner;
            if (map_call(BPF_MAP_LOOKUP_ELEM, self->owners, &cookie, &owner) == 0)
                pid = owner.pid;
        }
    } else {
        a.protocol = 0;
    }
    return Py_BuildValue("(IIIlIIisisilll)", packet_id, (unsigned)h->hook, mark, uid, indev,
                         outdev, a.protocol, source, (int)a.sport, destination, (int)a.dport,
                         inode, socket_uid, (long)pid);
}

static PyObject *reader_receive(ConnectReader *self, PyObject *unused) {
    if (self->diag < 0) {
        PyErr_SetString(PyExc_ValueError, "closed");
        return NULL;
    }
    PyObject *result = PyList_New(0);
    while (result != NULL) {
        ssize_t size = recv(self->queue, self->buffer, BUFFER_SIZE, MSG_DONTWAIT);
        if (size < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ENOBUFS) {
                Py_DECREF(result);
                return PyErr_SetFromErrno(PyExc_OSError);
            }
            break; /* ENOBUFS: the kernel dropped some (it accepts them: fail-open) */
        }
        for (struct nlmsghdr *h = (struct nlmsghdr *)self->buffer; NLMSG_OK(h, size);
             h = NLMSG_NEXT(h, size)) {
            /* NLMSG_ERROR: a verdict for a packet the kernel no longer holds */
            if (h->nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET) ||
                h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nfgenmsg)))
                continue;
            const unsigned char *attrs =
                (const unsigned char *)NLMSG_DATA(h) + NLMSG_ALIGN(sizeof(struct nfgenmsg));
            PyObject *item =
                packet_item(self, attrs, h->nlmsg_len - NLMSG_LENGTH(sizeof(struct nfgenmsg)));
            if (item == NULL && PyErr_Occurred()) {
                Py_CLEAR(result);
                break;
            }
            if (item != NULL && PyList_Append(result, item) < 0)
                Py_CLEAR(result);
            Py_XDECREF(item);
            if (result == NULL)
                break;
        }
    }
    return result;
}

static PyObject *reader_verdict(ConnectReader *self, PyObject *args) {
    unsigned int packet_id;
    int accept;
    long long mark = -1;
    if (!PyArg_ParseTuple(args, "Ip|L:verdict", &packet_id, &accept, &mark))
        return NULL;
    struct {
        struct nlmsghdr header;
        struct nfgenmsg gen;
        struct nlattr verdict_attr;
        struct nfqnl_msg_verdict_hdr verdict;
        struct nlattr mark_attr;
        uint32_t mark;
    } message;
    memset(&message, 0, sizeof message);
    size_t size = mark >= 0 ? sizeof message : offsetof(__typeof__(message), mark_attr);
    message.header.nlmsg_len = (uint32_t)size;
    message.header.nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT;
    message.header.nlmsg_flags = NLM_F_REQUEST;
    message.gen.nfgen_family = AF_UNSPEC;
    message.gen.res_id = htons(self->number);
    message.verdict_attr.nla_len = NLA_HDRLEN + sizeof message.verdict;
    message.verdict_attr.nla_type = NFQA_VERDICT_HDR;
    message.verdict.verdict = htonl(accept ? NF_ACCEPT : NF_DROP);
    message.verdict.id = htonl(packet_id);
    message.mark_attr.nla_len = NLA_HDRLEN + sizeof message.mark;
    message.mark_attr.nla_type = NFQA_MARK;
    message.mark = htonl((uint32_t)mark);
    if (send(self->queue, &message, size, 0) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* inet_sock_set_state (sk, old state, new state): a TCP socket of the namespace entering
   SYN-SENT, in connect(), or LISTEN, in listen() (an incoming connection's first packet
   finds its listener): map[cookie at fp-8] = (pid, uid) at fp-16. */
static int assemble_owner(program_t *p, long net, long ns_inum, long protocol, uint32_t netns,
                          int map) {
    enum { OUT, NAMED };
    memset(p, 0, sizeof *p);
    op(p, MOV(BPF_REG_6, BPF_REG_1));
    op(p, LDX(BPF_DW, BPF_REG_1, BPF_REG_6, 16));
    jump(p, JUMPI(BPF_JEQ, BPF_REG_1, TCP_SYN_SENT_STATE, 0), NAMED);
    jump(p, JUMPI(BPF_JNE, BPF_REG_1, TCP_LISTEN_STATE, 0), OUT);
    label(p, NAMED);
    socket_in_namespace(p, net, ns_inum, netns, OUT);
    op(p, LDX(BPF_H, BPF_REG_1, BPF_REG_7, (short)protocol));
    jump(p, JUMPI(BPF_JNE, BPF_REG_1, IPPROTO_TCP, 0), OUT);
    current_pid_uid(p, -16);
    op(p, MOV(BPF_REG_1, BPF_REG_7));
    op(p, CALL(BPF_FUNC_get_socket_cookie));
    op(p, STX(BPF_DW, BPF_REG_10, BPF_REG_0, -8));
    map_update(p, map, -8, -16, BPF_ANY);
    return finish_at(p, OUT);
}

/* sock_send_length (sk, length, flags): a UDP socket of the namespace sending for the
   first time: map[cookie at fp-8] = (pid, uid) at fp-16. The tracepoint fires as
   sendmsg returns, after the datagram went through netfilter into the queue: the
   CONNECT layer most often finds it there already, else it looks at open files. */
static int assemble_udp_sender(program_t *p, long net, long ns_inum, long protocol,
                               uint32_t netns, int map) {
    enum { OUT };
    memset(p, 0, sizeof *p);
    op(p, MOV(BPF_REG_6, BPF_REG_1));
    socket_in_namespace(p, net, ns_inum, netns, OUT);
    op(p, LDX(BPF_H, BPF_REG_1, BPF_REG_7, (short)protocol));
    jump(p, JUMPI(BPF_JNE, BPF_REG_1, IPPROTO_UDP, 0), OUT);
    op(p, MOV(BPF_REG_1, BPF_REG_7));
    op(p, CALL(BPF_FUNC_get_socket_cookie));
    op(p, STX(BPF_DW, BPF_REG_10, BPF_REG_0, -8));
    map_lookup(p, map, -8);
    jump(p, JUMPI(BPF_JNE, BPF_REG_0, 0, 0), OUT);
    current_pid_uid(p, -16);
    map_update(p, map, -8, -16, BPF_NOEXIST);
    return finish_at(p, OUT);
}

static int attach_owners(ConnectReader *self, uint32_t netns) {
    btf_t b;
    int error = btf_load(&b);
    long net = -1, ns_inum = -1, protocol = -1;
    if (error == 0) {
        net = btf_offset(&b, "sock_common", "skc_net");
        ns_inum = btf_netns_inum_offset(&b);
        protocol = btf_offset(&b, "sock", "sk_protocol");
        if (net < 0 || ns_inum < 0 || protocol < 0 || net > 0x7fff || ns_inum > 0x7fff ||
            protocol > 0x7fff)
            error = ENOENT;
    }
    if (error == 0) {
        self->owners = bpf_create_map(BPF_MAP_TYPE_LRU_HASH, 8, sizeof(owner_t), OWNER_ENTRIES,
                                      "nw_connect_own");
        if (self->owners < 0)
            error = errno;
    }
    program_t p;
    if (error == 0)
        error = assemble_owner(&p, net, ns_inum, protocol, netns, self->owners);
    if (error == 0)
        error = bpf_tracing_link(&b, BTF_KIND_TYPEDEF, "btf_trace_inet_sock_set_state",
                                 BPF_TRACE_RAW_TP, p.insn, p.n, "nw_connect_own",
                                 &self->links[0]);
    if (error == 0)
        error = assemble_udp_sender(&p, net, ns_inum, protocol, netns, self->owners);
    if (error == 0)
        error = bpf_tracing_link(&b, BTF_KIND_TYPEDEF, "btf_trace_sock_send_length",
                                 BPF_TRACE_RAW_TP, p.insn, p.n, "nw_udp_sender", &self->links[1]);
    btf_free(&b);
    return error;
}

static void detach(ConnectReader *self) {
    for (int i = 0; i < 2; i++) {
        if (self->links[i] >= 0)
            close(self->links[i]);
        self->links[i] = -1;
    }
    if (self->owners >= 0)
        close(self->owners);
    self->owners = -1;
}

static void release(ConnectReader *self) {
    detach(self);
    if (self->diag >= 0)
        close(self->diag);
    self->diag = -1;
    PyMem_Free(self->buffer);
    self->buffer = NULL;
}

static PyObject *reader_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"queue_fd", "queue_number", "netns", "owners", NULL};
    int queue, owners = 1;
    unsigned short number;
    unsigned int netns = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iH|Ip:ConnectReader", keywords, &queue,
                                     &number, &netns, &owners))
        return NULL;
    ConnectReader *self = (ConnectReader *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->queue = queue;
    self->number = number;
    self->links[0] = self->links[1] = self->owners = -1;
    self->buffer = PyMem_Malloc(2 * BUFFER_SIZE); /* the queue's datagrams, sock_diag's */
    self->diag = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (self->buffer == NULL || self->diag < 0) {
        int error = self->buffer == NULL ? ENOMEM : errno;
        release(self);
        return nw_or_oserror((PyObject *)self, error);
    }
    int error = 0;
    if (owners) {
        Py_BEGIN_ALLOW_THREADS
        error = attach_owners(self, netns);
        Py_END_ALLOW_THREADS
    }
    if (error != 0) { /* the processes are then found by their descriptors */
        detach(self);
        self->owners_error = error;
    }
    return (PyObject *)self;
}

static void reader_dealloc(ConnectReader *self) {
    release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *reader_close(ConnectReader *self, PyObject *unused) {
    release(self);
    Py_RETURN_NONE;
}

static PyObject *reader_connector(ConnectReader *self, PyObject *arg) {
    uint64_t cookie = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    owner_t owner;
    if (self->owners < 0 || map_call(BPF_MAP_LOOKUP_ELEM, self->owners, &cookie, &owner) < 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(II)", owner.pid, owner.uid);
}

static PyObject *reader_owners_error(ConnectReader *self, void *closure) {
    return PyLong_FromLong(self->owners_error);
}

PyObject *nw_packet_addresses(PyObject *module, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    addresses_t a;
    int parsed = parse_addresses(view.buf, (size_t)view.len, &a);
    PyBuffer_Release(&view);
    if (parsed < 0)
        Py_RETURN_NONE;
    char source[ADDR_TEXT], destination[ADDR_TEXT];
    address_texts(&a, source, destination);
    return Py_BuildValue("(isisi)", a.protocol, source, (int)a.sport, destination,
                         (int)a.dport);
}

static PyMethodDef reader_methods[] = {
    {"receive", (PyCFunction)reader_receive, METH_NOARGS,
     "receive() -> [(packet id, hook, mark, uid or -1, in interface, out interface, protocol "
     "(0: not TCP or UDP), source, source port, destination, destination port, socket inode "
     "(-1: no socket), socket uid, pid that connected it (0: unknown))]: every packet "
     "waiting."},
    {"verdict", (PyCFunction)reader_verdict, METH_VARARGS,
     "verdict(packet_id, accept, mark=-1): release (with a new mark unless -1) or drop."},
    {"connector", (PyCFunction)reader_connector, METH_O,
     "connector(cookie) -> (pid, uid) of the process that made the TCP socket with this "
     "cookie connect or listen, or None."},
    {"close", (PyCFunction)reader_close, METH_NOARGS, "close(): detach and close."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef reader_getset[] = {
    {"owners_error", (getter)reader_owners_error, NULL,
     "0, or the errno that kept the BPF program that names connecting processes out.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject nw_ConnectReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "netwarden.platform.linux._native.ConnectReader",
    .tp_basicsize = sizeof(ConnectReader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ConnectReader(queue_fd, queue_number, netns=0, owners=True): the CONNECT "
              "layer's queue read with each connection's socket and (owners: from BPF "
              "programs) the process that connected it.",
    .tp_new = reader_new,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_methods = reader_methods,
    .tp_getset = reader_getset,
};
