/* Socket inodes and the processes holding them: a threaded scan of /proc/PID/fd, and
   the BPF task_file iterator (_taskfiles.c) that does it in one kernel pass. */
#include "_native.h"
#include "_taskfiles.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int pid, dir_fd;
} process_t;

typedef struct {
    uint32_t process; /* index into processes */
    char name[12];
} fd_entry_t;

typedef struct {
    uint64_t inode;
    int pid;
} owner_t;

typedef struct {
    const process_t *processes;
    const fd_entry_t *entries;
    size_t count;
    size_t next; /* shared: the next chunk of entries to read */
    pthread_mutex_t lock;
    int *denied_process; /* per process: 1 when a readlink was refused */
} scan_t;

typedef struct {
    scan_t *scan;
    owner_t *found;
    size_t found_count;
    int failed;
} worker_t;

#define SCAN_CHUNK 256

static void *scan_worker(void *arg) {
    worker_t *w = arg;
    scan_t *s = w->scan;
    char link[64];
    w->found = malloc(sizeof *w->found * (s->count ? s->count : 1));
    if (w->found == NULL) {
        w->failed = 1;
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&s->lock);
        size_t start = s->next;
        s->next += SCAN_CHUNK;
        pthread_mutex_unlock(&s->lock);
        if (start >= s->count)
            return NULL;
        size_t end = start + SCAN_CHUNK < s->count ? start + SCAN_CHUNK : s->count;
        for (size_t i = start; i < end; i++) {
            const fd_entry_t *e = &s->entries[i];
            const process_t *p = &s->processes[e->process];
            if (s->denied_process[e->process])
                continue;
            ssize_t n = readlinkat(p->dir_fd, e->name, link, sizeof link - 1);
            if (n < 0) {
                if (errno == EACCES || errno == EPERM)
                    s->denied_process[e->process] = 1;
                continue;
            }
            link[n] = 0;
            if (n > 9 && memcmp(link, "socket:[", 8) == 0 && link[n - 1] == ']') {
                w->found[w->found_count].inode = strtoull(link + 8, NULL, 10);
                w->found[w->found_count].pid = p->pid;
                w->found_count++;
            }
        }
    }
}

/* Lists /proc/PID/fd of every process: fills processes and entries, counts refusals. */
static int list_descriptors(const char *proc, process_t **processes, size_t *process_count,
                            fd_entry_t **entries, size_t *entry_count, int *denied) {
    size_t pcap = 256, ecap = 4096;
    *processes = malloc(pcap * sizeof **processes);
    *entries = malloc(ecap * sizeof **entries);
    *process_count = *entry_count = 0;
    if (*processes == NULL || *entries == NULL)
        return ENOMEM;
    DIR *root = opendir(proc);
    if (root == NULL)
        return errno;
    struct dirent *d;
    char path[512];
    while ((d = readdir(root)) != NULL) {
        if (d->d_name[0] < '0' || d->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "%s/%s/fd", proc, d->d_name);
        int dir_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd < 0) {
            if (errno == EACCES || errno == EPERM)
                (*denied)++;
            continue;
        }
        int listing_fd = dup(dir_fd);
        DIR *fds = listing_fd < 0 ? NULL : fdopendir(listing_fd);
        if (fds == NULL) {
            if (listing_fd >= 0)
                close(listing_fd);
            close(dir_fd);
            continue;
        }
        if (*process_count == pcap) {
            pcap *= 2;
            process_t *grown = realloc(*processes, pcap * sizeof **processes);
            if (grown == NULL) {
                closedir(fds);
                close(dir_fd);
                closedir(root);
                return ENOMEM;
            }
            *processes = grown;
        }
        size_t index = (*process_count)++;
        (*processes)[index].pid = atoi(d->d_name);
        (*processes)[index].dir_fd = dir_fd;
        struct dirent *f;
        while ((f = readdir(fds)) != NULL) {
            if (f->d_name[0] == '.' || strlen(f->d_name) >= sizeof((*entries)->name))
                continue;
            if (*entry_count == ecap) {
                ecap *= 2;
                fd_entry_t *grown = realloc(*entries, ecap * sizeof **entries);
                if (grown == NULL) {
                    closedir(fds);
                    closedir(root);
                    return ENOMEM;
                }
                *entries = grown;
            }
            fd_entry_t *e = &(*entries)[(*entry_count)++];
            e->process = (uint32_t)index;
            strcpy(e->name, f->d_name);
        }
        closedir(fds);
    }
    closedir(root);
    return 0;
}

