/* The sock_diag side of the C module: one TCP dump parsed into C records (TcpBatch),
   merged and sorted into the rows of a one-shot listing, written as JSON into
   templates with holes that Python makes from Flow.to_json. */
#include "_native.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define ALL_BUT_MINISOCKS (0xFFFFFFFFu & ~(1u << 6) & ~(1u << 12))
#define TCP_INFO_BYTES_OFFSET 120 /* tcpi_bytes_acked, then tcpi_bytes_received */
#define TCP_INFO_SENT_OFFSET 200  /* tcpi_bytes_sent, then tcpi_bytes_retrans */
#define CGROUP_ID_ATTR 21         /* INET_DIAG_CGROUP_ID, missing from older headers */

/* Owner groups of a row, as write() looks its template up: a pid, or one of these. */
#define NO_OWNER (-1) /* the socket has a file, but no process was found holding it */
#define NO_FILE (-2)  /* the socket has no file (inode 0) */

typedef struct {
    char local[ADDR_TEXT], remote[ADDR_TEXT];
    uint64_t cookie, cgroup, sent, received;
    uint32_t uid, inode;
    uint16_t sport, dport;
    uint8_t family, state;
} record_t;

/* One row of the listing: the records sharing one key merged as the Python flow table
   merges them (attribution from the first record that has an owner, uid and state
   from the last, the largest counters). */
typedef struct {
    const record_t *first;
    long group;
    uint64_t cgroup, sent, received;
    uint32_t uid;
    uint8_t state;
} row_t;

typedef struct {
    PyObject_HEAD record_t *records;
    Py_ssize_t count, capacity;
    row_t *rows;
    Py_ssize_t row_count;
} TcpBatch;

/* ---- sock_diag ------------------------------------------------------------------ */

void nw_address_text(int family, const uint32_t *raw, char *out) {
    if (family == AF_INET) {
        inet_ntop(AF_INET, raw, out, ADDR_TEXT);
        return;
    }
    inet_ntop(AF_INET6, raw, out, ADDR_TEXT);
    if (strncmp(out, "::ffff:", 7) == 0 && strchr(out, '.') != NULL)
        memmove(out, out + 7, strlen(out + 7) + 1);
}

static uint64_t u64_at(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}


/* Fills r from one inet_diag message: 1, or 0 for a family we do not handle. The
   peer's FIN is taken out of bytes_received in the states that follow it; for a
   destroyed socket the reader decides (sockdiag.py: whether the FIN came).
   *protocol is what the message says (0 when it does not). */
static int parse_inet(const struct nlmsghdr *h, record_t *r, int destroyed, int *protocol,
                      int *has_info) {
    size_t size = h->nlmsg_len - NLMSG_HDRLEN;
    const struct inet_diag_msg *m = NLMSG_DATA(h);
    if (size < sizeof *m || (m->idiag_family != AF_INET && m->idiag_family != AF_INET6))
        return 0;
    const unsigned char *base = (const unsigned char *)m, *info = NULL;
    size_t offset = sizeof *m, info_len = 0;
    r->cgroup = 0;
    *protocol = 0;
    while (offset + 4 <= size) {
        const struct nlattr *a = (const void *)(base + offset);
        size_t len = a->nla_len;
        if (len < 4)
            break;
        size_t avail = size - offset < len ? size - offset : len;
        int kind = a->nla_type & NLA_TYPE_MASK;
        if (kind == INET_DIAG_INFO) {
            info = base + offset + 4;
            info_len = avail - 4;
        } else if (kind == CGROUP_ID_ATTR && avail >= 12) {
            r->cgroup = u64_at(base + offset + 4);
        } else if (kind == INET_DIAG_PROTOCOL && avail >= 5) {
            *protocol = base[offset + 4];
        }
        offset += (len + 3) & ~(size_t)3;
    }
    *has_info = info != NULL;
    r->family = m->idiag_family;
    r->state = m->idiag_state;
    r->sport = ntohs(m->id.idiag_sport);
    r->dport = ntohs(m->id.idiag_dport);
    r->uid = m->idiag_uid;
    r->inode = m->idiag_inode;
    r->cookie = (uint64_t)m->id.idiag_cookie[0] | (uint64_t)m->id.idiag_cookie[1] << 32;
    nw_address_text(r->family, m->id.idiag_src, r->local);
    nw_address_text(r->family, m->id.idiag_dst, r->remote);
    r->sent = r->received = 0;
    if (info_len >= TCP_INFO_BYTES_OFFSET + 16 && *protocol != IPPROTO_UDP) {
        uint64_t acked = u64_at(info + TCP_INFO_BYTES_OFFSET);
        r->received = u64_at(info + TCP_INFO_BYTES_OFFSET + 8);
        r->sent = acked;
        if (info_len >= TCP_INFO_SENT_OFFSET + 16) /* payload transmitted once */
            r->sent = u64_at(info + TCP_INFO_SENT_OFFSET) - u64_at(info + TCP_INFO_SENT_OFFSET + 8);
        /* the peer's FIN counts one in bytes_received (CLOSE_WAIT, LAST_ACK, CLOSING) */
        if (r->received && (r->state == 8 || r->state == 9 || r->state == 11))
            r->received -= 1;
    }
    return 1;
}

