/* TcpTracker: the TCP sockets of a namespace from the BPF tcp iterator (_tcptrack.c),
   compared in C with the last reading so that Python sees only what changed. */
#include "_native.h"
#include "_tcptrack.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define KEY_SIZE 40

typedef struct {
    unsigned char key[KEY_SIZE]; /* family, ports, addresses: one flow key */
    uint64_t sent, received, inode, cgroup, cookie;
    uint32_t uid;
    uint8_t family, state;
} tracked_t;

typedef struct {
    tracked_t *entries;
    size_t count;
    uint32_t *slots; /* open addressing over entries; UINT32_MAX is empty */
    size_t mask;
} track_table_t;

typedef struct {
    PyObject_HEAD tcptrack_t track;
    track_table_t last;
} TcpTracker;

static uint64_t key_hash(const unsigned char *key) {
    uint64_t h = 0, word;
    for (int i = 0; i < KEY_SIZE; i += 8) {
        memcpy(&word, key + i, 8);
        h = (h ^ word) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
    }
    return h;
}

/* A connection being torn down after a reset: in state CLOSE, its peer's port already
   0 but not its address (not a flow: its last counts came with its destroy event). */
static int torn_down(const tcp_socket_t *s) {
    static const uint8_t none[16];
    if (s->state != 7 || s->remote_port != 0)
        return 0;
    if (s->family == AF_INET)
        return s->v4_remote != 0;
    return memcmp(s->v6_remote, none, 16) != 0;
}

static void tracked_from(const tcp_socket_t *s, tracked_t *t) {
    memset(t->key, 0, KEY_SIZE);
    memcpy(t->key, &s->family, 2);
    memcpy(t->key + 2, &s->port, 2);
    memcpy(t->key + 4, &s->remote_port, 2);
    if (s->family == AF_INET) {
        memcpy(t->key + 8, &s->v4_local, 4);
        memcpy(t->key + 12, &s->v4_remote, 4);
    } else {
        memcpy(t->key + 8, s->v6_local, 16);
        memcpy(t->key + 24, s->v6_remote, 16);
    }
    t->family = (uint8_t)s->family;
    t->state = s->state;
    t->uid = s->uid;
    t->inode = s->inode;
    t->cgroup = s->cgroup;
    t->cookie = s->cookie;
    t->sent = s->sent; /* transmitted once, acknowledged or not (see _tcptrack.c) */
    t->received = s->received;
    if (t->received && (t->state == 8 || t->state == 9 || t->state == 11))
        t->received -= 1; /* the peer's FIN, as parse_message() */
}

/* The slot of key in the table: where it is, or the empty slot where it would go. */
static size_t find_slot(const track_table_t *t, const unsigned char *key) {
    size_t at = key_hash(key) & t->mask;
    while (t->slots[at] != UINT32_MAX && memcmp(t->entries[t->slots[at]].key, key, KEY_SIZE))
        at = (at + 1) & t->mask;
    return at;
}

static const tracked_t *lookup(const track_table_t *t, const unsigned char *key) {
    if (t->slots == NULL)
        return NULL;
    size_t at = find_slot(t, key);
    return t->slots[at] == UINT32_MAX ? NULL : &t->entries[t->slots[at]];
}

/* Builds a table from sockets; sockets sharing a key are merged as the flow table
   merges them (largest counters, state and uid of the last, inode of the first). */
static int build_table(const tcp_socket_t *sockets, size_t count, track_table_t *t) {
    size_t capacity = 16;
    while (capacity < count * 2)
        capacity *= 2;
    t->entries = malloc((count + 1) * sizeof *t->entries);
    t->slots = malloc(capacity * sizeof *t->slots);
    t->count = 0;
    t->mask = capacity - 1;
    if (t->entries == NULL || t->slots == NULL)
        return -1;
    memset(t->slots, 0xff, capacity * sizeof *t->slots);
    for (size_t i = 0; i < count; i++) {
        if (torn_down(&sockets[i]))
            continue;
        tracked_t entry;
        tracked_from(&sockets[i], &entry);
        size_t at = find_slot(t, entry.key);
        if (t->slots[at] == UINT32_MAX) {
            t->slots[at] = (uint32_t)t->count;
            t->entries[t->count++] = entry;
            continue;
        }
        tracked_t *known = &t->entries[t->slots[at]];
        known->sent = entry.sent > known->sent ? entry.sent : known->sent;
        known->received = entry.received > known->received ? entry.received : known->received;
        known->state = entry.state;
        known->uid = entry.uid;
        if (known->cgroup == 0)
            known->cgroup = entry.cgroup;
    }
    return 0;
}

static void free_table(track_table_t *t) {
    free(t->entries);
    free(t->slots);
    t->entries = NULL;
    t->slots = NULL;
    t->count = 0;
}

