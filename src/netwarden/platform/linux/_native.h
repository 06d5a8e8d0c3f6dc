/* Shared between the C module's parts: _batch.c (sock_diag dumps and one-shot rows),
   _tracker.c (TCP changes), _procscan.c (socket owners), _connectqueue.c (the CONNECT layer), _native.c (the
   module). */
#ifndef NETWARDEN_NATIVE_H
#define NETWARDEN_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#define ADDR_TEXT 48

/* obj when error is 0; else obj dropped and OSError(error) raised (NULL). */
PyObject *nw_or_oserror(PyObject *obj, int error);

/* The text of an address as the Python side writes it (IPv4-mapped IPv6 as IPv4). */
void nw_address_text(int family, const uint32_t *raw, char *out);

extern PyTypeObject nw_TcpBatchType;
extern PyTypeObject nw_TcpTrackerType;
extern PyTypeObject nw_FlowEventsType;
extern PyTypeObject nw_ExecRecordsType;
extern PyTypeObject nw_OtherSocketsType;
extern PyTypeObject nw_ConnectReaderType;

PyObject *nw_dump_tcp(PyObject *self, PyObject *args);
PyObject *nw_read_destroyed(PyObject *self, PyObject *args);
PyObject *nw_scan_socket_inodes(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *nw_task_socket_owners(PyObject *self, PyObject *unused);
PyObject *nw_packet_addresses(PyObject *self, PyObject *packet);

#endif