/* 1: a record; 0: not one we report (another family, a time-wait or request
   mini-socket: no tcp_info, and time-wait reports its sub-state; a connection being
   torn down after a reset, in state CLOSE with its peer's port already 0). A bound but
   inactive socket comes without tcp_info too, in state CLOSE: counters 0. */
static int parse_message(const struct nlmsghdr *h, record_t *r) {
    int protocol, has_info;
    if (!parse_inet(h, r, 0, &protocol, &has_info))
        return 0;
    if (r->state == 7 && r->dport == 0 && strcmp(r->remote, "0.0.0.0") != 0 &&
        strcmp(r->remote, "::") != 0)
        return 0;
    return has_info || r->state == 7;
}

/* read_destroyed(fd) -> [(protocol, family, state, local, port, remote, remote port, uid,
   inode, cookie, cgroup, sent, received)]: every destroy broadcast already queued on
   the non-blocking sock_diag socket fd (dropped ones, ENOBUFS, are skipped). */
PyObject *nw_read_destroyed(PyObject *self, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return NULL;
    static unsigned char buffer[1 << 16];
    PyObject *result = PyList_New(0);
    while (result != NULL) {
        ssize_t n = recv(fd, buffer, sizeof buffer, MSG_DONTWAIT);
        if (n < 0 && (errno == ENOBUFS || errno == EINTR))
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n < 0) {
            Py_DECREF(result);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (n == 0)
            break;
        /* int, not size_t: NLMSG_NEXT may step past the end by the alignment of an
           unaligned last message, which must end the walk, not wrap around. */
        int left = (int)n;
        for (const struct nlmsghdr *h = (const void *)buffer; NLMSG_OK(h, left);
             h = NLMSG_NEXT(h, left)) {
            record_t r;
            int protocol, has_info;
            if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || !parse_inet(h, &r, 1, &protocol, &has_info))
                continue;
            PyObject *item = Py_BuildValue(
                "(iiisisiIIKKKK)", protocol, r.family, r.state, r.local, r.sport, r.remote,
                r.dport, r.uid, r.inode, (unsigned long long)r.cookie,
                (unsigned long long)r.cgroup, (unsigned long long)r.sent,
                (unsigned long long)r.received);
            if (item == NULL || PyList_Append(result, item) < 0) {
                Py_XDECREF(item);
                Py_CLEAR(result);
                break;
            }
            Py_DECREF(item);
        }
    }
    return result;
}

static int grow(TcpBatch *b) {
    if (b->count < b->capacity)
        return 0;
    Py_ssize_t capacity = b->capacity ? b->capacity * 2 : 1024;
    record_t *records = realloc(b->records, capacity * sizeof *records);
    if (records == NULL)
        return -1;
    b->records = records;
    b->capacity = capacity;
    return 0;
}

/* Each dump its own sequence number: messages of an earlier dump that ended early (an
   error, ENOMEM) and are still queued on the socket are told apart and skipped. */
static uint32_t next_seq(void) {
    static uint32_t seq = 1000;
    return __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED);
}