#define MAX_THREADS 16

static int add_owner(PyObject *owners, const owner_t *o) {
    PyObject *key = PyLong_FromUnsignedLongLong(o->inode);
    if (key == NULL)
        return -1;
    PyObject *known = PyDict_GetItemWithError(owners, key);
    int result = 0;
    if (known == NULL && PyErr_Occurred()) {
        result = -1;
    } else if (known == NULL || PyLong_AsLong(known) > o->pid) {
        PyObject *pid = PyLong_FromLong(o->pid);
        result = pid == NULL ? -1 : PyDict_SetItem(owners, key, pid);
        Py_XDECREF(pid);
    }
    Py_DECREF(key);
    return result;
}

/* scan_socket_inodes(proc="/proc", threads=2) -> (owners, denied): what
   procfs.scan_socket_inodes returns, with the readlinks spread over threads. */
PyObject *nw_scan_socket_inodes(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"proc", "threads", NULL};
    const char *proc = "/proc";
    int threads = 2;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|si", keywords, &proc, &threads))
        return NULL;
    if (threads < 1)
        threads = 1;
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    process_t *processes = NULL;
    fd_entry_t *entries = NULL;
    size_t process_count = 0, entry_count = 0;
    int denied = 0, error = 0, running[MAX_THREADS] = {0};
    scan_t scan;
    worker_t workers[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    memset(workers, 0, sizeof workers);
    PyObject *owners = NULL, *result = NULL;

    Py_BEGIN_ALLOW_THREADS
    error = list_descriptors(proc, &processes, &process_count, &entries, &entry_count, &denied);
    if (error == 0) {
        scan.processes = processes;
        scan.entries = entries;
        scan.count = entry_count;
        scan.next = 0;
        scan.denied_process = calloc(process_count + 1, sizeof(int));
        pthread_mutex_init(&scan.lock, NULL);
        if (scan.denied_process == NULL)
            error = ENOMEM;
        for (int t = 0; error == 0 && t < threads; t++) {
            workers[t].scan = &scan;
            running[t] = t == 0 || pthread_create(&ids[t], NULL, scan_worker, &workers[t]) == 0;
        }
        if (error == 0) {
            scan_worker(&workers[0]);
            for (int t = 1; t < threads; t++)
                if (running[t])
                    pthread_join(ids[t], NULL);
            for (size_t p = 0; p < process_count; p++)
                denied += scan.denied_process[p];
            for (int t = 0; t < threads; t++)
                if (workers[t].failed)
                    error = ENOMEM;
        }
        free(scan.denied_process);
        pthread_mutex_destroy(&scan.lock);
    }
    for (size_t p = 0; p < process_count; p++)
        close(processes[p].dir_fd);
    Py_END_ALLOW_THREADS

    if (error != 0) {
        errno = error;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, proc);
        goto done;
    }
    owners = PyDict_New();
    for (int t = 0; owners != NULL && t < threads; t++)
        for (size_t i = 0; i < workers[t].found_count; i++)
            if (add_owner(owners, &workers[t].found[i]) < 0) {
                Py_CLEAR(owners);
                break;
            }
    if (owners != NULL)
        result = Py_BuildValue("(Ni)", owners, denied);
done:
    for (int t = 0; t < MAX_THREADS; t++)
        free(workers[t].found);
    free(processes);
    free(entries);
    return result;
}

/* task_socket_owners() -> {inode: lowest pid} from the kernel's task_file iterator. */
PyObject *nw_task_socket_owners(PyObject *self, PyObject *unused) {
    owner_pair_t *pairs;
    size_t count;
    int error;
    Py_BEGIN_ALLOW_THREADS
    error = taskfiles_read(&pairs, &count);
    Py_END_ALLOW_THREADS
    if (error != 0) {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *owners = PyDict_New();
    for (size_t i = 0; owners != NULL && i < count; i++) {
        owner_t owner = {pairs[i].inode, (int)pairs[i].pid};
        if (add_owner(owners, &owner) < 0)
            Py_CLEAR(owners);
    }
    free(pairs);
    return owners;
}
