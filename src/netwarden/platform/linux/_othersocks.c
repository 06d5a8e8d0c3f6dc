/* OtherSockets: bytes each way of the sockets sock_diag cannot show here (raw IP
   sockets, ICMP "ping" sockets, AF_PACKET sockets), counted at the socket layer by a BPF
   program on the sock_send_length and sock_recv_length tracepoints (which fire for
   every family), in a map by socket inode with the process that first used it. The
   monitor reads the map each refresh, takes each socket's addresses from /proc/net
   (raw, raw6, icmp, icmp6, packet) and forgets the sockets that are gone once their
   final counts were read. TCP and UDP sockets are left to the other sources. */
#include "_bpfprog.h"
#include "_native.h"

#include <errno.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#define ENTRIES 4096
#define FIN_ENTRIES 65536
/* One socket as the program keeps it (64 bytes). */
typedef struct {
    uint32_t pid, uid;
    char comm[16];
    uint64_t sent, received, first_ns, last_ns;
    uint16_t family, type, protocol, unused;
    uint32_t unused2;
} other_socket_t;

typedef struct {
    long net, ns_inum, family, protocol, type, sk_socket, file, f_inode, i_ino, flags;
} offsets_t;

typedef struct {
    PyObject_HEAD int map, fins, links[3];
} OtherSockets;

enum { OUT, COUNT, INET, ADD };

#define ATOMIC_ADD(d, s, o) INSN(BPF_STX | BPF_ATOMIC | BPF_DW, d, s, o, BPF_ADD)

/* ctx: sk, the length sent or read (negative: an error), flags. `counter`: where in the
   value this tracepoint's bytes go. The key (the inode) at fp-16, the length at fp-8, a
   new value at fp-80. */
static int assemble(program_t *p, const offsets_t *o, uint32_t netns, int map, short counter) {
    memset(p, 0, sizeof *p);
    op(p, MOV(BPF_REG_6, BPF_REG_1));
    socket_in_namespace(p, o->net, o->ns_inum, netns, OUT);
    op(p, LDX(BPF_H, BPF_REG_8, BPF_REG_7, (short)o->family));
    op(p, LDX(BPF_H, BPF_REG_9, BPF_REG_7, (short)o->protocol));
    jump(p, JUMPI(BPF_JEQ, BPF_REG_8, AF_PACKET, 0), COUNT);
    jump(p, JUMPI(BPF_JEQ, BPF_REG_8, AF_INET, 0), INET);
    jump(p, JUMPI(BPF_JNE, BPF_REG_8, AF_INET6, 0), OUT);
    label(p, INET); /* TCP and UDP are counted elsewhere */
    jump(p, JUMPI(BPF_JEQ, BPF_REG_9, IPPROTO_TCP, 0), OUT);
    jump(p, JUMPI(BPF_JEQ, BPF_REG_9, IPPROTO_UDP, 0), OUT);
    label(p, COUNT);
    op(p, LDX(BPF_DW, BPF_REG_1, BPF_REG_6, 8));
    jump(p, JUMPI(BPF_JSLE, BPF_REG_1, 0, 0), OUT);
    op(p, STX(BPF_DW, BPF_REG_10, BPF_REG_1, -8));
    /* the key: sk->sk_socket->file->f_inode->i_ino (NULL along the way reads 0) */
    op(p, LDX(BPF_DW, BPF_REG_3, BPF_REG_7, (short)o->sk_socket));
    op(p, LDX(BPF_DW, BPF_REG_3, BPF_REG_3, (short)o->file));
    op(p, LDX(BPF_DW, BPF_REG_3, BPF_REG_3, (short)o->f_inode));
    op(p, LDX(BPF_DW, BPF_REG_3, BPF_REG_3, (short)o->i_ino));
    jump(p, JUMPI(BPF_JEQ, BPF_REG_3, 0, 0), OUT);
    op(p, STX(BPF_DW, BPF_REG_10, BPF_REG_3, -16));
    map_lookup(p, map, -16);
    jump(p, JUMPI(BPF_JNE, BPF_REG_0, 0, 0), ADD);
    /* first seen: the process, its name and uid, the socket's kind */
    op(p, MOVI(BPF_REG_1, 0));
    for (short at = -80; at < -16; at += 8)
        op(p, STX(BPF_DW, BPF_REG_10, BPF_REG_1, at));
    current_pid_uid(p, -80);
    op(p, MOV(BPF_REG_1, BPF_REG_10));
    op(p, ALUI(BPF_ADD, BPF_REG_1, -72));
    op(p, MOVI(BPF_REG_2, 16));
    op(p, CALL(BPF_FUNC_get_current_comm));
    op(p, CALL(BPF_FUNC_ktime_get_ns));
    op(p, STX(BPF_DW, BPF_REG_10, BPF_REG_0, -40));
    op(p, STX(BPF_H, BPF_REG_10, BPF_REG_8, -24));
    op(p, LDX(BPF_H, BPF_REG_1, BPF_REG_7, (short)o->type));
    op(p, STX(BPF_H, BPF_REG_10, BPF_REG_1, -22));
    op(p, STX(BPF_H, BPF_REG_10, BPF_REG_9, -20));
    map_update(p, map, -16, -80, BPF_NOEXIST);
    map_lookup(p, map, -16);
    jump(p, JUMPI(BPF_JEQ, BPF_REG_0, 0, 0), OUT);
    label(p, ADD);
    op(p, MOV(BPF_REG_9, BPF_REG_0));
    op(p, LDX(BPF_DW, BPF_REG_1, BPF_REG_10, -8));
    op(p, ATOMIC_ADD(BPF_REG_9, BPF_REG_1, counter));
    op(p, CALL(BPF_FUNC_ktime_get_ns));
    op(p, STX(BPF_DW, BPF_REG_9, BPF_REG_0, (short)offsetof(other_socket_t, last_ns)));
    return finish_at(p, OUT);
}