/* 0 when done; an errno value on failure. Runs without the GIL. */
static int dump_family(int fd, int family, TcpBatch *b, unsigned char *buffer, size_t size) {
    struct {
        struct nlmsghdr h;
        struct inet_diag_req_v2 r;
    } req;
    memset(&req, 0, sizeof req);
    req.h.nlmsg_len = sizeof req;
    req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    uint32_t seq = next_seq();
    req.h.nlmsg_seq = seq;
    req.r.sdiag_family = family;
    req.r.sdiag_protocol = IPPROTO_TCP;
    req.r.idiag_ext = 1 << (INET_DIAG_INFO - 1);
    req.r.idiag_states = ALL_BUT_MINISOCKS;
    if (send(fd, &req, sizeof req, 0) < 0)
        return errno;
    for (;;) {
        ssize_t n = recv(fd, buffer, size, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (n == 0)
            return EPIPE;
        int left = (int)n;
        for (struct nlmsghdr *h = (void *)buffer; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_seq != seq)
                continue; /* left over from an earlier dump */
            if (h->nlmsg_type == NLMSG_DONE)
                return 0;
            if (h->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = NLMSG_DATA(h);
                if (h->nlmsg_len >= NLMSG_LENGTH(sizeof *e) && e->error != 0)
                    return -e->error;
                continue;
            }
            if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY)
                continue;
            if (grow(b) < 0)
                return ENOMEM;
            b->count += parse_message(h, &b->records[b->count]);
        }
    }
}


PyObject *nw_dump_tcp(PyObject *self, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return NULL;
    TcpBatch *b = PyObject_New(TcpBatch, &nw_TcpBatchType);
    if (b == NULL)
        return NULL;
    b->records = NULL;
    b->rows = NULL;
    b->count = b->capacity = b->row_count = 0;
    size_t size = 1 << 20;
    unsigned char *buffer = malloc(size);
    if (buffer == NULL) {
        Py_DECREF(b);
        return PyErr_NoMemory();
    }
    int error;
    Py_BEGIN_ALLOW_THREADS
    error = dump_family(fd, AF_INET, b, buffer, size);
    if (error == 0)
        error = dump_family(fd, AF_INET6, b, buffer, size);
    Py_END_ALLOW_THREADS
    free(buffer);
    return nw_or_oserror((PyObject *)b, error);
}

static void batch_dealloc(TcpBatch *b) {
    free(b->records);
    free(b->rows);
    PyObject_Free(b);
}

static Py_ssize_t batch_len(TcpBatch *b) { return b->count; }

static PyObject *batch_records(TcpBatch *b, PyObject *unused) {
    PyObject *list = PyList_New(b->count);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < b->count; i++) {
        const record_t *r = &b->records[i];
        PyObject *item = Py_BuildValue(
            "(iisisiIIKKKK)", r->family, r->state, r->local, r->sport, r->remote, r->dport,
            r->uid, r->inode, (unsigned long long)r->cookie, (unsigned long long)r->cgroup,
            (unsigned long long)r->sent, (unsigned long long)r->received);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

/* ---- rows: sorted, one per key, each with its owner group ------------------------ */

static int compare_records(const void *x, const void *y) {
    const record_t *a = *(record_t *const *)x, *b = *(record_t *const *)y;
    int c = strcmp(a->local, b->local);
    if (c == 0)
        c = (int)a->sport - (int)b->sport;
    if (c == 0)
        c = strcmp(a->remote, b->remote);
    if (c == 0)
        c = (int)a->dport - (int)b->dport;
    if (c == 0)
        c = a < b ? -1 : a > b; /* dump order among equal keys */
    return c;
}

static int same_key(const record_t *a, const record_t *b) {
    return a->sport == b->sport && a->dport == b->dport && strcmp(a->local, b->local) == 0 &&
           strcmp(a->remote, b->remote) == 0;
}

/* NO_FILE, NO_OWNER or the owning pid; -3 with an exception set. */
static long owner_group(const record_t *r, PyObject *owners) {
    if (r->inode == 0)
        return NO_FILE;
    PyObject *key = PyLong_FromUnsignedLong(r->inode);
    if (key == NULL)
        return -3;
    PyObject *pid = PyDict_GetItemWithError(owners, key);
    Py_DECREF(key);
    if (pid == NULL)
        return PyErr_Occurred() ? -3 : NO_OWNER;
    long value = PyLong_AsLong(pid);
    if (value == -1 && PyErr_Occurred())
        return -3;
    return value;
}

static int build_rows(TcpBatch *b, PyObject *owners) {
    const record_t **order = malloc((b->count + 1) * sizeof *order);
    row_t *rows = malloc((b->count + 1) * sizeof *rows);
    if (order == NULL || rows == NULL) {
        free(order);
        free(rows);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < b->count; i++)
        order[i] = &b->records[i];
    qsort(order, b->count, sizeof *order, compare_records);
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < b->count; i++) {
        const record_t *r = order[i];
        long group = owner_group(r, owners);
        if (group == -3) {
            free(order);
            free(rows);
            return -1;
        }
        row_t *row = n > 0 && same_key(rows[n - 1].first, r) ? &rows[n - 1] : NULL;
        if (row == NULL) {
            row = &rows[n++];
            row->first = r;
            row->group = group;
            row->cgroup = r->cgroup;
            row->sent = row->received = 0;
        } else if (row->group < 0) {
            row->group = group;
        }
        if (row->cgroup == 0)
            row->cgroup = r->cgroup;
        row->uid = r->uid;
        row->state = r->state;
        row->sent = r->sent > row->sent ? r->sent : row->sent;
        row->received = r->received > row->received ? r->received : row->received;
    }
    free(order);
    free(b->rows);
    b->rows = rows;
    b->row_count = n;
    return 0;
}