static void key_text(const tracked_t *e, char *local, char *remote, unsigned *port,
                     unsigned *remote_port) {
    uint16_t p, rp;
    memcpy(&p, e->key + 2, 2);
    memcpy(&rp, e->key + 4, 2);
    *port = p;
    *remote_port = ntohs(rp);
    nw_address_text(e->family, (const uint32_t *)(e->key + 8),  local);
    nw_address_text(e->family,
                 (const uint32_t *)(e->key + (e->family == AF_INET ? 12 : 24)), remote);
}

static PyObject *changed_tuple(const tracked_t *e) {
    char local[ADDR_TEXT], remote[ADDR_TEXT];
    unsigned port, remote_port;
    key_text(e, local, remote, &port, &remote_port);
    return Py_BuildValue("(iisIsIIKKKKK)", e->family, e->state, local, port, remote,
                         remote_port, e->uid, (unsigned long long)e->inode,
                         (unsigned long long)e->cookie,
                         (unsigned long long)e->cgroup, (unsigned long long)e->sent,
                         (unsigned long long)e->received);
}

static PyObject *vanished_tuple(const tracked_t *e) {
    char local[ADDR_TEXT], remote[ADDR_TEXT];
    unsigned port, remote_port;
    key_text(e, local, remote, &port, &remote_port);
    return Py_BuildValue("(isIsI)", e->family, local, port, remote, remote_port);
}

static int same_signature(const tracked_t *a, const tracked_t *b) {
    return a->state == b->state && a->sent == b->sent && a->received == b->received &&
           a->inode == b->inode && a->uid == b->uid && a->cookie == b->cookie;
}

static PyObject *tracker_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"netns_fd", NULL};
    int netns_fd = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|i:TcpTracker", keywords, &netns_fd))
        return NULL;
    TcpTracker *self = (TcpTracker *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    memset(&self->last, 0, sizeof self->last);
    self->track.link = self->track.netns = -1;
    int error;
    Py_BEGIN_ALLOW_THREADS
    error = tcptrack_open(&self->track, netns_fd);
    Py_END_ALLOW_THREADS
    return nw_or_oserror((PyObject *)self, error);
}

static void tracker_dealloc(TcpTracker *self) {
    tcptrack_close(&self->track);
    free_table(&self->last);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* refresh() -> (changed, vanished) since the last call (the first: every socket). */
static PyObject *tracker_refresh(TcpTracker *self, PyObject *unused) {
    tcp_socket_t *sockets;
    size_t count;
    int error;
    track_table_t now = {0};
    Py_BEGIN_ALLOW_THREADS
    error = tcptrack_read(&self->track, &sockets, &count);
    if (error == 0) {
        if (build_table(sockets, count, &now) < 0)
            error = ENOMEM;
        free(sockets);
    }
    Py_END_ALLOW_THREADS
    if (error != 0) {
        free_table(&now);
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *changed = PyList_New(0), *vanished = PyList_New(0), *result = NULL;
    if (changed == NULL || vanished == NULL)
        goto done;
    for (size_t i = 0; i < now.count; i++) {
        const tracked_t *before = lookup(&self->last, now.entries[i].key);
        if (before != NULL && same_signature(before, &now.entries[i]))
            continue;
        PyObject *item = changed_tuple(&now.entries[i]);
        if (item == NULL || PyList_Append(changed, item) < 0) {
            Py_XDECREF(item);
            goto done;
        }
        Py_DECREF(item);
    }
    for (size_t i = 0; i < self->last.count; i++) {
        if (lookup(&now, self->last.entries[i].key) != NULL)
            continue;
        PyObject *item = vanished_tuple(&self->last.entries[i]);
        if (item == NULL || PyList_Append(vanished, item) < 0) {
            Py_XDECREF(item);
            goto done;
        }
        Py_DECREF(item);
    }
    free_table(&self->last);
    self->last = now;
    now.entries = NULL;
    now.slots = NULL;
    result = PyTuple_Pack(2, changed, vanished);
done:
    free_table(&now);
    Py_XDECREF(changed);
    Py_XDECREF(vanished);
    return result;
}

static PyObject *tracker_forget(TcpTracker *self, PyObject *unused) {
    free_table(&self->last);
    Py_RETURN_NONE;
}

static PyMethodDef tracker_methods[] = {
    {"forget", (PyCFunction)tracker_forget, METH_NOARGS,
     "forget(): the next refresh() reports every socket again."},
    {"refresh", (PyCFunction)tracker_refresh, METH_NOARGS,
     "refresh() -> (changed, vanished): TCP sockets new or changed since the last call, "
     "as TcpBatch.records() tuples, and flows whose sockets are gone, as (family, local, "
     "local port, remote, remote port). The first call reports every socket."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject nw_TcpTrackerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "netwarden.platform.linux._native.TcpTracker",
    .tp_basicsize = sizeof(TcpTracker),
    .tp_dealloc = (destructor)tracker_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "TcpTracker(netns_fd=-1): the TCP sockets of a network namespace (that of "
              "the file descriptor, else the calling thread's), read by a BPF tcp "
              "iterator, reported as changes. Needs CAP_BPF and BTF.",
    .tp_methods = tracker_methods,
    .tp_new = tracker_new,
};