#define SOCK_DONE_BIT 1 /* enum sock_flags: set when the peer's FIN came (tcp_fin) */
#define TCP_CLOSE_STATE 7

/* inet_sock_set_state (sk, old state, new state): as a TCP socket of the namespace
   closes, whether its peer's FIN came (which its bytes_received then counts), by its
   cookie, for the monitor to read with the socket's destroy message. */
static int assemble_fins(program_t *p, const offsets_t *o, uint32_t netns, int map) {
    memset(p, 0, sizeof *p);
    op(p, MOV(BPF_REG_6, BPF_REG_1));
    op(p, LDX(BPF_DW, BPF_REG_1, BPF_REG_6, 16));
    jump(p, JUMPI(BPF_JNE, BPF_REG_1, TCP_CLOSE_STATE, 0), OUT);
    socket_in_namespace(p, o->net, o->ns_inum, netns, OUT);
    op(p, LDX(BPF_H, BPF_REG_1, BPF_REG_7, (short)o->protocol));
    jump(p, JUMPI(BPF_JNE, BPF_REG_1, IPPROTO_TCP, 0), OUT);
    op(p, LDX(BPF_DW, BPF_REG_8, BPF_REG_7, (short)o->flags));
    op(p, ALUI(BPF_RSH, BPF_REG_8, SOCK_DONE_BIT));
    op(p, ALUI(BPF_AND, BPF_REG_8, 1));
    op(p, STX(BPF_DW, BPF_REG_10, BPF_REG_8, -8));
    op(p, MOV(BPF_REG_1, BPF_REG_7));
    op(p, CALL(BPF_FUNC_get_socket_cookie));
    op(p, STX(BPF_DW, BPF_REG_10, BPF_REG_0, -16));
    map_update(p, map, -16, -8, BPF_ANY);
    return finish_at(p, OUT);
}