static PyObject *batch_groups(TcpBatch *b, PyObject *owners) {
    if (!PyDict_Check(owners))
        return PyErr_Format(PyExc_TypeError, "owners must be a dict");
    if (build_rows(b, owners) < 0)
        return NULL;
    PyObject *groups = PySet_New(NULL);
    for (Py_ssize_t i = 0; groups != NULL && i < b->row_count; i++) {
        PyObject *item = Py_BuildValue("(lK)", b->rows[i].group,
                                       (unsigned long long)b->rows[i].cgroup);
        if (item == NULL || PySet_Add(groups, item) < 0)
            Py_CLEAR(groups);
        Py_XDECREF(item);
    }
    return groups;
}

/* ---- render: templates with holes ----------------------------------------------- */

enum { F_LOCAL_ADDRESS, F_LOCAL_PORT, F_REMOTE_ADDRESS, F_REMOTE_PORT, F_STATE,
       F_BYTES_SENT, F_BYTES_RECEIVED, F_UID, F_COUNT };

typedef struct {
    char *data;
    size_t used, size;
} out_t;

static int reserve(out_t *o, size_t more) {
    if (o->used + more <= o->size)
        return 0;
    size_t size = o->size ? o->size : 1 << 16;
    while (size < o->used + more)
        size *= 2;
    char *data = realloc(o->data, size);
    if (data == NULL)
        return -1;
    o->data = data;
    o->size = size;
    return 0;
}

static void put(out_t *o, const char *s, size_t n) {
    memcpy(o->data + o->used, s, n);
    o->used += n;
}

/* Holes are filled with at most this much: an address in quotes, a number, a state. */
#define HOLE_MAX 64

static void put_text(out_t *o, const char *text) {
    o->data[o->used++] = '"';
    size_t n = strlen(text);
    put(o, text, n);
    o->data[o->used++] = '"';
}

static void put_number(out_t *o, unsigned long long value) {
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n)
        o->data[o->used++] = digits[--n];
}

static int fill(out_t *o, long field, const row_t *row, PyObject *state_names) {
    const record_t *r = row->first;
    switch (field) {
    case F_LOCAL_ADDRESS:
        put_text(o, r->local);
        return 0;
    case F_REMOTE_ADDRESS:
        put_text(o, r->remote);
        return 0;
    case F_LOCAL_PORT:
        put_number(o, r->sport);
        return 0;
    case F_REMOTE_PORT:
        put_number(o, r->dport);
        return 0;
    case F_BYTES_SENT:
        put_number(o, row->sent);
        return 0;
    case F_BYTES_RECEIVED:
        put_number(o, row->received);
        return 0;
    case F_UID:
        put_number(o, row->uid);
        return 0;
    case F_STATE: {
        PyObject *name = PyTuple_GET_ITEM(state_names, row->state);
        put(o, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name));
        return 0;
    }
    }
    PyErr_Format(PyExc_ValueError, "unknown template field %ld", field);
    return -1;
}

