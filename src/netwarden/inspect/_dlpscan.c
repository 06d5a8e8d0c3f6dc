/* Where the built-in DLP patterns can match, found in one pass over a buffer:
 *
 *   candidates(buffer) -> (card_runs, key_starts)
 *
 * card_runs: (start, end) of each run of digits, spaces and dashes that holds 13 digits
 * in a row or four digits, a space or dash, and three more (every card number written
 * as cards are written does); the card regex is then tried inside these runs only.
 * key_starts: (position, kind) where a cloud key's prefix starts, not inside a word:
 * kind 0 AWS (AKIA, ASIA), 1 Google (AIza), 2 GitHub (gh?_), 3 Slack (xox?-).
 *
 * Optional (netwarden/inspect/dlp.py has the same in Python, slower).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

enum { DIGIT = 1, SEPARATOR = 2, KEY_LETTER = 4, WORD = 8 };
static unsigned char kinds[256];  /* what each byte can start or continue */

static void init_kinds(void) {
    for (int c = '0'; c <= '9'; c++) kinds[c] = DIGIT | WORD;
    for (int c = 'A'; c <= 'Z'; c++) kinds[c] = WORD;
    for (int c = 'a'; c <= 'z'; c++) kinds[c] = WORD;
    kinds[' '] = kinds['-'] = SEPARATOR;
    kinds['A'] |= KEY_LETTER;
    kinds['g'] |= KEY_LETTER;
    kinds['x'] |= KEY_LETTER;
}

static int key_kind(const unsigned char *p, Py_ssize_t left) {
    if (left >= 4 && p[0] == 'A') {
        if ((p[1] == 'K' || p[1] == 'S') && p[2] == 'I' && p[3] == 'A') return 0;
        if (p[1] == 'I' && p[2] == 'z' && p[3] == 'a') return 1;
    }
    if (left >= 4 && p[0] == 'g' && p[1] == 'h' && p[3] == '_' &&
        (p[2] == 'p' || p[2] == 'o' || p[2] == 'u' || p[2] == 's' || p[2] == 'r'))
        return 2;
    if (left >= 5 && p[0] == 'x' && p[1] == 'o' && p[2] == 'x' && p[4] == '-' &&
        (p[3] == 'a' || p[3] == 'b' || p[3] == 'p' || p[3] == 'o' || p[3] == 's' ||
         p[3] == 'r'))
        return 3;
    return -1;
}

/* Does this run of digits, spaces and dashes hold 13 digits in a row, or four digits,
 * a space or dash, and three digits? */
static int has_seed(const unsigned char *p, Py_ssize_t start, Py_ssize_t end) {
    Py_ssize_t digits = 0;
    for (Py_ssize_t i = start; i < end; i++) {
        if (kinds[p[i]] & DIGIT) {
            if (++digits >= 13) return 1;
        } else {
            if (digits >= 4 && i + 3 < end && (kinds[p[i + 1]] & DIGIT) &&
                (kinds[p[i + 2]] & DIGIT) && (kinds[p[i + 3]] & DIGIT))
                return 1;
            digits = 0;
        }
    }
    return 0;
}

static int append_pair(PyObject *list, Py_ssize_t a, Py_ssize_t b) {
    PyObject *pair = Py_BuildValue("(nn)", a, b);
    if (pair == NULL) return -1;
    int failed = PyList_Append(list, pair);
    Py_DECREF(pair);
    return failed;
}

static PyObject *candidates(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = view.buf;
    Py_ssize_t n = view.len;
    PyObject *cards = PyList_New(0);
    PyObject *keys = PyList_New(0);
    if (cards == NULL || keys == NULL) goto fail;
    /* Cards: every seed holds four digits in a row, so only every fourth byte needs a
     * look until a digit turns up. */
    Py_ssize_t i = 0;
    while (i + 3 < n) {
        if (!(kinds[p[i + 3]] & DIGIT)) {
            i += 4;
            continue;
        }
        Py_ssize_t start = i + 3, end = i + 4;
        while (start > 0 && (kinds[p[start - 1]] & (DIGIT | SEPARATOR))) start--;
        while (end < n && (kinds[p[end]] & (DIGIT | SEPARATOR))) end++;
        if (has_seed(p, start, end) && append_pair(cards, start, end) < 0) goto fail;
        i = end + 1;
    }
    /* Keys: each prefix starts with one of three letters, found with memchr. */
    static const char letters[] = "Agx";
    for (const char *letter = letters; *letter; letter++) {
        const unsigned char *at = p, *stop = p + n;
        while (at < stop && (at = memchr(at, *letter, (size_t)(stop - at))) != NULL) {
            Py_ssize_t position = at - p;
            if (position == 0 || !(kinds[p[position - 1]] & WORD)) {
                int kind = key_kind(at, n - position);
                if (kind >= 0 && append_pair(keys, position, kind) < 0) goto fail;
            }
            at++;
        }
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(NN)", cards, keys);
fail:
    Py_XDECREF(cards);
    Py_XDECREF(keys);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"candidates", candidates, METH_O,
     "(card_runs, key_starts): where the built-in DLP patterns can match."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_dlpscan", "Candidates of the built-in DLP patterns.", -1, methods,
};

PyMODINIT_FUNC PyInit__dlpscan(void) {
    init_kinds();
    return PyModule_Create(&module);
}