static int find_offsets(const btf_t *b, offsets_t *o) {
    o->net = btf_offset(b, "sock_common", "skc_net");
    o->ns_inum = btf_netns_inum_offset(b);
    o->family = btf_offset(b, "sock_common", "skc_family");
    o->protocol = btf_offset(b, "sock", "sk_protocol");
    o->type = btf_offset(b, "sock", "sk_type");
    o->sk_socket = btf_offset(b, "sock", "sk_socket");
    o->file = btf_offset(b, "socket", "file");
    o->f_inode = btf_offset(b, "file", "f_inode");
    o->i_ino = btf_offset(b, "inode", "i_ino");
    o->flags = btf_offset(b, "sock_common", "skc_flags"); /* sk_flags */
    const long *all = &o->net;
    for (size_t i = 0; i < sizeof *o / sizeof(long); i++)
        if (all[i] < 0 || all[i] > 0x7fff)
            return ENOENT;
    return 0;
}

static const char *const TRACEPOINTS[2] = {"btf_trace_sock_send_length",
                                           "btf_trace_sock_recv_length"};
static const short COUNTERS[2] = {offsetof(other_socket_t, sent),
                                  offsetof(other_socket_t, received)};

static int attach(OtherSockets *self, uint32_t netns) {
    btf_t b;
    int error = btf_load(&b);
    offsets_t o;
    if (error == 0)
        error = find_offsets(&b, &o);
    if (error == 0) {
        self->map = bpf_create_map(BPF_MAP_TYPE_LRU_HASH, 8, sizeof(other_socket_t), ENTRIES,
                                   "nw_other_socks");
        self->fins = bpf_create_map(BPF_MAP_TYPE_LRU_HASH, 8, 8, FIN_ENTRIES, "nw_tcp_fins");
        if (self->map < 0 || self->fins < 0)
            error = errno;
    }
    program_t p;
    for (int i = 0; i < 2 && error == 0; i++) {
        error = assemble(&p, &o, netns, self->map, COUNTERS[i]);
        if (error == 0)
            error = bpf_tracing_link(&b, BTF_KIND_TYPEDEF, TRACEPOINTS[i], BPF_TRACE_RAW_TP,
                                     p.insn, p.n, i ? "nw_other_recv" : "nw_other_send",
                                     &self->links[i]);
    }
    if (error == 0)
        error = assemble_fins(&p, &o, netns, self->fins);
    if (error == 0)
        error = bpf_tracing_link(&b, BTF_KIND_TYPEDEF, "btf_trace_inet_sock_set_state",
                                 BPF_TRACE_RAW_TP, p.insn, p.n, "nw_tcp_fins", &self->links[2]);
    btf_free(&b);
    return error;
}

static void release(OtherSockets *self) {
    for (int i = 0; i < 3; i++) {
        if (self->links[i] >= 0)
            close(self->links[i]);
        self->links[i] = -1;
    }
    if (self->map >= 0)
        close(self->map);
    if (self->fins >= 0)
        close(self->fins);
    self->map = self->fins = -1;
}

static PyObject *others_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"netns", NULL};
    unsigned int netns = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|I:OtherSockets", keywords, &netns))
        return NULL;
    OtherSockets *self = (OtherSockets *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->map = self->fins = self->links[0] = self->links[1] = self->links[2] = -1;
    int error;
    Py_BEGIN_ALLOW_THREADS
    error = attach(self, netns);
    Py_END_ALLOW_THREADS
    if (error != 0)
        release(self);
    return nw_or_oserror((PyObject *)self, error);
}

static void others_dealloc(OtherSockets *self) {
    release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}