/* The (pieces, fields) of a group, checked: bytes pieces, one more than int fields. */
static int template_of(PyObject *templates, long group, uint64_t cgroup, PyObject **pieces,
                       PyObject **fields) {
    PyObject *key = Py_BuildValue("(lK)", group, (unsigned long long)cgroup);
    if (key == NULL)
        return -1;
    PyObject *template = PyDict_GetItemWithError(templates, key);
    Py_DECREF(key);
    if (template == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_KeyError, "no template for group %ld", group);
        return -1;
    }
    if (template == Py_None) { /* rows of this group are left out */
        *pieces = *fields = NULL;
        return 0;
    }
    if (!PyArg_ParseTuple(template, "O!O!", &PyTuple_Type, pieces, &PyTuple_Type, fields))
        return -1;
    Py_ssize_t holes = PyTuple_GET_SIZE(*fields);
    if (PyTuple_GET_SIZE(*pieces) != holes + 1) {
        PyErr_Format(PyExc_ValueError, "a template needs one piece more than holes");
        return -1;
    }
    for (Py_ssize_t h = 0; h <= holes; h++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(*pieces, h)) ||
            (h < holes && !PyLong_Check(PyTuple_GET_ITEM(*fields, h)))) {
            PyErr_Format(PyExc_TypeError, "template pieces must be bytes, fields ints");
            return -1;
        }
    return 0;
}

