/* A JSON list of numbers, as orjson parsed it, into a float64 buffer in one strict pass.
 *
 * Optional: service/codecs/numbers.py uses it when it is built. numpy's np.asarray(list)
 * first walks the list to discover a dtype, then converts it; for a flat list of a million
 * floats that walk is most of the decode. This pass takes exactly what the codec's fast path
 * accepts without discovery and declines the rest, so the caller falls back to numpy:
 *
 *   - a float is taken as it is;
 *   - an int (exactly int: never a bool) in the int64 range is converted with C's
 *     int64 -> double cast, which rounds to nearest-even as numpy's int64 -> float64 cast
 *     and Python's float(int) do;
 *   - anything else (a bool, a string, None, a list, an int beyond int64) declines.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *floats_into(PyObject *self, PyObject *args) {
    PyObject *items;
    Py_buffer out;
    if (!PyArg_ParseTuple(args, "O!w*", &PyList_Type, &items, &out)) return NULL;
    Py_ssize_t count = PyList_GET_SIZE(items);
    if (out.len != count * (Py_ssize_t)sizeof(double)) {
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "out must hold one float64 per item");
        return NULL;
    }
    double *values = out.buf;
    int taken = 1;
    for (Py_ssize_t i = 0; i < count && taken; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (PyFloat_CheckExact(item)) {
            values[i] = PyFloat_AS_DOUBLE(item);
        } else if (PyLong_CheckExact(item)) {
            int overflow = 0;
            long long whole = PyLong_AsLongLongAndOverflow(item, &overflow);
            if (overflow != 0 || (whole == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                taken = 0;
            } else {
                values[i] = (double)whole;
            }
        } else {
            taken = 0;
        }
    }
    PyBuffer_Release(&out);
    return PyBool_FromLong(taken);
}

static PyMethodDef methods[] = {
    {"floats_into", floats_into, METH_VARARGS,
     "floats_into(items, out) -> bool\n\n"
     "out[i] = items[i] as float64 when every item is a float or an int64-range int (never "
     "a bool); False, out to be discarded, otherwise."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_numbers",
    .m_doc = "A JSON list of numbers into float64, compiled.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__numbers(void) { return PyModule_Create(&module); }
