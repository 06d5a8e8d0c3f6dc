/* ExecRecords: what each process ran, recorded in the kernel as it execs. A BPF program
   on the sched_process_exec tracepoint runs in the exec'ing process itself and copies
   the path it executed and the start of its command line into a map by pid, so that a
   process that connects, sends and exits within a millisecond (before any reader could
   look at /proc) still has a flow carry what it was. The monitor looks a pid up only
   when /proc no longer says. Assembled here like the flow events' programs (no BPF
   compiler), with offsets from the kernel's BTF. */
#include "_btf.h"
#include "_native.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define EXE_LEN 256
#define CMD_LEN 256
#define RECORDS 8192
#define MAX_INSNS 64

/* One record as the program writes it. */
typedef struct {
    uint64_t uid_gid;
    uint32_t cmd_len, unused;
    char exe[EXE_LEN];
    char cmd[CMD_LEN];
} exec_record_t;

typedef struct {
    PyObject_HEAD int records, scratch, link;
} ExecRecords;

/* sched_process_exec (task, old pid, binprm): the record is built in a per-CPU scratch
   value (a record is larger than the program's stack), then stored by pid (fp-4). */
static size_t assemble(struct bpf_insn *p, long filename, long mm, long arg_start,
                       long arg_end, int records, int scratch) {
    const long cmd_at = offsetof(exec_record_t, cmd), exe_at = offsetof(exec_record_t, exe);
    const struct bpf_insn program[] = {
        MOV(BPF_REG_6, BPF_REG_1),
        CALL(BPF_FUNC_get_current_pid_tgid), ALUI(BPF_RSH, BPF_REG_0, 32),
        STX(BPF_W, BPF_REG_10, BPF_REG_0, -4),
        MOVI(BPF_REG_1, 0), STX(BPF_W, BPF_REG_10, BPF_REG_1, -8),
        LD_MAP_FD(BPF_REG_1, scratch), MOV(BPF_REG_2, BPF_REG_10), ALUI(BPF_ADD, BPF_REG_2, -8),
        CALL(BPF_FUNC_map_lookup_elem),
        JUMPI(BPF_JEQ, BPF_REG_0, 0, 31), /* to the end */
        MOV(BPF_REG_7, BPF_REG_0),
        CALL(BPF_FUNC_get_current_uid_gid), STX(BPF_DW, BPF_REG_7, BPF_REG_0, 0),
        MOVI(BPF_REG_1, 0), STX(BPF_W, BPF_REG_7, BPF_REG_1, 8),
        /* the path executed: binprm->filename */
        LDX(BPF_DW, BPF_REG_3, BPF_REG_6, 16), LDX(BPF_DW, BPF_REG_3, BPF_REG_3, (short)filename),
        MOV(BPF_REG_1, BPF_REG_7), ALUI(BPF_ADD, BPF_REG_1, (int)exe_at),
        MOVI(BPF_REG_2, EXE_LEN), CALL(BPF_FUNC_probe_read_kernel_str),
        /* the command line: task->mm->arg_start .. arg_end, in the new process's memory */
        LDX(BPF_DW, BPF_REG_1, BPF_REG_6, 0), LDX(BPF_DW, BPF_REG_1, BPF_REG_1, (short)mm),
        JUMPI(BPF_JEQ, BPF_REG_1, 0, 10), /* to the store */
        LDX(BPF_DW, BPF_REG_4, BPF_REG_1, (short)arg_start),
        LDX(BPF_DW, BPF_REG_2, BPF_REG_1, (short)arg_end),
        ALU(BPF_SUB, BPF_REG_2, BPF_REG_4),
        JUMPI(BPF_JLE, BPF_REG_2, CMD_LEN, 1), MOVI(BPF_REG_2, CMD_LEN),
        STX(BPF_W, BPF_REG_7, BPF_REG_2, 8),
        MOV(BPF_REG_3, BPF_REG_4), MOV(BPF_REG_1, BPF_REG_7), ALUI(BPF_ADD, BPF_REG_1, (int)cmd_at),
        CALL(BPF_FUNC_probe_read_user),
        /* store */
        LD_MAP_FD(BPF_REG_1, records), MOV(BPF_REG_2, BPF_REG_10), ALUI(BPF_ADD, BPF_REG_2, -4),
        MOV(BPF_REG_3, BPF_REG_7), MOVI(BPF_REG_4, BPF_ANY), CALL(BPF_FUNC_map_update_elem),
        MOVI(BPF_REG_0, 0), INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    size_t count = sizeof program / sizeof program[0];
    memcpy(p, program, sizeof program);
    return count;
}

static int attach(ExecRecords *self) {
    btf_t b;
    int error = btf_load(&b);
    if (error != 0) {
        btf_free(&b);
        return error;
    }
    long filename = btf_offset(&b, "linux_binprm", "filename");
    long mm = btf_offset(&b, "task_struct", "mm");
    long arg_start = btf_offset(&b, "mm_struct", "arg_start");
    long arg_end = btf_offset(&b, "mm_struct", "arg_end");
    if (filename < 0 || mm < 0 || arg_start < 0 || arg_end < 0 || filename > 0x7fff ||
        mm > 0x7fff || arg_start > 0x7fff || arg_end > 0x7fff) {
        btf_free(&b);
        return ENOENT;
    }
    self->records = bpf_create_map(BPF_MAP_TYPE_LRU_HASH, 4, sizeof(exec_record_t), RECORDS,
                               "nw_exec_rec");
    self->scratch = bpf_create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, sizeof(exec_record_t), 1,
                               "nw_exec_tmp");
    if (self->records < 0 || self->scratch < 0) {
        btf_free(&b);
        return errno;
    }
    struct bpf_insn program[MAX_INSNS];
    size_t count = assemble(program, filename, mm, arg_start, arg_end, self->records,
                            self->scratch);
    error = bpf_tracing_link(&b, BTF_KIND_TYPEDEF, "btf_trace_sched_process_exec",
                             BPF_TRACE_RAW_TP, program, count, "nw_exec_record", &self->link);
    btf_free(&b);
    return error;
}

