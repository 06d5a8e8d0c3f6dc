/* FlowEvents: the events of _flowevents.c as Python tuples. */
#include "_flowevents.h"
#include "_native.h"

#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 256

typedef struct {
    PyObject_HEAD flowevents_t events;
} FlowEvents;

static const uint8_t V4_MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* (protocol, pid, uid, name, local, local port, remote, remote port) */
static PyObject *event_tuple(const flow_event_t *e) {
    char local[ADDR_TEXT], remote[ADDR_TEXT];
    int family = e->family;
    if (family == AF_INET6 && memcmp(e->v6_local, V4_MAPPED, 12) == 0)
        family = AF_INET; /* a dual-stack socket connecting to IPv4: the v4 fields hold it */
    if (family == AF_INET) {
        nw_address_text(AF_INET, &e->v4_local, local);
        nw_address_text(AF_INET, &e->v4_remote, remote);
    } else {
        uint32_t words[4];
        memcpy(words, e->v6_local, 16);
        nw_address_text(AF_INET6, words, local);
        memcpy(words, e->v6_remote, 16);
        nw_address_text(AF_INET6, words, remote);
    }
    char name[sizeof e->comm + 1];
    memcpy(name, e->comm, sizeof e->comm);
    name[sizeof e->comm] = 0;
    return Py_BuildValue("(iIINsIsI)", e->protocol, (unsigned)(e->pid_tgid >> 32),
                         (unsigned)(e->uid_gid & 0xffffffffu),
                         PyUnicode_DecodeUTF8(name, (Py_ssize_t)strlen(name), "replace"), local,
                         (unsigned)e->port, remote, (unsigned)ntohs(e->remote_port));
}

static PyObject *events_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"netns", NULL};
    unsigned int netns = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|I:FlowEvents", keywords, &netns))
        return NULL;
    FlowEvents *self = (FlowEvents *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    int error;
    Py_BEGIN_ALLOW_THREADS
    error = flowevents_open(&self->events, netns);
    Py_END_ALLOW_THREADS
    return nw_or_oserror((PyObject *)self, error);
}

static void events_dealloc(FlowEvents *self) {
    flowevents_close(&self->events);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *events_read(FlowEvents *self, PyObject *unused) {
    flow_event_t batch[BATCH];
    PyObject *result = PyList_New(0);
    size_t count;
    while (result != NULL && (count = flowevents_read(&self->events, batch, BATCH)) > 0) {
        for (size_t i = 0; i < count; i++) {
            PyObject *item = event_tuple(&batch[i]);
            if (item == NULL || PyList_Append(result, item) < 0) {
                Py_XDECREF(item);
                Py_CLEAR(result);
                break;
            }
            Py_DECREF(item);
        }
        if (count < BATCH)
            break;
    }
    return result;
}

static PyObject *events_know(FlowEvents *self, PyObject *pids) {
    PyObject *iterator = PyObject_GetIter(pids), *item;
    if (iterator == NULL)
        return NULL;
    while ((item = PyIter_Next(iterator)) != NULL) {
        unsigned long pid = PyLong_AsUnsignedLong(item);
        Py_DECREF(item);
        if (PyErr_Occurred())
            break;
        int error = self->events.known >= 0 ? flowevents_know(&self->events, (uint32_t)pid) : EBADF;
        if (error != 0) {
            errno = error;
            PyErr_SetFromErrno(PyExc_OSError);
            break;
        }
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *events_fileno(FlowEvents *self, PyObject *unused) {
    if (self->events.ring < 0) {
        PyErr_SetString(PyExc_ValueError, "closed");
        return NULL;
    }
    return PyLong_FromLong(self->events.ring);
}

static PyObject *events_close(FlowEvents *self, PyObject *unused) {
    flowevents_close(&self->events);
    Py_RETURN_NONE;
}

static PyMethodDef events_methods[] = {
    {"read", (PyCFunction)events_read, METH_NOARGS,
     "read() -> [(protocol, pid, uid, name, local, local port, remote, remote port)]: "
     "the events waiting (IPPROTO_TCP or _UDP; an unconnected UDP socket's remote is "
     "the unspecified address, port 0)."},
    {"know", (PyCFunction)events_know, METH_O,
     "know(pids): these processes were just read; for a second their events do not wake "
     "a thread waiting on fileno(): the next read() picks them up."},
    {"fileno", (PyCFunction)events_fileno, METH_NOARGS,
     "fileno() -> the ring buffer's descriptor: readable when events wait."},
    {"close", (PyCFunction)events_close, METH_NOARGS, "close(): detaches the programs."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject nw_FlowEventsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "netwarden.platform.linux._native.FlowEvents",
    .tp_basicsize = sizeof(FlowEvents),
    .tp_dealloc = (destructor)events_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FlowEvents(netns=0): TCP and UDP conversations with the process that sends "
              "or reads on them (listeners and silent connections when they are made), "
              "from BPF programs on the sock_send_length, sock_recv_length and "
              "inet_sock_set_state tracepoints, for sockets of the network namespace with "
              "that inode (0: all). Needs CAP_BPF and BTF (kernel 6.4 or later).",
    .tp_methods = events_methods,
    .tp_new = events_new,
};