/* (inode, pid, uid, name, family, type, protocol, sent, received, first ns, last ns) */
static PyObject *others_read(OtherSockets *self, PyObject *unused) {
    if (self->map < 0) {
        PyErr_SetString(PyExc_ValueError, "closed");
        return NULL;
    }
    PyObject *result = PyList_New(0);
    uint64_t key = 0, next;
    int first = 1;
    while (result != NULL) {
        union bpf_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.map_fd = (uint32_t)self->map;
        attr.key = first ? 0 : (uint64_t)(uintptr_t)&key;
        attr.next_key = (uint64_t)(uintptr_t)&next;
        if (bpf_call(BPF_MAP_GET_NEXT_KEY, &attr) < 0)
            break; /* ENOENT: the end */
        first = 0;
        key = next;
        other_socket_t value;
        if (map_call(BPF_MAP_LOOKUP_ELEM, self->map, &key, &value) < 0)
            continue; /* evicted meanwhile */
        char name[sizeof value.comm + 1];
        memcpy(name, value.comm, sizeof value.comm);
        name[sizeof value.comm] = 0;
        PyObject *item = Py_BuildValue(
            "(KIINIIIKKKK)", (unsigned long long)key, value.pid, value.uid,
            PyUnicode_DecodeUTF8(name, (Py_ssize_t)strlen(name), "replace"),
            (unsigned)value.family, (unsigned)value.type, (unsigned)value.protocol,
            (unsigned long long)value.sent, (unsigned long long)value.received,
            (unsigned long long)value.first_ns, (unsigned long long)value.last_ns);
        if (item == NULL || PyList_Append(result, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(result);
        } else {
            Py_DECREF(item);
        }
    }
    return result;
}

static PyObject *others_forget(OtherSockets *self, PyObject *inodes) {
    PyObject *iterator = PyObject_GetIter(inodes);
    if (iterator == NULL)
        return NULL;
    PyObject *item;
    while ((item = PyIter_Next(iterator)) != NULL) {
        uint64_t key = PyLong_AsUnsignedLongLong(item);
        Py_DECREF(item);
        if (PyErr_Occurred())
            break;
        if (self->map >= 0)
            map_call(BPF_MAP_DELETE_ELEM, self->map, &key, NULL);
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *others_peer_fin(OtherSockets *self, PyObject *arg) {
    uint64_t key = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    uint64_t fin;
    if (self->fins < 0 || map_call(BPF_MAP_LOOKUP_ELEM, self->fins, &key, &fin) < 0)
        Py_RETURN_NONE;
    map_call(BPF_MAP_DELETE_ELEM, self->fins, &key, NULL);
    return PyBool_FromLong(fin != 0);
}

static PyObject *others_close(OtherSockets *self, PyObject *unused) {
    release(self);
    Py_RETURN_NONE;
}

static PyMethodDef others_methods[] = {
    {"read", (PyCFunction)others_read, METH_NOARGS,
     "read() -> [(inode, pid, uid, name, family, type, protocol, bytes sent, bytes read, "
     "first and last use in CLOCK_MONOTONIC ns)]: every socket counted so far."},
    {"forget", (PyCFunction)others_forget, METH_O,
     "forget(inodes): drop these sockets (gone, their final counts read)."},
    {"peer_fin", (PyCFunction)others_peer_fin, METH_O,
     "peer_fin(cookie) -> whether the TCP socket with this cookie had its peer's FIN when "
     "it closed (None: not seen closing); asked once per socket."},
    {"close", (PyCFunction)others_close, METH_NOARGS, "close(): detaches the programs."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject nw_OtherSocketsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "netwarden.platform.linux._native.OtherSockets",
    .tp_basicsize = sizeof(OtherSockets),
    .tp_dealloc = (destructor)others_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "OtherSockets(netns=0): bytes sent and read on raw IP, ICMP ping and AF_PACKET "
              "sockets of the network namespace with that inode (0: all), by socket inode, "
              "with the process that first used each; from BPF programs on the "
              "sock_send_length and sock_recv_length tracepoints. Needs CAP_BPF and BTF.",
    .tp_methods = others_methods,
    .tp_new = others_new,
};