static void release(ExecRecords *self) {
    if (self->link >= 0)
        close(self->link);
    if (self->records >= 0)
        close(self->records);
    if (self->scratch >= 0)
        close(self->scratch);
    self->link = self->records = self->scratch = -1;
}

static PyObject *records_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, ":ExecRecords", keywords))
        return NULL;
    ExecRecords *self = (ExecRecords *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->records = self->scratch = self->link = -1;
    int error;
    Py_BEGIN_ALLOW_THREADS
    error = attach(self);
    Py_END_ALLOW_THREADS
    if (error != 0)
        release(self);
    return nw_or_oserror((PyObject *)self, error);
}

static void records_dealloc(ExecRecords *self) {
    release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *records_lookup(ExecRecords *self, PyObject *arg) {
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred())
        return NULL;
    if (self->records < 0) {
        PyErr_SetString(PyExc_ValueError, "closed");
        return NULL;
    }
    uint32_t key = (uint32_t)pid;
    exec_record_t record;
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_fd = (uint32_t)self->records;
    attr.key = (uint64_t)(uintptr_t)&key;
    attr.value = (uint64_t)(uintptr_t)&record;
    if (bpf_call(BPF_MAP_LOOKUP_ELEM, &attr) < 0)
        Py_RETURN_NONE;
    record.exe[EXE_LEN - 1] = 0;
    size_t cmd_len = record.cmd_len < CMD_LEN ? record.cmd_len : CMD_LEN;
    return Py_BuildValue("(s#y#I)", record.exe, (Py_ssize_t)strlen(record.exe), record.cmd,
                         (Py_ssize_t)cmd_len, (unsigned)(record.uid_gid & 0xffffffffu));
}

static PyObject *records_close(ExecRecords *self, PyObject *unused) {
    release(self);
    Py_RETURN_NONE;
}

static PyMethodDef records_methods[] = {
    {"lookup", (PyCFunction)records_lookup, METH_O,
     "lookup(pid) -> (path executed, command line bytes (NUL-separated, at most 256), uid) "
     "of the pid's last exec, or None."},
    {"close", (PyCFunction)records_close, METH_NOARGS, "close(): detaches the program."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject nw_ExecRecordsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "netwarden.platform.linux._native.ExecRecords",
    .tp_basicsize = sizeof(ExecRecords),
    .tp_dealloc = (destructor)records_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ExecRecords(): each process's executed path, command line and uid, recorded "
              "by a BPF program on the sched_process_exec tracepoint as it execs (the last "
              "8192 pids). Needs CAP_BPF and BTF.",
    .tp_methods = records_methods,
    .tp_new = records_new,
};
