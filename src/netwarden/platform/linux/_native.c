/* The per-socket work of the monitor in C, as one module of several parts (see
   _native.h): the sock_diag TCP dump, the /proc scan that maps socket inodes to
   processes, the JSON rows of a one-shot listing, and TCP changes for the live view.
   Python does the same work 5-10x slower (sockdiag.py, procfs.py stay the reference;
   tests compare the two). Everything that is not per socket, such as what a flow's
   JSON looks like, stays in Python: write() fills the holes of templates it is given.
   Optional: netwarden runs without it. */
#include "_native.h"

#include <errno.h>

PyObject *nw_or_oserror(PyObject *obj, int error) {
    if (error == 0)
        return obj;
    Py_XDECREF(obj);
    errno = error;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyMethodDef module_methods[] = {
    {"dump_tcp", nw_dump_tcp, METH_VARARGS,
     "dump_tcp(fd) -> TcpBatch: every TCP socket (IPv4, then IPv6) with its tcp_info "
     "counters, through the NETLINK_SOCK_DIAG socket fd."},
    {"read_destroyed", nw_read_destroyed, METH_VARARGS,
     "read_destroyed(fd) -> [(protocol, family, state, local, port, remote, remote port, "
     "uid, inode, cookie, cgroup, sent, received)]: the sock_diag destroy broadcasts "
     "queued on the non-blocking socket fd."},
    {"scan_socket_inodes", (PyCFunction)(void (*)(void))nw_scan_socket_inodes,
     METH_VARARGS | METH_KEYWORDS,
     "scan_socket_inodes(proc='/proc', threads=2) -> ({inode: lowest pid}, processes "
     "whose open files could not be read)."},
    {"task_socket_owners", nw_task_socket_owners, METH_NOARGS,
     "task_socket_owners() -> {inode: lowest pid}, read in one pass by a BPF task_file "
     "iterator (needs CAP_BPF and kernel BTF; pids as the initial pid namespace sees them)."},
    {"packet_addresses", nw_packet_addresses, METH_O,
     "packet_addresses(packet) -> (protocol, source, source port, destination, destination "
     "port) of a TCP or UDP packet's first bytes, or None (as packet_headers.parse_ip)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "netwarden.platform.linux._native", "Per-socket work of the Linux monitor, in C.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&nw_TcpBatchType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL)
        return NULL;
    if (PyType_Ready(&nw_TcpTrackerType) < 0 || PyType_Ready(&nw_FlowEventsType) < 0 ||
        PyType_Ready(&nw_ExecRecordsType) < 0 || PyType_Ready(&nw_OtherSocketsType) < 0 ||
        PyType_Ready(&nw_ConnectReaderType) < 0)
        return NULL;
    Py_INCREF(&nw_TcpBatchType);
    Py_INCREF(&nw_TcpTrackerType);
    Py_INCREF(&nw_FlowEventsType);
    Py_INCREF(&nw_ExecRecordsType);
    Py_INCREF(&nw_OtherSocketsType);
    Py_INCREF(&nw_ConnectReaderType);
    if (PyModule_AddObject(module, "TcpBatch", (PyObject *)&nw_TcpBatchType) < 0 ||
        PyModule_AddObject(module, "TcpTracker", (PyObject *)&nw_TcpTrackerType) < 0 ||
        PyModule_AddObject(module, "FlowEvents", (PyObject *)&nw_FlowEventsType) < 0 ||
        PyModule_AddObject(module, "ExecRecords", (PyObject *)&nw_ExecRecordsType) < 0 ||
        PyModule_AddObject(module, "OtherSockets", (PyObject *)&nw_OtherSocketsType) < 0 ||
        PyModule_AddObject(module, "ConnectReader", (PyObject *)&nw_ConnectReaderType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