/* Writes all of o to fd without the GIL; -1 with an exception set on failure. */
static int flush_to(int fd, out_t *o) {
    size_t done = 0;
    int error = 0;
    Py_BEGIN_ALLOW_THREADS
    while (done < o->used) {
        ssize_t n = write(fd, o->data + done, o->used - done);
        if (n >= 0) {
            done += (size_t)n;
        } else if (errno == EAGAIN) {
            struct pollfd wait = {.fd = fd, .events = POLLOUT};
            poll(&wait, 1, -1);
        } else if (errno != EINTR) {
            error = errno;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    o->used = 0;
    if (error != 0) {
        errno = error;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

#define WRITE_CHUNK (256 * 1024)

/* write(fd, templates, state_names) -> bytes written: each row as JSON, joined by
   commas, in key order. templates maps each (group, cgroup) of groups() to (pieces,
   fields): the text between holes and what goes in each hole; state_names holds the
   JSON text of 256 states. */
/* Which rows a listing keeps (a --filter's socket words): a port at either end, states
   by number, text in either address. */
typedef struct {
    long port; /* -1: any */
    const char *states; /* 256 flags, or NULL: any */
    const char *address; /* NULL: any */
} wanted_t;

static int parse_wanted(PyObject *spec, wanted_t *w) {
    w->port = -1;
    w->states = w->address = NULL;
    if (spec == Py_None)
        return 0;
    PyObject *states, *address;
    if (!PyArg_ParseTuple(spec, "lOO", &w->port, &states, &address))
        return -1;
    if (states != Py_None) {
        if (!PyBytes_Check(states) || PyBytes_GET_SIZE(states) != 256) {
            PyErr_Format(PyExc_ValueError, "states must be 256 bytes of flags");
            return -1;
        }
        w->states = PyBytes_AS_STRING(states);
    }
    if (address != Py_None) {
        if (!PyBytes_Check(address)) {
            PyErr_Format(PyExc_TypeError, "address must be bytes");
            return -1;
        }
        w->address = PyBytes_AS_STRING(address);
    }
    return 0;
}

static int wanted(const wanted_t *w, const row_t *row) {
    const record_t *r = row->first;
    if (w->port >= 0 && r->sport != w->port && r->dport != w->port)
        return 0;
    if (w->states != NULL && !w->states[row->state])
        return 0;
    return w->address == NULL || strstr(r->local, w->address) || strstr(r->remote, w->address);
}

static PyObject *batch_write(TcpBatch *b, PyObject *args) {
    int fd;
    PyObject *templates, *state_names, *spec = Py_None;
    wanted_t keep;
    if (!PyArg_ParseTuple(args, "iO!O!|O", &fd, &PyDict_Type, &templates, &PyTuple_Type,
                          &state_names, &spec) ||
        parse_wanted(spec, &keep) < 0)
        return NULL;
    if (PyTuple_GET_SIZE(state_names) != 256)
        return PyErr_Format(PyExc_ValueError, "state_names must hold 256 names");
    for (Py_ssize_t i = 0; i < 256; i++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(state_names, i)) ||
            PyBytes_GET_SIZE(PyTuple_GET_ITEM(state_names, i)) > HOLE_MAX)
            return PyErr_Format(PyExc_ValueError, "state names must be short bytes");
    if (b->rows == NULL && b->count > 0)
        return PyErr_Format(PyExc_RuntimeError, "call groups() before write()");
    out_t o = {NULL, 0, 0};
    unsigned long long written = 0;
    PyObject *pieces = NULL, *fields = NULL;
    long group = 0;
    uint64_t cgroup = 0;
    if (reserve(&o, WRITE_CHUNK) < 0)
        goto nomem;
    int first = 1, known = 0;
    for (Py_ssize_t i = 0; i < b->row_count; i++) {
        const row_t *row = &b->rows[i];
        if (!wanted(&keep, row))
            continue;
        if (!known || row->group != group || row->cgroup != cgroup) {
            group = row->group;
            cgroup = row->cgroup;
            known = 1;
            if (template_of(templates, group, cgroup, &pieces, &fields) < 0)
                goto fail;
        }
        if (pieces == NULL)
            continue; /* a group the listing leaves out */
        Py_ssize_t holes = PyTuple_GET_SIZE(fields);
        if (!first)
            put(&o, ",", 1); /* room: the last piece reserved HOLE_MAX + 1 */
        first = 0;
        for (Py_ssize_t h = 0; h <= holes; h++) {
            PyObject *piece = PyTuple_GET_ITEM(pieces, h);
            size_t more = PyBytes_GET_SIZE(piece) + HOLE_MAX + 1;
            if (o.used + more > o.size) {
                written += o.used;
                if (flush_to(fd, &o) < 0)
                    goto fail;
                if (reserve(&o, more) < 0)
                    goto nomem;
            }
            put(&o, PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece));
            if (h < holes && fill(&o, PyLong_AsLong(PyTuple_GET_ITEM(fields, h)), row,
                                  state_names) < 0)
                goto fail;
        }
    }
    written += o.used;
    if (flush_to(fd, &o) < 0)
        goto fail;
    free(o.data);
    return PyLong_FromUnsignedLongLong(written);
nomem:
    PyErr_NoMemory();
fail:
    free(o.data);
    return NULL;
}

static PyMethodDef batch_methods[] = {
    {"records", (PyCFunction)batch_records, METH_NOARGS,
     "Every record as (family, state, local, local port, remote, remote port, uid, inode, "
     "cookie, cgroup id, bytes sent, bytes received), in dump order."},
    {"groups", (PyCFunction)batch_groups, METH_O,
     "groups(owners) -> {(owner group, cgroup id)}: sorts and merges the rows; the owner "
     "group is the pid that owners maps the socket's inode to, -1 when none, -2 when the "
     "socket has no inode."},
    {"write", (PyCFunction)batch_write, METH_VARARGS,
     "write(fd, templates, state_names, wanted=None) -> bytes written: the rows as "
     "comma-joined JSON objects; a template None leaves its group's rows out, wanted "
     "(port or -1, 256 state flags or None, address text or None) keeps only the rows "
     "that match all three."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods batch_sequence = {.sq_length = (lenfunc)batch_len};

PyTypeObject nw_TcpBatchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "netwarden.platform.linux._native.TcpBatch",
    .tp_basicsize = sizeof(TcpBatch),
    .tp_dealloc = (destructor)batch_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Every TCP socket of one sock_diag dump (IPv4 and IPv6), held in C.",
    .tp_methods = batch_methods,
    .tp_as_sequence = &batch_sequence,
};
